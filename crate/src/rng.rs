//! A small deterministic PRNG: augmentation, QAT sampling and the tests' random data.
//! The same sequence on every target, so a seed reproduces a run natively and in the browser.

/// xorshift64*: dependency-free and the same on every target.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from any seed (0 included: xorshift must not start at 0).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // in (0, 1]: the log stays finite
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub fn i8s(&mut self, len: usize, lo: i8, hi: i8) -> Vec<i8> {
        (0..len).map(|_| self.int(lo as i64, hi as i64) as i8).collect()
    }

    /// Laplace with scale 1 (inverse CDF).
    pub fn laplace(&mut self) -> f64 {
        let u = self.unit() - 0.5;
        let m = (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE);
        -u.signum() * m.ln()
    }
}
