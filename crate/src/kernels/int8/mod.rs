//! Int8 compute kernels: the integer core of the int8 engine.
//!
//! # Numerics (normative)
//! - **Activations** are int8 per tensor, asymmetric: `real = scale · (q - zero_point)` with
//!   `zero_point` in `[-128, 127]`. uint8 models are converted by the engine exactly:
//!   `q_i8 = q_u8 - 128`, `zp_i8 = zp_u8 - 128`.
//! - **Weights** are int8, symmetric per output channel (zero point 0), with values in
//!   `[-(2^(b-1) - 1), 2^(b-1) - 1]` for `b` bits (`b = 2..=8`; 8-bit uses `[-127, 127]`). These
//!   kernels accept any i8 weight, also the relaxed-SIMD path (see [`relaxed`]).
//! - **Accumulation** is exact in i32: `acc[c] = bias_q[c] + Σ_k (x_q[k] - zx) · w_q[c][k]`, with
//!   `bias_q` in i32 at scale `sx · sw[c]`. The packers fold the zero point into the bias,
//!   `bias_q[c] - zx · Σ_k w_q[c][k]`, so inner loops compute a plain `Σ x_q · w_q`; padding
//!   reads the input zero point (a real 0), never the integer 0.
//! - **Requantization** follows the model's [`Requantization`] convention, one of two:
//!   - `Fp32` (the default): `out = clamp(zy + round_half_even(f32(acc) · s), qmin, qmax)` with
//!     the f32 multiplier `s = (sx · sw[c]) / sy` computed in f32: what onnxruntime's integer
//!     kernels (MLAS's QLinearConv, QGemm) compute, so a QDQ file gives onnxruntime's integers;
//!   - `FixedPoint`: TFLite's. The real multiplier `M = sx · sw[c] / sy` becomes a Q31
//!     multiplier and a shift ([`Requantizer::from_real`], TFLite's `QuantizeMultiplier`), and
//!     `out = clamp(zy + Requantizer::apply(acc), qmin, qmax)` with `apply` TFLite's
//!     single-rounding `MultiplyByQuantizedMultiplier`: `(acc · multiplier + 2^(t-1)) >> t`,
//!     `t = 31 - shift` (see `requant.rs` for why not the double-rounding build).
//!
//!   Both are exact integer arithmetic up to the accumulator, and one [`Requantizer`] type holds
//!   either. `qmin`/`qmax` carry a fused ReLU/ReLU6/Clip: the caller quantizes the activation's
//!   real bounds with the output scale and zero point and intersects them with `[-128, 127]`.
//! - **Simulation**: the simulation (`engine::sim`) computes these same integers in float: exact
//!   accumulators from the FP32 kernels on integer operands, then [`requantize_clamped`] with
//!   the same requantizers, so it equals the int8 engine bit for bit. Fake quantization in
//!   training instead rounds each f32 result once with [`quantize_f32`] (round half to even of
//!   `x / scale`, plus the zero point, clamped). For an integer accumulator `acc` at scale
//!   `sx · sw`, `zy + apply(acc)` and `quantize_f32(acc · sx · sw, sy, zy, ..)` differ by at most
//!   one step: both round nearly the same real value once. `requant.rs` tests this bound on
//!   random data, in both conventions.
//!
//! # Kernels and paths
//! Each kernel has a portable scalar version and, on wasm32 with `simd128`, a SIMD128 version
//! chosen at compile time. The SIMD code computes the same formulas (integer arithmetic, and the
//! same correctly rounded f32 operations in the f32 convention), so SIMD results equal scalar
//! results **bit for bit**; the tests compare both with an exact i64 reference followed by the
//! same `Requantizer`, in both conventions, natively and on wasm32.
//! Names follow XNNPACK: `qs8_gemm_minmax_4x8c2` computes a tile of 4 output channels x 8
//! pixels of a signed-int8 GEMM with a clamp, consuming k two values at a time (`c2`).
//! - [`requant`]: [`Requantization`], [`Requantizer`], [`requantize_clamped`], [`quantize_f32`],
//!   [`channel_requantizers`].
//! - [`gemm`]: [`PackedWeightsQs8`] and [`qs8_gemm`] (fully connected layers); the tile engine
//!   behind the convolutions.
//! - [`conv`]: [`PackedQs8Conv2d`] on NCHW int8 images (depthwise, pointwise, im2col).
//! - [`elementwise`]: [`qs8_add`], [`qs8_mul`], [`qs8_rescale`].
//! - [`pool`]: [`qs8_max_pool2d`], [`Qs8AvgPool2d`], [`qs8_global_avg_pool`].
//! - [`lut`]: [`lut_from_fn`] and [`qs8_lut`] for activations that do not fold into a clamp.
//! - [`relaxed`]: the relaxed-SIMD build's dot product, probed at run time; where it is exact,
//!   the GEMM's full tiles are `qs8_gemm_minmax_4x8c4` (4 k values per step), with the same
//!   results bit for bit.

pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod lut;
pub mod pool;
pub mod relaxed;
pub mod requant;

pub use conv::PackedQs8Conv2d;
pub use elementwise::{qs8_add, qs8_mul, qs8_rescale, Qs8AddParams};
pub use gemm::{qs8_gemm, PackedWeightsQs8};
pub use lut::{lut_from_fn, qs8_lut};
pub use pool::{qs8_global_avg_pool, qs8_max_pool2d, Qs8AvgPool2d};
pub use requant::{channel_requantizers, quantize_f32, quantize_symmetric_into, requantize_clamped, Requantization, Requantizer};

/// Shared by the test modules of the int8 kernels.
#[cfg(test)]
mod test_util {
    use super::Requantizer;

    pub use crate::test_rng::Rng;

    /// Requantizers mapping each accumulator range `[lo, hi]` onto int8 around the output zero
    /// point `zy`, tight on the side with less room: tests derived this way exercise the whole
    /// int8 range and the saturation on the other side. Both conventions: channels `4..8`,
    /// `12..16`, ... (whole 4-channel tiles) and every seventh channel from 2 (tiles that mix
    /// them) are in f32, the others in fixed point.
    pub fn range_requantizers(ranges: &[(i64, i64)], zy: i32) -> Vec<Requantizer> {
        ranges
            .iter()
            .enumerate()
            .map(|(c, &(lo, hi))| {
                let mut m = f64::INFINITY;
                if hi > 0 && zy < 127 {
                    m = m.min((127 - zy) as f64 / hi as f64);
                }
                if lo < 0 && zy > -128 {
                    m = m.min((-128 - zy) as f64 / lo as f64);
                }
                let m = if m.is_finite() { m } else { 1.0 };
                if (c / 4) % 2 == 1 || c % 7 == 2 {
                    Requantizer::fp32(m as f32)
                } else {
                    Requantizer::from_real(m)
                }
            })
            .collect()
    }

    /// The output of an exact accumulator: the definition every kernel matches bit for bit.
    pub fn reference_output(acc: i64, rq: &Requantizer, zy: i32, qmin: i8, qmax: i8) -> i8 {
        let acc = i32::try_from(acc).expect("test accumulator exceeds i32");
        (rq.apply(acc) as i64 + zy as i64).clamp(qmin as i64, qmax as i64) as i8
    }
}
