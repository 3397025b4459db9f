//! Pointwise activations, applied in place. Used alone and as the fused
//! epilogue of GEMM and convolution kernels.

/// A pointwise activation. `Clip` covers Relu6 and any Clip with constant
/// bounds; `Relu` is kept separate because it is by far the most common.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Identity,
    Relu,
    Clip { min: f32, max: f32 },
    LeakyRelu { alpha: f32 },
    Sigmoid,
    /// `max(0, min(1, alpha * x + beta))`
    HardSigmoid { alpha: f32, beta: f32 },
    /// `x * max(0, min(1, x / 6 + 1/2))`
    HardSwish,
    /// `x * sigmoid(x)`
    Silu,
    Tanh,
}

impl Activation {
    /// The activation of one value; the definition every vector path matches.
    #[inline(always)]
    pub fn apply_scalar(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => clamp(x, 0.0, f32::INFINITY),
            Activation::Clip { min, max } => clamp(x, min, max),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha * x
                } else {
                    x
                }
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoid { alpha, beta } => clamp(alpha * x + beta, 0.0, 1.0),
            Activation::HardSwish => x * clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0),
            Activation::Silu => x * sigmoid(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// Applies the activation to every element of `xs` in place.
    pub fn apply(self, xs: &mut [f32]) {
        if self != Activation::Identity {
            self.each(xs.iter_mut().map(|x| {
                let v = *x;
                (x, v)
            }));
        }
    }

    /// `ys = act(xs)` in one pass (rather than a copy and [`apply`](Self::apply) in place).
    pub fn apply_to(self, xs: &[f32], ys: &mut [f32]) {
        assert_eq!(xs.len(), ys.len(), "apply_to: input and output lengths");
        self.each(ys.iter_mut().zip(xs.iter().copied()));
    }

    /// Writes `act(x)` through every `(destination, x)` pair, in the forms that vectorise.
    #[inline(always)]
    fn each<'a>(self, pairs: impl Iterator<Item = (&'a mut f32, f32)>) {
        match self {
            Activation::Identity => pairs.for_each(|(y, x)| *y = x),
            // Plain compare-and-select loops: LLVM vectorises them to
            // f32x4.pmax/pmin on wasm SIMD128 (Rust's f32::max has NaN rules
            // wasm has no single instruction for, and costs ~8x more there).
            Activation::Relu => pairs.for_each(|(y, x)| *y = clamp(x, 0.0, f32::INFINITY)),
            Activation::Clip { min, max } => pairs.for_each(|(y, x)| *y = clamp(x, min, max)),
            // Branch-free forms hoisted out of the per-element match, so they vectorise too.
            Activation::HardSigmoid { alpha, beta } => pairs.for_each(|(y, x)| *y = clamp(alpha * x + beta, 0.0, 1.0)),
            Activation::HardSwish => pairs.for_each(|(y, x)| *y = x * clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)),
            _ => pairs.for_each(|(y, x)| *y = self.apply_scalar(x)),
        }
    }

    /// The output range the activation guarantees, if bounded: the range a
    /// quantizer can fold the activation into.
    pub fn output_bounds(self) -> (f32, f32) {
        match self {
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clip { min, max } => (min, max),
            Activation::Sigmoid | Activation::HardSigmoid { .. } => (0.0, 1.0),
            Activation::Tanh => (-1.0, 1.0),
            Activation::HardSwish => (-0.375, f32::INFINITY),
            Activation::Silu => (-0.2785, f32::INFINITY),
            Activation::Identity | Activation::LeakyRelu { .. } => (f32::NEG_INFINITY, f32::INFINITY),
        }
    }
}

/// The clamp every Relu/Clip path computes (also inside the GEMM and conv
/// microkernels): wasm's `pmin(hi, pmax(lo, x))`, equal to
/// `x.max(lo).min(hi)` for every input including NaN (which becomes `lo`).
#[inline(always)]
pub fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if lo < x { x } else { lo };
    if y < hi {
        y
    } else {
        hi
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    // 1 / (1 + e^-x) overflows gracefully: e^-x = inf gives 0, never NaN.
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::Activation;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// `apply` in place and `apply_to` against `apply_scalar`, bit for bit.
    #[test]
    fn vector_paths_match_scalar_definition() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.37).collect();
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 6.0 },
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Sigmoid,
            Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
            Activation::HardSwish,
            Activation::Silu,
            Activation::Tanh,
        ] {
            let mut ys = xs.clone();
            act.apply(&mut ys);
            let mut to = vec![f32::NAN; xs.len()];
            act.apply_to(&xs, &mut to);
            for ((x, y), t) in xs.iter().zip(&ys).zip(&to) {
                assert_eq!(*y, act.apply_scalar(*x), "{act:?} at {x}");
                assert_eq!(*t, act.apply_scalar(*x), "{act:?} at {x}, apply_to");
                let (lo, hi) = act.output_bounds();
                assert!(*y >= lo && *y <= hi, "{act:?}({x}) = {y} outside [{lo}, {hi}]");
            }
        }
        assert_eq!(Activation::Sigmoid.apply_scalar(-1000.0), 0.0);
        assert_eq!(Activation::HardSwish.apply_scalar(-3.0), 0.0);
        assert_eq!(Activation::HardSwish.apply_scalar(3.0), 3.0);
    }
}
