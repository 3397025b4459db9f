//! Requantization: an i32 accumulator to an int8 output, and the float quantizer it stands for.
//!
//! # Contract
//! A [`Requantizer`] rounds in one of two conventions ([`Requantization`]):
//! - the f32 convention ([`Requantizer::fp32`], the default): `apply(acc) =
//!   round_half_even(f32(acc) · s)` with an f32 multiplier `s`, computed by the caller in f32 as
//!   onnxruntime computes it (`(sx · sw) / sy` for a convolution: [`channel_requantizers`]). That
//!   is MLAS's requantization (`MlasRequantizeOutput`: convert, multiply, round to nearest
//!   even), so a QDQ file's fused convolutions give onnxruntime's integers bit for bit
//!   (`tests/ort/`). Why it is the default: our models leave as ONNX QDQ files, and onnxruntime
//!   (and TensorRT and OpenVINO, which read QDQ the same way) define what they compute; a
//!   rounding that differs only on near-ties still flips a step now and then, and BlazeFace
//!   carries one flipped element to 9-15 output steps. In SIMD128 it is four instructions per
//!   four lanes (`simd::requantize_fp32`), fewer than any fixed-point form below.
//! - fixed point, TFLite's (for integer-only runtimes):
//! - [`Requantizer::from_real`] is TFLite's `QuantizeMultiplier`: the real multiplier
//!   `m = q · 2^shift` with `q` in `[0.5, 1)` is stored as `multiplier = round(q · 2^31)` (half
//!   away from zero; a carry to `2^31` halves it and bumps `shift`), and multipliers below
//!   `2^-32` (shift < -31 after rounding) flush to zero.
//! - [`Requantizer::apply`] is TFLite's `MultiplyByQuantizedMultiplier` in its single-rounding
//!   build (`TFLITE_SINGLE_ROUNDING`): `(acc · multiplier + 2^(t - 1)) >> t` in i64 with
//!   `t = 31 - shift`, that is `acc · m` rounded to nearest once, ties toward +inf.
//!   Why not the double-rounding build (a rounding high multiply, then a rounding shift): its
//!   first rounding moves values that lie just below a half onto it, so it misses the nearest
//!   integer far more often than one rounding does. Those one-step misses travel through the
//!   layers: on BlazeFace-128 the int8 engine was up to 59 output steps from the same graph
//!   computed in float (what onnxruntime runs for a QDQ file), and 15 with one rounding.
//!   One rounding is also cheaper in SIMD128.
//! - The kernels produce `clamp(zy + apply(acc), qmin, qmax)`, computed without overflow.
//! - [`quantize_f32`] is the float quantizer of fake quantization (activations between float
//!   nodes, lookup tables, training); see the module docs of `int8` for how it relates to
//!   requantization.
//!
//! # SIMD128
//! `simd::requantize_fp32` is the f32 convention: `f32x4.convert_i32x4_s`, `f32x4.mul`,
//! `f32x4.nearest`, `i32x4.trunc_sat_f32x4_s`, each as correctly rounded as the scalar code.
//! In fixed point, `simd::requantize` applies one requantizer to four i32 lanes with `i64x2.extmul` and an
//! arithmetic i64 shift, and `simd::narrow_clamp` adds the zero point and clamps with
//! saturating narrows; `simd128_requantize_matches_scalar` checks them bit for bit on wasm32.
//! The GEMM, depthwise and Add kernels use [`PreparedRequant`] when the accumulator bound allows:
//! a logical i64 shift by 31 and an i32 shift instead of the arithmetic i64 shift, which x64
//! engines emulate with several instructions (`simd::requantize_fast`), and in the depthwise
//! kernels, whose accumulators are small, an exact f64 formula (`simd::requantize_f64`). Both
//! are proved in the docs of [`PreparedRequant`], checked on ties and randomly natively, and
//! bit for bit against `apply` on wasm32.
//!
//! # Tests
//! Published TFLite examples, `round(acc · m)` within 1 over random multipliers and
//! accumulators (and exactly on values that are not near a tie), the f32 convention against an
//! independent f64 reference (ties, accumulators past 2^24), and the one-step agreement of both
//! with `quantize_f32`.

/// How the int8 kernels round an accumulator times a real multiplier: the one choice an int8
/// model makes beyond its scales and zero points. Both are integer arithmetic up to the
/// accumulator; they part only on values within about `2^-24` of a rounding tie, and such a
/// one-step difference can travel through the layers that follow. A model is run in the
/// convention of the engine it will be deployed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requantization {
    /// `round_half_even(f32(acc) · s)` with the multiplier `s` an f32 computed in f32 (for a
    /// convolution `(sx · sw) / sy`): what onnxruntime's int8 kernels (MLAS) compute for an
    /// ONNX QDQ model, and XNNPACK's `fp32` kernels. The default: our exports are ONNX QDQ, and
    /// in this convention the int8 engine gives onnxruntime's integers.
    #[default]
    Fp32,
    /// TFLite's / gemmlowp's fixed point: a Q31 multiplier and a shift, rounded once (see
    /// [`Requantizer::apply`]), for integer-only runtimes.
    FixedPoint,
}

impl Requantization {
    /// The requantizer of a real multiplier in this convention: `exact` (computed in f64) in
    /// fixed point, or `fp32`, the same multiplier computed in f32 as the deployment runtime
    /// computes it.
    pub fn requantizer(self, exact: f64, fp32: f32) -> Requantizer {
        match self {
            Requantization::FixedPoint => Requantizer::from_real(exact),
            Requantization::Fp32 => Requantizer::fp32(fp32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Requantization::Fp32 => "fp32",
            Requantization::FixedPoint => "fixed-point",
        }
    }

    pub fn parse(s: &str) -> Option<Requantization> {
        [Requantization::Fp32, Requantization::FixedPoint].into_iter().find(|r| r.name() == s)
    }
}

/// A real multiplier as a Q31 fixed-point multiplier and a power-of-two shift, and, in the f32
/// convention ([`Requantization::Fp32`]), the f32 multiplier that then does the rounding (the
/// fixed-point form still bounds the results for the planner's range checks).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Requantizer {
    /// In `[2^30, 2^31 - 1]`, or 0 for a zero multiplier; never `i32::MIN`, which lets the SIMD
    /// high multiply skip gemmlowp's saturation case.
    multiplier: i32,
    /// In `[-31, 30]`: positive shifts left before the multiply, negative ones round right after.
    shift: i32,
    /// `Some(s)`: `apply(acc) = round_half_even(f32(acc) · s)`.
    fp32: Option<f32>,
}

impl Requantizer {
    /// The exclusive upper bound of `from_real`'s argument: it keeps `shift <= 30` (29 from the
    /// exponent, plus a rounding carry), so the rounding shift `31 - shift` is at least 1, as
    /// TFLite assumes.
    pub const MAX_REAL: f64 = (1u64 << 29) as f64;

    /// Quantizes `m` in `[0, MAX_REAL)`. Conv multipliers `sx · sw / sy` are usually below 1;
    /// Add and rescaling may exceed 1. Multipliers below about `2^-32` become zero.
    ///
    /// Panics on NaN, negative or too large `m`.
    pub fn from_real(m: f64) -> Requantizer {
        assert!(
            (0.0..Self::MAX_REAL).contains(&m),
            "requantization multiplier {m} outside [0, 2^29)"
        );
        // Subnormals are far below the flush-to-zero threshold.
        if m < f64::MIN_POSITIVE {
            return Requantizer::default();
        }
        // frexp for a normal double: m = q · 2^shift with q in [0.5, 1), both exact.
        let bits = m.to_bits();
        let mut shift = ((bits >> 52) & 0x7ff) as i32 - 1022;
        let q = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
        // f64::round rounds half away from zero, like TFLite's std::round.
        let mut q_fixed = (q * (1u64 << 31) as f64).round() as i64;
        if q_fixed == 1 << 31 {
            q_fixed /= 2;
            shift += 1;
        }
        if shift < -31 {
            return Requantizer::default();
        }
        Requantizer {
            multiplier: q_fixed as i32,
            shift,
            fp32: None,
        }
    }

    /// The f32 convention's requantizer of `scale` (see [`Requantization::Fp32`]).
    ///
    /// Panics on NaN, negative or too large `scale`, as `from_real`.
    pub fn fp32(scale: f32) -> Requantizer {
        Requantizer { fp32: Some(scale), ..Requantizer::from_real(scale as f64) }
    }

    /// The f32 multiplier of the f32 convention, `None` in fixed point.
    pub fn fp32_scale(&self) -> Option<f32> {
        self.fp32
    }

    pub fn multiplier(&self) -> i32 {
        self.multiplier
    }

    pub fn shift(&self) -> i32 {
        self.shift
    }

    /// The real multiplier this requantizer represents.
    pub fn real(&self) -> f64 {
        self.multiplier as f64 * 2f64.powi(self.shift - 31)
    }

    /// `acc · m`, rounded as TFLite does (see the module contract). Requires the result to fit
    /// an i32 (`|acc · m| < 2^31`), which TFLite also assumes; beyond it the result wraps to its
    /// low 32 bits, as in the SIMD path (debug builds panic instead).
    ///
    /// In the f32 convention: `round_half_even(f32(acc) · s)`, saturated to i32.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        if let Some(s) = self.fp32 {
            // `as` saturates; the product is finite (|acc| <= 2^31, s < 2^29).
            return (acc as f32 * s).round_ties_even() as i32;
        }
        let total = 31 - self.shift;
        let y = (acc as i64 * self.multiplier as i64 + (1i64 << (total - 1))) >> total;
        debug_assert!(i32::try_from(y).is_ok(), "requantized accumulator {acc} · {self:?} overflows i32");
        y as i32
    }
}

/// `clamp(zero_point + rq.apply(acc), qmin, qmax)`: the output of every int8 kernel.
#[inline]
pub(super) fn requantize(acc: i32, rq: &Requantizer, out: &OutputParams) -> i8 {
    // `apply` is an i32 and the zero point is small: saturating keeps the clamp exact.
    rq.apply(acc)
        .saturating_add(out.zero_point)
        .clamp(out.qmin as i32, out.qmax as i32) as i8
}

/// [`requantize`] with the output parameters spelled out: `clamp(zero_point + rq.apply(acc),
/// qmin, qmax)`, the output of every int8 kernel for one accumulator. The simulation calls it to
/// round exactly as the kernels do.
#[inline]
pub fn requantize_clamped(acc: i32, rq: &Requantizer, zero_point: i32, qmin: i8, qmax: i8) -> i8 {
    requantize(acc, rq, &OutputParams { zero_point, qmin, qmax })
}

/// The zero point and clamp of an int8 output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OutputParams {
    pub zero_point: i32,
    pub qmin: i8,
    pub qmax: i8,
}

impl OutputParams {
    /// Panics on a zero point outside int8 or an empty clamp.
    pub fn new(zero_point: i32, qmin: i8, qmax: i8) -> OutputParams {
        assert!(
            (-128..=127).contains(&zero_point),
            "output zero point {zero_point} outside int8"
        );
        assert!(qmin <= qmax, "empty output clamp [{qmin}, {qmax}]");
        OutputParams {
            zero_point,
            qmin,
            qmax,
        }
    }
}

/// Quantizes a real value: `clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`, in
/// f32. This is fake quantization (and how the int8 engine quantizes float values); NaN maps
/// to the zero point (clamped).
pub fn quantize_f32(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    // `as` saturates out-of-range floats (and maps NaN to 0), so the clamp stays exact.
    ((x / scale).round_ties_even() as i32)
        .saturating_add(zero_point)
        .clamp(qmin, qmax)
}

/// `quantize_f32(x, scale, 0, -qmax, qmax)` for every `x` of `src`, appended to `dst`: symmetric
/// weights. Written so that it vectorises (QAT quantizes every weight at every step of full
/// mode): clamping before rounding gives the same integer (rounding is monotone and the bounds
/// are integers), and on the clamped range adding and subtracting 1.5 · 2^23 rounds half to
/// even exactly, without the call to `rintf` that `round_ties_even` is on x86-64's baseline.
pub fn quantize_symmetric_into(src: &[f32], scale: f32, qmax: i32, dst: &mut Vec<i8>) {
    const ROUND: f32 = 12_582_912.0;
    debug_assert!((0..=127).contains(&qmax));
    let q = qmax as f32;
    dst.extend(src.iter().map(|&x| {
        let v = x / scale;
        // NaN maps to 0, as in `quantize_f32`.
        let v = if v.is_nan() { 0.0 } else { v.max(-q).min(q) };
        ((v + ROUND) - ROUND) as i32 as i8
    }));
}

/// The per-output-channel requantizers of a convolution or GEMM:
/// `M[c] = input_scale · weight_scales[c] / output_scale`, computed in f64 as TFLite does for
/// fixed point, and in f32 in that order (`(sx · sw) / sy`) as onnxruntime's QLinearConv does
/// for the f32 convention.
pub fn channel_requantizers(
    input_scale: f32,
    weight_scales: &[f32],
    output_scale: f32,
    convention: Requantization,
) -> Vec<Requantizer> {
    weight_scales
        .iter()
        .map(|&sw| {
            convention.requantizer(
                input_scale as f64 * sw as f64 / output_scale as f64,
                input_scale * sw / output_scale,
            )
        })
        .collect()
}

/// A [`Requantizer`] prepared for the epilogue of a kernel whose accumulators are bounded by
/// `max_abs_acc` (known at pack time: `|bias| + 128 · Σ|w|`).
///
/// When the shift is not positive (`r = -shift >= 0`, every convolution multiplier below 1) and
/// the bound allows it, the i64 shift by `31 + r` of `apply` splits into a logical i64 shift by
/// 31 that keeps the low 32 bits and an i32 shift by `r`:
/// `apply(x) = T >> r` with `T = floor((x · multiplier + 2^(30 + r)) / 2^31)`, since
/// `floor(floor(a / 2^31) / 2^r) = floor(a / 2^(31 + r))`. The low 32 bits of the logical shift
/// are `T` when `T` fits an i32, that is when `max_abs_acc · multiplier + 2^(30+r) < 2^62`
/// ([`PreparedRequant::fast`]); otherwise (and for positive shifts) the kernels use the general
/// [`simd::requantize`].
///
/// Tighter still (`max_abs_acc · multiplier < 2^52`, [`PreparedRequant::exact_f64`]: every
/// depthwise convolution and the GEMMs of small `k`), `apply` is computed in f64, exactly:
/// with `t = 31 + r`, `x = acc · multiplier · 2^-t` is exact (`acc` and the multiplier are
/// exact in f64, their product has at most 52 bits, the power of two only moves the exponent),
/// and so is `x + 2^-(t+1)` (it is `(2 · acc · multiplier + 1) · 2^-(t+1)`, at most 53 bits).
/// `apply(acc) = floor(x + 1/2)`, and since `x` is a multiple of `2^-t`, `x + 2^-(t+1)` lies
/// strictly between `floor(x + 1/2) - 1/2` and `floor(x + 1/2) + 1/2`: rounding it to the
/// nearest integer has no tie to break and gives `apply(acc)`. Adding `1.5 · 2^52` does that
/// rounding (its ulp is 1) and leaves the integer, in two's complement, in the low 32 bits of
/// the double. Per four lanes that is one shuffle, two conversions, two multiplies, four adds
/// and one shuffle, against the split shift's two widening multiplies (three instructions
/// each on x64), two adds, two shifts, a shuffle and an i32 shift by a variable count.
/// The depthwise kernels use it (EfficientNet-Lite0's depthwise layers: 1.80x to 2.08x of
/// f32 in `node bench/run.mjs int8-kernels`).
///
/// Without ties ([`PreparedRequant::no_ties`]) the half goes too: `x` is a tie (an odd multiple
/// of 1/2) only when `acc · multiplier` is an odd multiple of `2^(t-1)`, which takes
/// `|acc| >= 2^(t-1-z)` with `z` the multiplier's trailing zero bits. Below that bound every
/// `x` is off the ties, where `floor(x + 1/2)` is `x` rounded to nearest, which adding
/// `1.5 · 2^52` to the exact `x` does: per four lanes one shuffle, two conversions, two
/// multiplies, two adds and one shuffle (`simd::requantize_f64_no_ties`). Only multipliers with
/// many trailing zeros (powers of two) keep their ties within a convolution's bound. The
/// depthwise kernels and the 4x8 GEMM tile (when its 4 channels all allow it) use this form;
/// with the half, the GEMM tile had measured slower than the split shift (k = 16: 11.0
/// against 15.0 GMAC/s), without it faster (EfficientNet-Lite0's conv layers in
/// `int8-kernels`, three alternating runs of each build: 1.96-1.99x of f32 before, 2.04-2.08x
/// after; the 16 -> 96 expansion at 112x112 2.06-2.12x before, 2.28-2.60x after).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(16))]
pub(super) struct PreparedRequant {
    /// `multiplier · 2^-(31 + r)` as two f64 lanes (the f64 formula).
    pub scale: [f64; 2],
    /// `2^-(32 + r)` as two f64 lanes (the f64 formula).
    pub half: [f64; 2],
    /// `nudge = 2^(30 + r)` as two i64 lanes.
    pub nudge: [i64; 2],
    /// The multiplier in four i32 lanes. Stored splatted rather than splatted in the kernel:
    /// LLVM rewrites `i64x2.extmul` of a known splat into `i64x2.mul` of sign-extended
    /// halves, which V8 emulates with three multiplies and several shifts on x64.
    pub multiplier: [i32; 4],
    /// `r = -shift`.
    pub right: u32,
    pub fast: bool,
    /// The f64 formula is exact for every accumulator within the bound.
    pub exact_f64: bool,
    /// Also no accumulator within the bound is a tie: the f64 formula needs no half.
    pub no_ties: bool,
    /// The f32 convention: `fp32_scale` does the rounding, none of the forms above apply.
    pub fp32: bool,
    /// The f32 multiplier in four lanes (the f32 convention).
    pub fp32_scale: [f32; 4],
    pub rq: Requantizer,
}

/// `1.5 · 2^52`: adding it to a double of magnitude below `2^51` rounds it to an integer, which
/// the low 32 bits of the sum then hold in two's complement.
#[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
pub(super) const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

impl PreparedRequant {
    pub fn new(rq: &Requantizer, max_abs_acc: u32) -> PreparedRequant {
        if let Some(s) = rq.fp32 {
            return PreparedRequant { fp32: true, fp32_scale: [s; 4], rq: *rq, ..PreparedRequant::default() };
        }
        let right = (-rq.shift).max(0) as u32;
        let nudge = 1i64 << (30 + right.min(31));
        let fast = rq.shift <= 0
            && (max_abs_acc as i128) * (rq.multiplier as i128) + (nudge as i128) < (1i128 << 62);
        let exact_f64 = rq.shift <= 0 && (max_abs_acc as i128) * (rq.multiplier as i128) < (1i128 << 52);
        let t = 31 + right as i32;
        // Ties need |acc| >= 2^(t - 1 - z) (see the type's docs); t >= 31 and z <= 30.
        let z = rq.multiplier.trailing_zeros().min(31) as i32;
        let no_ties = exact_f64 && rq.multiplier != 0 && i64::from(max_abs_acc) < 1i64 << (t - 1 - z).min(62);
        PreparedRequant {
            scale: [rq.multiplier as f64 * 2f64.powi(-t); 2],
            half: [2f64.powi(-t - 1); 2],
            nudge: [nudge; 2],
            multiplier: [rq.multiplier; 4],
            right,
            fast,
            exact_f64,
            no_ties,
            fp32: false,
            fp32_scale: [0.0; 4],
            rq: *rq,
        }
    }

    /// The f64 formula in scalar code: what the SIMD lanes compute (test reference).
    #[cfg(test)]
    pub fn apply_f64(&self, x: i32) -> i32 {
        assert!(self.exact_f64);
        (x as f64 * self.scale[0] + self.half[0] + ROUND_MAGIC).to_bits() as u32 as i32
    }

    /// The f64 formula without the half (only without ties), in scalar code: what the SIMD
    /// lanes compute (test reference).
    #[cfg(test)]
    pub fn apply_f64_no_ties(&self, x: i32) -> i32 {
        assert!(self.no_ties);
        (x as f64 * self.scale[0] + ROUND_MAGIC).to_bits() as u32 as i32
    }

    /// The fast formula in scalar code: what the SIMD lanes compute (test reference).
    #[cfg(test)]
    pub fn apply_fast(&self, x: i32) -> i32 {
        assert!(self.fast);
        let t = ((x as i64 * self.multiplier[0] as i64 + self.nudge[0]) >> 31) as i32;
        t >> self.right
    }
}

/// SIMD128 requantization, shared by every int8 kernel.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) mod simd {
    use core::arch::wasm32::*;

    use super::{OutputParams, PreparedRequant, Requantizer};

    /// One requantizer spread over the lanes of an i32x4.
    #[derive(Clone, Copy)]
    pub struct Lanes {
        /// Read with a volatile load in `requantize` (see `prepared_lanes`).
        multiplier: [i32; 4],
        /// The rounding shift `31 - shift` and its nudge `2^(total - 1)` in two i64 lanes.
        total: u32,
        nudge: v128,
    }

    impl Lanes {
        #[inline(always)]
        pub fn new(rq: &Requantizer) -> Lanes {
            let total = (31 - rq.shift) as u32;
            Lanes {
                multiplier: [rq.multiplier; 4],
                total,
                nudge: i64x2_splat(1 << (total - 1)),
            }
        }
    }

    /// `Requantizer::apply` on four lanes, bit for bit: the i64 products, the nudge, an
    /// arithmetic shift (emulated with several instructions on x64, hence `requantize_fast`
    /// where a bound allows), and the low 32 bits of each lane.
    #[inline(always)]
    pub fn requantize(acc: v128, l: &Lanes) -> v128 {
        // SAFETY: a 16-byte read of a 16-byte field.
        let multiplier = unsafe { core::ptr::read_volatile(l.multiplier.as_ptr() as *const v128) };
        let lo = i64x2_shr(i64x2_add(i64x2_extmul_low_i32x4(acc, multiplier), l.nudge), l.total);
        let hi = i64x2_shr(i64x2_add(i64x2_extmul_high_i32x4(acc, multiplier), l.nudge), l.total);
        i32x4_shuffle::<0, 2, 4, 6>(lo, hi)
    }

    /// `Requantizer::apply` of the f32 convention on four lanes, bit for bit: the same
    /// conversion, product and round-half-even as the scalar code, each correctly rounded in
    /// both; `trunc_sat` saturates as the scalar `as` does. `scale` from [`fp32_lanes`].
    #[inline(always)]
    pub fn requantize_fp32(acc: v128, scale: v128) -> v128 {
        i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(f32x4_convert_i32x4(acc), scale)))
    }

    /// The f32 multiplier lanes of a prepared requantizer of the f32 convention.
    #[inline(always)]
    pub fn fp32_lanes(p: &PreparedRequant) -> v128 {
        // SAFETY: a 16-byte read of a 16-byte field of `p`.
        unsafe { v128_load(p.fp32_scale.as_ptr() as *const v128) }
    }

    /// `Requantizer::apply` on four lanes by the split shift of [`PreparedRequant`] (only for
    /// a prepared requantizer with `fast` set): `multiplier` is its i32 splat, `nudge` its i64
    /// splat.
    #[inline(always)]
    pub fn requantize_fast(acc: v128, multiplier: v128, nudge: v128, right: u32) -> v128 {
        let lo = i64x2_add(i64x2_extmul_low_i32x4(acc, multiplier), nudge);
        let hi = i64x2_add(i64x2_extmul_high_i32x4(acc, multiplier), nudge);
        // Bits 31..62 of each i64 (which fit an i32 by the `fast` condition): a logical
        // shift, since only the low 32 bits are kept.
        let t = i32x4_shuffle::<0, 2, 4, 6>(u64x2_shr(lo, 31), u64x2_shr(hi, 31));
        i32x4_shr(t, right)
    }

    /// `Requantizer::apply` on four lanes by the f64 formula of [`PreparedRequant`] (only for a
    /// prepared requantizer with `exact_f64` set): `scale` and `half` from [`f64_lanes`].
    #[inline(always)]
    pub fn requantize_f64(acc: v128, scale: v128, half: v128) -> v128 {
        let magic = f64x2_splat(super::ROUND_MAGIC);
        let round = |x: v128| f64x2_add(f64x2_add(f64x2_mul(f64x2_convert_low_i32x4(x), scale), half), magic);
        let lo = round(acc);
        let hi = round(i32x4_shuffle::<2, 3, 2, 3>(acc, acc));
        i32x4_shuffle::<0, 2, 4, 6>(lo, hi)
    }

    /// [`requantize_f64`] for a prepared requantizer with `no_ties` set, without the half.
    #[inline(always)]
    pub fn requantize_f64_no_ties(acc: v128, scale: v128) -> v128 {
        let magic = f64x2_splat(super::ROUND_MAGIC);
        let round = |x: v128| f64x2_add(f64x2_mul(f64x2_convert_low_i32x4(x), scale), magic);
        let lo = round(acc);
        let hi = round(i32x4_shuffle::<2, 3, 2, 3>(acc, acc));
        i32x4_shuffle::<0, 2, 4, 6>(lo, hi)
    }

    /// The scale and half lanes of a prepared requantizer's f64 formula.
    #[inline(always)]
    pub fn f64_lanes(p: &PreparedRequant) -> (v128, v128) {
        // SAFETY: 16-byte reads of two 16-byte fields of `p`.
        unsafe { (v128_load(p.scale.as_ptr() as *const v128), v128_load(p.half.as_ptr() as *const v128)) }
    }

    /// The multiplier and nudge lanes of a prepared requantizer, loaded from memory.
    ///
    /// The multiplier is read with a volatile load, which LLVM cannot hoist out of the
    /// kernels' loops: it turns `i64x2.extmul_low/high_i32x4_s` into a multiply of
    /// sign-extended halves, and a hoisted extension of the multiplier leaves it an
    /// `i64x2.mul`, which V8 emulates on x64 with three multiplies and five shifts and adds.
    #[inline(always)]
    pub fn prepared_lanes(p: &PreparedRequant) -> (v128, v128) {
        // SAFETY: 16-byte reads of two 16-byte fields of `p` (v128 has no alignment
        // requirement beyond 1 in wasm, but the fields are 16-byte aligned anyway).
        unsafe {
            (
                core::ptr::read_volatile(p.multiplier.as_ptr() as *const v128),
                v128_load(p.nudge.as_ptr() as *const v128),
            )
        }
    }

    /// The zero point and clamp of an output, splatted for `narrow_clamp`.
    #[derive(Clone, Copy)]
    pub struct OutputLanes {
        zero_point: v128,
        qmin: v128,
        qmax: v128,
    }

    impl OutputLanes {
        #[inline(always)]
        pub fn new(out: &OutputParams) -> OutputLanes {
            OutputLanes {
                zero_point: i16x8_splat(out.zero_point as i16),
                qmin: i8x16_splat(out.qmin),
                qmax: i8x16_splat(out.qmax),
            }
        }
    }

    impl OutputLanes {
        /// `narrow_clamp` of 8 lanes (`a` first) into the low 8 bytes.
        #[inline(always)]
        pub fn narrow_clamp8(&self, a: v128, b: v128) -> v128 {
            let ab = i16x8_add_sat(i16x8_narrow_i32x4(a, b), self.zero_point);
            i8x16_min(i8x16_max(i8x16_narrow_i16x8(ab, ab), self.qmin), self.qmax)
        }
    }

    /// `clamp(zero_point + v, qmin, qmax)` of 16 requantized lanes (`a` first) as i8x16.
    /// Equal to the exact clamp: a saturated i16 stays beyond the int8 range after adding a
    /// zero point in [-128, 127], so the i8 saturation and the clamp treat it as the exact sum.
    #[inline(always)]
    pub fn narrow_clamp(a: v128, b: v128, c: v128, d: v128, o: &OutputLanes) -> v128 {
        let ab = i16x8_add_sat(i16x8_narrow_i32x4(a, b), o.zero_point);
        let cd = i16x8_add_sat(i16x8_narrow_i32x4(c, d), o.zero_point);
        i8x16_min(i8x16_max(i8x16_narrow_i16x8(ab, cd), o.qmin), o.qmax)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::test_util::Rng;
    use super::*;

    #[test]
    fn symmetric_weights_quantize_as_quantize_f32() {
        let mut rng = Rng::seeded(31);
        let mut x: Vec<f32> = vec![0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45];
        // Ties on both sides of zero and at the clamp, and random values around the range.
        x.extend((-130..=130).flat_map(|k| [k as f32 + 0.5, k as f32 - 0.5, k as f32]));
        x.extend((0..2000).map(|_| rng.uniform(-140.0, 140.0) as f32));
        for scale in [1.0, 0.37, 3.1e-3, 1e-30] {
            for qmax in [1, 7, 63, 127] {
                let xs: Vec<f32> = x.iter().map(|v| v * scale).collect();
                let mut got = Vec::new();
                quantize_symmetric_into(&xs, scale, qmax, &mut got);
                let want: Vec<i8> = xs.iter().map(|&v| quantize_f32(v, scale, 0, -qmax, qmax) as i8).collect();
                assert_eq!(got, want, "scale {scale}, qmax {qmax}");
            }
        }
    }

    fn q(m: f64) -> (i32, i32) {
        let r = Requantizer::from_real(m);
        (r.multiplier(), r.shift())
    }

    /// TFLite's quantization_util_test.cc expectations for QuantizeMultiplier.
    #[test]
    fn quantize_multiplier_matches_tflite() {
        assert_eq!(q(0.0), (0, 0));
        assert_eq!(q(0.25), (1073741824, -1));
        assert_eq!(q(0.50 - 5e-9), (2147483627, -1));
        assert_eq!(q(0.50 - 1e-10), (1073741824, 0));
        assert_eq!(q(0.50), (1073741824, 0));
        assert_eq!(q(0.75), (1610612736, 0));
        assert_eq!(q(1.0 - 1e-9), (2147483646, 0));
        assert_eq!(q(1.0 + 1e-11), (1073741824, 1));
        assert_eq!(q(1.25), (1342177280, 1));
        assert_eq!(q(1.50), (1610612736, 1));
        assert_eq!(q(1.75), (1879048192, 1));
        assert_eq!(q(2.0 - 1e-9), (2147483647, 1));
        assert_eq!(q(2.0 - 1e-11), (1073741824, 2));
        assert_eq!(q(2.0), (1073741824, 2));
        // Underflow: std::ldexp(1.0f, -31), (1.0f, -32), (0.99f, -32), (1.0f, -33).
        assert_eq!(q(2f64.powi(-31)), (1073741824, -30));
        assert_eq!(q(2f64.powi(-32)), (1073741824, -31));
        assert_eq!(q(0.99f32 as f64 * 2f64.powi(-32)), (0, 0));
        assert_eq!(q(2f64.powi(-33)), (0, 0));
        assert_eq!(q(f64::MIN_POSITIVE / 2.0), (0, 0));
    }

    /// TFLite's MultiplyByQuantizedMultiplierInt32 expectations.
    #[test]
    fn multiply_by_quantized_multiplier_matches_tflite() {
        let qm = |x: i32, m: f64| Requantizer::from_real(m).apply(x);
        assert_eq!(qm(0, 0.1), 0);
        assert_eq!(qm(1, 0.0), 0);
        assert_eq!(qm(10000, 0.00097656), 10);
        assert_eq!(qm(-10000, 0.00097656), -10);
        assert_eq!(qm(i32::MIN, 0.00001), -21475);
        assert_eq!(qm(i32::MAX, 0.00001), 21475);
        // Largest x and multiplier with shift -3: round(x · qm / 2^34).
        let r = Requantizer {
            multiplier: i32::MAX,
            shift: -3,
            fp32: None,
        };
        let want = (i32::MAX as f64 * i32::MAX as f64 / 2f64.powi(34)).round() as i32;
        assert_eq!(r.apply(i32::MAX), want);
        assert_eq!(r.apply(-i32::MAX), -want);
    }

    #[test]
    fn apply_rounds_once_with_ties_up() {
        let half = Requantizer::from_real(0.5);
        assert_eq!([1, -1, 3, -3, 4, -4].map(|x| half.apply(x)), [1, 0, 2, -1, 2, -2]);
        let quarter = Requantizer::from_real(0.25);
        assert_eq!([2, -2, 6, -6, 5, -5, 7, -7].map(|x| quarter.apply(x)), [1, 0, 2, -1, 1, -1, 2, -2]);
        // A value just below a half stays below: the double-rounding build rounds
        // acc · multiplier / 2^31 first and would carry it onto the tie.
        let r = Requantizer { multiplier: (1 << 30) + 1, shift: -1, fp32: None }; // just above 1/4
        assert_eq!(r.apply(-2), -1); // -0.5000000005 -> -1
        let r = Requantizer { multiplier: (1 << 30) + 1, shift: -2, fp32: None }; // just above 1/8
        assert_eq!(r.apply(3), 0); // 0.3750000003 -> 0
    }

    /// A random multiplier spanning conv (tiny) to Add (above 1) ranges.
    fn random_multiplier(rng: &mut Rng) -> f64 {
        2f64.powf(-30.0 + 40.0 * rng.unit())
    }

    #[test]
    fn apply_is_within_one_of_the_real_product() {
        let seed = 0xdead_beef;
        let mut rng = Rng(seed);
        for i in 0..20000 {
            let m = random_multiplier(&mut rng);
            let r = Requantizer::from_real(m);
            let left = r.shift().max(0);
            let bound = (i32::MAX >> left) as i64;
            let acc = rng.int(-bound, bound) as i32;
            let got = r.apply(acc) as f64;
            let exact = acc as f64 * m;
            assert!(
                (got - exact.round()).abs() <= 1.0,
                "seed {seed:#x} case {i}: acc={acc} m={m} got {got}, want {exact}"
            );
            // Away from ties the result is exactly round(acc · m): one rounding, of a product
            // whose 31-bit multiplier moves it by at most |exact| · 2^-30.
            let from_tie = (exact - exact.floor() - 0.5).abs();
            if from_tie > exact.abs() * 2f64.powi(-30) + 1e-9 {
                assert_eq!(
                    got,
                    exact.round(),
                    "seed {seed:#x} case {i}: acc={acc} m={m}"
                );
            }
        }
    }

    /// Simulation equals deployment within one step: requantizing an integer accumulator and
    /// quantizing its real value in f32 (what fake quantization sees) differ by at most 1.
    #[test]
    fn requantize_agrees_with_quantize_f32_within_one_step() {
        let seed = 0x5eed;
        let mut rng = Rng(seed);
        for i in 0..20000 {
            let sx = (2f64.powf(-10.0 + 8.0 * rng.unit())) as f32;
            let sw = (2f64.powf(-12.0 + 8.0 * rng.unit())) as f32;
            let acc = rng.int(-(1 << 20), 1 << 20) as i32;
            let real = acc as f32 * (sx * sw);
            // An output scale that puts the result anywhere from inside to past the int8 range.
            let sy = (acc.unsigned_abs().max(1) as f64 * sx as f64 * sw as f64
                / (1.0 + 300.0 * rng.unit())) as f32;
            let zy = rng.int(-128, 127) as i32;
            for convention in [Requantization::Fp32, Requantization::FixedPoint] {
                let rq = channel_requantizers(sx, &[sw], sy, convention)[0];
                let out = OutputParams::new(zy, -128, 127);
                let deployed = requantize(acc, &rq, &out) as i32;
                let simulated = quantize_f32(real, sy, zy, -128, 127);
                assert!(
                    (deployed - simulated).abs() <= 1,
                    "seed {seed:#x} case {i} {convention:?}: acc={acc} sx={sx} sw={sw} sy={sy} zy={zy}: \
                     int8 {deployed}, simulated {simulated}"
                );
            }
        }
    }

    /// The f32 convention against an independent reference of what onnxruntime computes:
    /// `f32(acc)`, the exact product in f64 (at most 48 significant bits) rounded once to f32
    /// (which is the f32 multiplication), then rounded half to even; with ties, where the two
    /// conventions part, and accumulators past 2^24, which f32 rounds.
    #[test]
    fn fp32_requantizer_rounds_the_f32_product_half_to_even() {
        let half = Requantizer::fp32(0.5);
        assert_eq!([1, -1, 3, -3, 5, -5, 4].map(|x| half.apply(x)), [0, 0, 2, -2, 2, -2, 2]);
        assert_eq!(Requantizer::from_real(0.5).apply(1), 1, "fixed point rounds ties up");
        // 3 · 0.1f32 is 0.3000000119 in f32: no tie, 0; and the scale is an f32, not 0.1.
        assert_eq!(Requantizer::fp32(0.1).apply(3), 0);
        // A product that rounds onto a tie in f32: (2^24 + 1) · 1.5 = 25165825.5 exactly
        // (f32(acc) = 2^24 first), f32 product 25165824, even.
        assert_eq!(Requantizer::fp32(1.5).apply((1 << 24) + 1), 25165824);
        let seed = 0xf32;
        let mut rng = Rng(seed);
        for i in 0..50000 {
            let s = 2f64.powf(-30.0 + 36.0 * rng.unit()) as f32;
            let acc = match i % 3 {
                0 => rng.int(-(1 << 24), 1 << 24) as i32,
                1 => rng.int(i32::MIN as i64, i32::MAX as i64) as i32,
                // Odd multiples of a power of two times a power-of-two scale: ties.
                _ => (2 * rng.int(-1000, 1000) as i32 + 1) << rng.int(0, 8),
            };
            let s = if i % 3 == 2 { 2f32.powi(-(rng.int(1, 9) as i32)) } else { s };
            let product = (acc as f32 as f64 * s as f64) as f32;
            let want = (product as f64).round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            let rq = Requantizer::fp32(s);
            assert_eq!(rq.apply(acc), want, "seed {seed:#x} case {i}: acc={acc} s={s}");
            let prepared = PreparedRequant::new(&rq, acc.unsigned_abs());
            assert!(prepared.fp32 && !prepared.fast && !prepared.exact_f64 && !prepared.no_ties);
        }
    }

    #[test]
    fn quantize_f32_rounds_half_to_even_and_clamps() {
        assert_eq!(quantize_f32(0.5, 1.0, 0, -128, 127), 0);
        assert_eq!(quantize_f32(1.5, 1.0, 0, -128, 127), 2);
        assert_eq!(quantize_f32(-2.5, 1.0, 3, -128, 127), 1);
        assert_eq!(quantize_f32(1e30, 0.1, 5, -128, 127), 127);
        assert_eq!(quantize_f32(-1e30, 0.1, 5, -128, 127), -128);
        assert_eq!(quantize_f32(6.1, 0.05, -128, -128, -8), -8);
        assert_eq!(quantize_f32(f32::NAN, 0.1, 7, -128, 127), 7);
    }

    #[test]
    fn requantize_clamps_without_overflow() {
        let rq = Requantizer::from_real(1.0);
        let out = OutputParams::new(127, -100, 100);
        assert_eq!(requantize(i32::MAX >> 1, &rq, &out), 100);
        assert_eq!(requantize(i32::MIN >> 1, &rq, &out), -100);
        assert_eq!(requantize(-27, &rq, &out), 100);
        assert_eq!(requantize(-128, &rq, &out), -1);
    }

    #[test]
    fn real_round_trips() {
        let mut rng = Rng(9);
        for _ in 0..1000 {
            let m = random_multiplier(&mut rng);
            let r = Requantizer::from_real(m);
            assert!((r.real() / m - 1.0).abs() < 1e-9, "m={m} {r:?}");
        }
    }

    #[test]
    fn largest_multiplier_keeps_the_left_shift_in_i32() {
        let r = Requantizer::from_real(Requantizer::MAX_REAL * (1.0 - 1e-12));
        assert_eq!((r.multiplier(), r.shift()), (1 << 30, 30));
        assert_eq!(r.apply(1), 1 << 29);
    }

    #[test]
    #[should_panic(expected = "outside [0, 2^29)")]
    fn negative_multiplier_panics() {
        Requantizer::from_real(-0.5);
    }

    /// The split-shift formula of `PreparedRequant` equals `apply` wherever it is enabled:
    /// random and extreme accumulators within the bound, every right shift.
    #[test]
    fn prepared_fast_formula_equals_apply() {
        let seed = 0xfa57;
        let mut rng = Rng(seed);
        let mut fast = 0;
        for i in 0..200_000 {
            let rq = match i % 3 {
                0 => Requantizer::from_real(2f64.powf(-33.0 + 33.0 * rng.unit())),
                _ => Requantizer {
                    multiplier: rng.int(1 << 30, i32::MAX as i64) as i32,
                    shift: rng.int(-31, 0) as i32,
                    fp32: None,
                },
            };
            let bound = match i % 4 {
                0 => i32::MAX as u32,
                1 => 1 << 30,
                _ => rng.int(1, 1 << 28) as u32,
            };
            let p = PreparedRequant::new(&rq, bound);
            if !p.fast {
                assert!(
                    rq.shift() > 0
                        || bound as i128 * rq.multiplier() as i128 + p.nudge[0] as i128 >= 1 << 62
                );
                continue;
            }
            fast += 1;
            let b = bound as i64;
            for acc in [
                0,
                1,
                -1,
                b,
                -b,
                rng.int(-b, b),
                rng.int(-b, b),
                rng.int(-1000, 1000),
            ] {
                let acc = acc as i32;
                assert_eq!(
                    p.apply_fast(acc),
                    rq.apply(acc),
                    "seed {seed:#x} case {i}: {rq:?} acc {acc}"
                );
            }
        }
        assert!(fast > 100_000);
        // Ties: accumulators whose product lands exactly on a rounding boundary.
        for shift in -31..=0 {
            let rq = Requantizer {
                multiplier: 1 << 30,
                shift,
                fp32: None,
            };
            let p = PreparedRequant::new(&rq, 1 << 30);
            assert!(p.fast);
            let unit = 1i64 << (-shift); // acc = k · unit gives acc · m = k / 2: a tie for odd k
            for k in -4..=4i64 {
                for d in [-1, 0, 1] {
                    let acc = (k * unit + d).clamp(-(1 << 30), 1 << 30) as i32;
                    assert_eq!(p.apply_fast(acc), rq.apply(acc), "{rq:?} acc {acc}");
                }
            }
        }
    }

    #[test]
    fn prepared_f64_formula_equals_apply() {
        let seed = 0xf64;
        let mut rng = Rng(seed);
        let (mut exact, mut no_ties) = (0, 0);
        for i in 0..400_000 {
            let rq = match i % 3 {
                0 => Requantizer::from_real(2f64.powf(-33.0 + 33.0 * rng.unit())),
                _ => Requantizer { multiplier: rng.int(1 << 30, i32::MAX as i64) as i32, shift: rng.int(-31, 0) as i32, fp32: None },
            };
            // Bounds at the edge of the condition, and typical ones (depthwise, small k).
            let edge = ((1i64 << 52) / rq.multiplier().max(1) as i64).min(i32::MAX as i64);
            let bound = match i % 4 {
                0 => edge as u32,
                1 => (edge + 1).min(i32::MAX as i64) as u32,
                _ => rng.int(1, 1 << 22) as u32,
            };
            let p = PreparedRequant::new(&rq, bound);
            if !p.exact_f64 {
                assert!(rq.shift() > 0 || bound as i128 * rq.multiplier() as i128 >= 1 << 52);
                continue;
            }
            exact += 1;
            no_ties += p.no_ties as usize;
            let b = bound as i64;
            for acc in [0, 1, -1, b, -b, rng.int(-b, b), rng.int(-b, b), rng.int(-1000, 1000)] {
                let acc = acc as i32;
                assert_eq!(p.apply_f64(acc), rq.apply(acc), "seed {seed:#x} case {i}: {rq:?} bound {bound} acc {acc}");
                if p.no_ties {
                    assert_eq!(p.apply_f64_no_ties(acc), rq.apply(acc), "seed {seed:#x} case {i}: {rq:?} bound {bound} acc {acc}");
                }
            }
        }
        assert!(exact > 200_000 && no_ties > 150_000, "{exact} {no_ties}");
        // Ties (acc · m exactly k / 2) and their neighbours, for every shift.
        for shift in -31..=0 {
            for multiplier in [1 << 30, (1 << 30) + 1, i32::MAX] {
                let rq = Requantizer { multiplier, shift, fp32: None };
                let p = PreparedRequant::new(&rq, 1 << 20);
                assert!(p.exact_f64);
                // 2^30 · 2^-(31 + r) = 2^-(r + 1): odd multiples of 2^r are ties, within the
                // bound 2^20 for r <= 20.
                assert_eq!(p.no_ties, multiplier != 1 << 30 || -shift > 20, "{rq:?}");
                let unit = 1i64 << (-shift);
                for k in -9..=9i64 {
                    for d in [-1, 0, 1] {
                        let acc = (k * unit + d).clamp(-(1 << 20), 1 << 20) as i32;
                        assert_eq!(p.apply_f64(acc), rq.apply(acc), "{rq:?} acc {acc}");
                        if p.no_ties {
                            assert_eq!(p.apply_f64_no_ties(acc), rq.apply(acc), "{rq:?} acc {acc}");
                        }
                    }
                }
            }
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_requantize_f64_matches_scalar() {
        use core::arch::wasm32::*;
        let seed = 0xf640;
        let mut rng = Rng(seed);
        for i in 0..20000 {
            let rq = Requantizer { multiplier: rng.int(1 << 30, i32::MAX as i64) as i32, shift: rng.int(-31, 0) as i32, fp32: None };
            let bound = if i % 2 == 0 { ((1i64 << 52) / rq.multiplier() as i64 - 1) as u32 } else { rng.int(1, 1 << 20) as u32 };
            let p = PreparedRequant::new(&rq, bound);
            assert!(p.exact_f64);
            let b = bound as i64;
            let accs: [i32; 4] = core::array::from_fn(|j| match (i + j) % 5 {
                0 => b as i32,
                1 => -b as i32,
                _ => rng.int(-b, b) as i32,
            });
            let (scale, half) = simd::f64_lanes(&p);
            let acc = i32x4(accs[0], accs[1], accs[2], accs[3]);
            let mut got = [[0i32; 4]; 2];
            // SAFETY: 16-byte stores into 16-byte arrays.
            unsafe {
                v128_store(got[0].as_mut_ptr() as *mut v128, simd::requantize_f64(acc, scale, half));
                if p.no_ties {
                    v128_store(got[1].as_mut_ptr() as *mut v128, simd::requantize_f64_no_ties(acc, scale));
                }
            }
            for j in 0..4 {
                assert_eq!(got[0][j], rq.apply(accs[j]), "seed {seed:#x} case {i}: {rq:?} acc {}", accs[j]);
                if p.no_ties {
                    assert_eq!(got[1][j], rq.apply(accs[j]), "no ties, seed {seed:#x} case {i}: {rq:?} acc {}", accs[j]);
                }
            }
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_requantize_fast_matches_scalar() {
        use core::arch::wasm32::*;
        let seed = 0xfa58;
        let mut rng = Rng(seed);
        for i in 0..20000 {
            let rq = Requantizer {
                multiplier: rng.int(1 << 30, i32::MAX as i64) as i32,
                shift: rng.int(-31, 0) as i32,
                fp32: None,
            };
            let bound = if i % 2 == 0 {
                1 << 30
            } else {
                rng.int(1, 1 << 24) as u32
            };
            let p = PreparedRequant::new(&rq, bound);
            assert!(p.fast);
            let b = bound as i64;
            let accs: [i32; 4] = core::array::from_fn(|j| match (i + j) % 5 {
                0 => b as i32,
                1 => -b as i32,
                _ => rng.int(-b, b) as i32,
            });
            let (m, nudge) = simd::prepared_lanes(&p);
            let v =
                simd::requantize_fast(i32x4(accs[0], accs[1], accs[2], accs[3]), m, nudge, p.right);
            let mut got = [0i32; 4];
            // SAFETY: a 16-byte store into a 16-byte array.
            unsafe { v128_store(got.as_mut_ptr() as *mut v128, v) };
            for j in 0..4 {
                assert_eq!(
                    got[j],
                    rq.apply(accs[j]),
                    "seed {seed:#x} case {i}: {rq:?} acc {}",
                    accs[j]
                );
            }
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_requantize_matches_scalar() {
        use core::arch::wasm32::*;
        let seed = 0xabcd;
        let mut rng = Rng(seed);
        let specials = [
            0,
            1,
            -1,
            i32::MAX,
            i32::MIN,
            1 << 30,
            -(1 << 30),
            12345,
            -12345,
        ];
        for i in 0..20000 {
            let rq = match i % 4 {
                0 => Requantizer::from_real(2f64.powf(-33.0 + 34.0 * rng.unit())),
                1 => Requantizer::from_real(random_multiplier(&mut rng)),
                _ => Requantizer {
                    multiplier: rng.int(0, i32::MAX as i64) as i32,
                    shift: rng.int(-31, 0) as i32,
                    fp32: None,
                },
            };
            let left = rq.shift().max(0);
            let bound = (i32::MAX >> left) as i64;
            let mut accs = [0i32; 16];
            for (j, a) in accs.iter_mut().enumerate() {
                *a = if left == 0 && i % 3 == 0 {
                    specials[j % specials.len()]
                } else {
                    rng.int(-bound, bound) as i32
                };
            }
            let out = OutputParams::new(
                rng.int(-128, 127) as i32,
                rng.int(-128, 0) as i8,
                rng.int(0, 127) as i8,
            );
            // Every fourth case in the f32 convention, of the same multiplier.
            let rq = if i % 4 == 3 { Requantizer::fp32(rq.real() as f32) } else { rq };
            let lanes = simd::Lanes::new(&rq);
            let prepared = PreparedRequant::new(&rq, i32::MAX as u32);
            let v: Vec<v128> = accs
                .chunks_exact(4)
                .map(|c| {
                    let acc = i32x4(c[0], c[1], c[2], c[3]);
                    if prepared.fp32 {
                        simd::requantize_fp32(acc, simd::fp32_lanes(&prepared))
                    } else {
                        simd::requantize(acc, &lanes)
                    }
                })
                .collect();
            let mut applied = [0i32; 16];
            let mut narrowed = [0i8; 16];
            // SAFETY: stores of 16 bytes into 16-byte arrays.
            unsafe {
                for (j, x) in v.iter().enumerate() {
                    v128_store(applied.as_mut_ptr().add(4 * j) as *mut v128, *x);
                }
                let o = simd::OutputLanes::new(&out);
                let n = simd::narrow_clamp(v[0], v[1], v[2], v[3], &o);
                v128_store(narrowed.as_mut_ptr() as *mut v128, n);
            }
            for j in 0..16 {
                assert_eq!(
                    applied[j],
                    rq.apply(accs[j]),
                    "seed {seed:#x} case {i}: {rq:?} acc {}",
                    accs[j]
                );
                assert_eq!(
                    narrowed[j],
                    requantize(accs[j], &rq, &out),
                    "seed {seed:#x} case {i}: {rq:?} acc {} {out:?}",
                    accs[j]
                );
            }
        }
    }
}
