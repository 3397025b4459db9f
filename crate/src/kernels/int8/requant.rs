//! Requantization: an i32 accumulator to an int8 output, and the float quantizer it stands for.
//!
//! # Contract
//! - [`Requantizer::from_real`] is TFLite's `QuantizeMultiplier` (double-rounding build): the
//!   real multiplier `m = q · 2^shift` with `q` in `[0.5, 1)` is stored as
//!   `multiplier = round(q · 2^31)` (half away from zero; a carry to `2^31` halves it and bumps
//!   `shift`), and multipliers below `2^-32` (shift < -31 after rounding) flush to zero.
//! - [`Requantizer::apply`] is TFLite's `MultiplyByQuantizedMultiplier`:
//!   `RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc · 2^left, multiplier), right)`
//!   with `left = max(shift, 0)`, `right = max(-shift, 0)`. The high multiply rounds
//!   `acc · multiplier / 2^31` to nearest with ties up; the divide rounds to nearest with ties
//!   away from zero. The result is within one of `round(acc · m)`.
//! - The kernels produce `clamp(zy + apply(acc), qmin, qmax)`, computed without overflow.
//! - [`quantize_f32`] is the float quantizer of the simulation (see the module docs of `int8`
//!   for how the two relate).
//!
//! # SIMD128
//! `simd::requantize` applies one requantizer to four i32 lanes with `i64x2.extmul` for the
//! high multiply, and `simd::narrow_clamp` adds the zero point and clamps with saturating
//! narrows; `simd128_requantize_matches_scalar` checks them bit for bit on wasm32.
//!
//! # Tests
//! Published TFLite examples, `round(acc · m)` within 1 over random multipliers and
//! accumulators (and exactly on values that are not near a tie), and the one-step agreement
//! with `quantize_f32`.

/// A real multiplier as a Q31 fixed-point multiplier and a power-of-two shift.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requantizer {
    /// In `[2^30, 2^31 - 1]`, or 0 for a zero multiplier; never `i32::MIN`, which lets the SIMD
    /// high multiply skip gemmlowp's saturation case.
    multiplier: i32,
    /// In `[-31, 30]`: positive shifts left before the multiply, negative ones round right after.
    shift: i32,
}

impl Requantizer {
    /// The exclusive upper bound of `from_real`'s argument: it keeps `shift <= 30` (29 from the
    /// exponent, plus a rounding carry), so `2^left` fits an i32, as TFLite's double-rounding
    /// build assumes.
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
        }
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

    /// `acc · m`, rounded as TFLite does (see the module contract). Requires
    /// `|acc| · 2^max(shift, 0) < 2^31`, which TFLite also assumes; beyond it the shifted value
    /// wraps, as in the SIMD path (debug builds panic instead).
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let left = self.shift.max(0);
        let right = (-self.shift).max(0);
        debug_assert!(
            acc.checked_mul(1 << left).is_some(),
            "accumulator {acc} overflows the left shift {left}"
        );
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(acc.wrapping_mul(1 << left), self.multiplier),
            right,
        )
    }
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: `a · b / 2^31` rounded to nearest (ties
/// toward +inf), saturating the single overflow case `a = b = i32::MIN`.
#[inline]
fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Rust's integer division truncates toward zero, like C's.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
#[inline]
fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    debug_assert!((0..=31).contains(&exponent));
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> exponent) + (remainder > threshold) as i32
}

/// `clamp(zero_point + rq.apply(acc), qmin, qmax)`: the output of every int8 kernel.
#[inline]
pub(super) fn requantize(acc: i32, rq: &Requantizer, out: &OutputParams) -> i8 {
    // `apply` is an i32 and the zero point is small: saturating keeps the clamp exact.
    rq.apply(acc)
        .saturating_add(out.zero_point)
        .clamp(out.qmin as i32, out.qmax as i32) as i8
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
/// f32. This is the fake quantization of the simulation; NaN maps to the zero point (clamped).
pub fn quantize_f32(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    // `as` saturates out-of-range floats (and maps NaN to 0), so the clamp stays exact.
    ((x / scale).round_ties_even() as i32)
        .saturating_add(zero_point)
        .clamp(qmin, qmax)
}

/// The per-output-channel requantizers of a convolution or GEMM:
/// `M[c] = input_scale · weight_scales[c] / output_scale`, computed in f64 as TFLite does.
pub fn channel_requantizers(
    input_scale: f32,
    weight_scales: &[f32],
    output_scale: f32,
) -> Vec<Requantizer> {
    weight_scales
        .iter()
        .map(|&sw| Requantizer::from_real(input_scale as f64 * sw as f64 / output_scale as f64))
        .collect()
}

/// SIMD128 requantization, shared by every int8 kernel.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) mod simd {
    use core::arch::wasm32::*;

    use super::{OutputParams, Requantizer};

    /// One requantizer spread over the lanes of an i32x4.
    #[derive(Clone, Copy)]
    pub struct Lanes {
        multiplier: v128,
        left: u32,
        right: u32,
        /// `2^right - 1` and `(2^right - 1) >> 1`: the remainder mask and the rounding
        /// threshold of a non-negative value.
        mask: v128,
        half: v128,
    }

    impl Lanes {
        #[inline(always)]
        pub fn new(rq: &Requantizer) -> Lanes {
            let right = (-rq.shift).max(0);
            let mask = ((1i64 << right) - 1) as i32;
            Lanes {
                multiplier: i32x4_splat(rq.multiplier),
                left: rq.shift.max(0) as u32,
                right: right as u32,
                mask: i32x4_splat(mask),
                half: i32x4_splat(mask >> 1),
            }
        }
    }

    /// `Requantizer::apply` on four lanes, bit for bit.
    #[inline(always)]
    pub fn requantize(acc: v128, l: &Lanes) -> v128 {
        // Wraps like the scalar `wrapping_mul(1 << left)`. Conv multipliers are below 1, so
        // the (uniform, predictable) branch usually skips a shift by a variable count, which
        // costs three instructions on x64.
        let x = if l.left != 0 {
            i32x4_shl(acc, l.left)
        } else {
            acc
        };
        // SaturatingRoundingDoublingHighMul. Scalar: trunc((ab + nudge) / 2^31) with nudge
        // 2^30 for ab >= 0 and 1 - 2^30 otherwise. For ab < 0 the sum is negative and
        // truncation is floor((ab + 1 - 2^30 + 2^31 - 1) / 2^31) = floor((ab + 2^30) / 2^31);
        // for ab >= 0 it is the same floor. So it is (ab + 2^30) >> 31, which fits an i32
        // because the multiplier is never i32::MIN (the saturating case). Only the low 32 bits
        // of each shifted i64 are kept, so a logical shift does (x64 has no arithmetic i64
        // shift before AVX-512, and engines emulate it with several instructions).
        let nudge = i64x2_splat(1 << 30);
        let lo = i64x2_add(i64x2_extmul_low_i32x4(x, l.multiplier), nudge);
        let hi = i64x2_add(i64x2_extmul_high_i32x4(x, l.multiplier), nudge);
        let (lo, hi) = (u64x2_shr(lo, 31), u64x2_shr(hi, 31));
        let t = i32x4_shuffle::<0, 2, 4, 6>(lo, hi);
        // RoundingDivideByPOT, as in scalar: the threshold is `half + (t < 0)`, and
        // `t >> 31` is -1 exactly for negative lanes; a true comparison is -1, so subtracting
        // it adds the rounding increment.
        let remainder = v128_and(t, l.mask);
        let threshold = i32x4_sub(l.half, i32x4_shr(t, 31));
        i32x4_sub(i32x4_shr(t, l.right), i32x4_gt(remainder, threshold))
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
        };
        let want = (i32::MAX as f64 * i32::MAX as f64 / 2f64.powi(34)).round() as i32;
        assert_eq!(r.apply(i32::MAX), want);
        assert_eq!(r.apply(-i32::MAX), -want);
    }

    #[test]
    fn rounding_primitives_follow_gemmlowp() {
        // Ties: the high multiply rounds up, the divide rounds away from zero.
        assert_eq!(saturating_rounding_doubling_high_mul(1 << 30, 1), 1); // +0.5 -> 1
        assert_eq!(saturating_rounding_doubling_high_mul(-(1 << 30), 1), 0); // -0.5 -> 0
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2);
        assert_eq!(rounding_divide_by_pot(7, 0), 7);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
        assert_eq!(rounding_divide_by_pot((1 << 30) - 1, 31), 0);
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
            // Away from ties the result is exactly round(acc · m): the first rounding moves the
            // value by at most 2^-(right + 1) and the 31-bit multiplier by |exact| · 2^-30.
            let right = (-r.shift()).max(0);
            let from_tie = (exact - exact.floor() - 0.5).abs();
            if from_tie > 2f64.powi(-right - 1) + exact.abs() * 2f64.powi(-30) + 1e-9 {
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
            let rq = channel_requantizers(sx, &[sw], sy)[0];
            let out = OutputParams::new(zy, -128, 127);
            let deployed = requantize(acc, &rq, &out) as i32;
            let simulated = quantize_f32(real, sy, zy, -128, 127);
            assert!(
                (deployed - simulated).abs() <= 1,
                "seed {seed:#x} case {i}: acc={acc} sx={sx} sw={sw} sy={sy} zy={zy}: \
                 int8 {deployed}, simulated {simulated}"
            );
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
            let lanes = simd::Lanes::new(&rq);
            let v: Vec<v128> = accs
                .chunks_exact(4)
                .map(|c| simd::requantize(i32x4(c[0], c[1], c[2], c[3]), &lanes))
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
