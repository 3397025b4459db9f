//! AdamW (Loshchilov & Hutter 2019) and the learning-rate schedule: linear warm-up, then cosine
//! decay to a floor.
//!
//! `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`, then
//! `p -= lr · (m̂ / (√v̂ + ε) + wd · p)` with the bias-corrected `m̂ = m / (1-β1^t)`,
//! `v̂ = v / (1-β2^t)`: the weight decay is decoupled from the gradient.

/// First and second moments of one parameter tensor.
#[derive(Clone, Debug, Default)]
pub struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Moments {
    pub fn new(len: usize) -> Moments {
        Moments { m: vec![0.0; len], v: vec![0.0; len] }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

impl AdamW {
    /// One update of `p` by gradient `g` at step `t` (1 for the first).
    pub fn update(&self, p: &mut [f32], g: &[f32], mom: &mut Moments, t: u32, lr: f32, weight_decay: f32) {
        assert!(p.len() == g.len() && mom.m.len() == p.len() && mom.v.len() == p.len());
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        // Zipped, without indexing: no bounds checks, so the loop vectorises (SIMD128 has the
        // division and the square root); every element's arithmetic is unchanged.
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut mom.m).zip(&mut mom.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let (mh, vh) = (*m / c1, *v / c2);
            *p -= lr * (mh / (vh.sqrt() + eps) + weight_decay * *p);
        }
    }
}

/// Linear warm-up over `warmup` steps to the base rate, then cosine decay to
/// `min_ratio · base` at step `steps` (and that floor after it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub steps: usize,
    pub warmup: usize,
    pub min_ratio: f32,
}

impl Schedule {
    /// The factor of the base rate at step `step` (0-based).
    pub fn factor(&self, step: usize) -> f32 {
        if step < self.warmup {
            return (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_ratio as f64 + (1.0 - self.min_ratio as f64) * cosine) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_minimises_a_badly_scaled_quadratic() {
        // f = 100 a² + 0.01 b²: Adam's per-coordinate scaling moves both at the same pace.
        let mut p = [1.0f32, 1.0];
        let mut mom = Moments::new(2);
        let adam = AdamW::default();
        for t in 1..=2000 {
            let g = [200.0 * p[0], 0.02 * p[1]];
            adam.update(&mut p, &g, &mut mom, t, 0.01, 0.0);
        }
        assert!(p[0].abs() < 1e-2 && p[1].abs() < 1e-2, "{p:?}");
    }

    #[test]
    fn first_step_moves_by_the_learning_rate_and_decay_is_decoupled() {
        let adam = AdamW::default();
        let mut p = [0.5f32, -0.5];
        let mut mom = Moments::new(2);
        adam.update(&mut p, &[3.0, -1e-3], &mut mom, 1, 0.1, 0.0);
        // m̂ = g, v̂ = g²: a step of lr in the direction of -sign(g), whatever |g|.
        assert!((p[0] - 0.4).abs() < 1e-6 && (p[1] + 0.4).abs() < 1e-4, "{p:?}");
        let mut q = [2.0f32];
        let mut mom = Moments::new(1);
        adam.update(&mut q, &[0.0], &mut mom, 1, 0.1, 0.5);
        assert!((q[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
    }

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        let s = Schedule { steps: 110, warmup: 10, min_ratio: 0.1 };
        assert!((s.factor(0) - 0.1).abs() < 1e-6);
        assert!((s.factor(9) - 1.0).abs() < 1e-6);
        assert!((s.factor(10) - 1.0).abs() < 1e-6);
        assert!((s.factor(60) - 0.55).abs() < 1e-5);
        assert!((s.factor(110) - 0.1).abs() < 1e-6);
        assert!((s.factor(500) - 0.1).abs() < 1e-6);
        let mut prev = 2.0;
        for t in 10..=110 {
            assert!(s.factor(t) <= prev);
            prev = s.factor(t);
        }
    }
}
