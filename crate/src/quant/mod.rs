//! Quantization: parameters, calibration observers and (next) the PTQ pipeline.
//!
//! - [`params`]: [`QuantParams`](params::QuantParams) (scale, zero point, bits, storage,
//!   symmetry of one tensor) built from a real range by
//!   [`from_range`](params::from_range), and symmetric weight quantization per output channel
//!   or per tensor ([`per_channel_weights`](params::per_channel_weights),
//!   [`quantize_weights`](params::quantize_weights)) with a max-abs or MSE-optimal range. The
//!   rounding is [`quantize_f32`](crate::kernels::int8::quantize_f32), the same function the
//!   int8 kernels are tested against, so what calibration measures is what the engine runs.
//! - [`observer`]: [`Observer`](observer::Observer) watches one activation, one frame at a
//!   time, in fixed memory (a 2048-bin histogram whose range grows by merging bins), and picks
//!   a clip range by a [`CalibrationMethod`](observer::CalibrationMethod): MinMax, moving
//!   average MinMax, Percentile, Entropy (TensorRT's KL search) or MSE.
//!
//! Everything here is plain Rust with no dependency on the engine: it builds and tests natively
//! and on wasm32 alike.

pub mod observer;
pub mod params;

/// Deterministic test data shared by the quantization tests.
#[cfg(test)]
mod test_util {
    /// xorshift64*: dependency-free and the same on every target.
    pub struct Rng(pub u64);

    impl Rng {
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

        /// Laplace with scale 1 (inverse CDF).
        pub fn laplace(&mut self) -> f64 {
            let u = self.unit() - 0.5;
            let m = (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE);
            -u.signum() * m.ln()
        }
    }
}
