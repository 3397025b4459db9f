//! Int8 elementwise ops with rescaling: Add, Mul, and requantization to another scale (Concat
//! inputs, identity requantization).
//!
//! # Contract
//! - Operands are int8 tensors with their own scale and zero point; the output has its own.
//!   Add and Mul take operands of the output's length, or one side of length 1 (a scalar
//!   broadcast); the engine runs other broadcasts in float.
//! - `qs8_add` in the f32 convention (the default) computes what onnxruntime does, in f32:
//!   `v = (sa · (a - za) + sb · (b - zb)) / sy`, then `round_half_even(v) + zy` (ONNX's
//!   dequantize, add, quantize: int8 tensors, which onnxruntime leaves unfused in the shipped
//!   models) or `round_half_even(v + zy_u8)` with the uint8 zero point added before rounding
//!   (uint8 tensors: onnxruntime-web's QLinearAdd, equal on every pair of inputs in
//!   `tests/ort/`). See `Fp32Add`.
//! - `qs8_add` in fixed point rounds the rescaled sum once: with the fixed-point multipliers
//!   `Ma = round(sa / sy · 2^t)`, `Mb = round(sb / sy · 2^t)` on a common shift `t` (the largest
//!   in `[12, 42]` that keeps both below `2^31`), each output is
//!   `clamp(zy + floor(((a - za) · Ma + (b - zb) · Mb + 2^(t - 1)) / 2^t), qmin, qmax)`: the
//!   exact `(sa (a - za) + sb (b - zb)) / sy` rounded to nearest (ties up), except within
//!   `255 · 2^-t` of a tie (the 31-bit multipliers' rounding; below 10^-7 of a step when the
//!   larger ratio is near 1, finer than onnxruntime's f32 arithmetic). The SIMD path computes
//!   the i64 sum in two i32 halves (see `simd::add`). Why not TFLite's Add (each input
//!   rescaled and rounded with 20 fractional bits, then the sum requantized): three roundings
//!   where one does, and about twice the vector operations.
//! - `qs8_mul` is `clamp(zy + rq((a - za) · (b - zb)), qmin, qmax)` with `rq = sa · sb / sy`.
//! - `qs8_rescale` is `clamp(zy + rq(x - zx), qmin, qmax)` with `rq = sx / sy`.
//! - Every output is defined by these formulas; the simd128 versions (16 elements at a time,
//!   the scalar code for the tail) compute them bit for bit.
//!
//! # Tests
//! Exact integer references with the same requantizers, on lengths around 16, both broadcast
//! sides, zero points at the ends of int8 and clamps; plus the within-one-step check of `qs8_add`
//! against the real formula.

use super::requant::{quantize_f32, requantize, OutputParams, Requantizer};

/// The quantization of an Add: input zero points, the two multipliers on a common shift, and
/// the output's zero point and clamp (see the module contract); in the f32 convention the three
/// scales instead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Qs8AddParams {
    a_zero_point: i32,
    b_zero_point: i32,
    a_multiplier: i32,
    b_multiplier: i32,
    shift: u32,
    out: OutputParams,
    /// `[sa, sb, sy]`, for the f32 convention.
    scales: [f32; 3],
    /// The f32 convention (see [`Qs8AddParams::in_fp32`]); `None` in fixed point.
    fp32: Option<Fp32Add>,
}

/// The two Adds of the f32 convention: what onnxruntime computes for an Add of int8 tensors,
/// and for one of uint8 tensors (its fused QLinearAdd). Both round
/// `v = (f32(sa · (a - za)) + f32(sb · (b - zb))) / sy`, every step in f32; they differ in where
/// the output zero point goes, which decides ties.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fp32Add {
    /// `round_half_even(v) + zy`: ONNX's DequantizeLinear, Add, QuantizeLinear, as onnxruntime
    /// runs an Add it does not fuse.
    Dequantized { sa: f32, sb: f32, sy: f32 },
    /// `round_half_even(v + uzy) - 128` with `uzy = zy + 128` the uint8 zero point, added in f32
    /// before rounding: onnxruntime-web's QLinearAdd on uint8 tensors (and on int8 ones it
    /// converts to uint8). Measured against onnxruntime-web 1.30 on every pair of inputs for four
    /// parameter sets, two of them from our exports, where the other orders miss 1 to 36 pairs
    /// (`tests/ort/qdq.test.mjs`).
    Uint8 { sa: f32, sb: f32, sy: f32, uzy: f32 },
}

impl Qs8AddParams {
    /// The largest input-to-output scale ratio an Add takes: below `2^19`, a multiplier below
    /// `2^31` still has the shift `t >= 12` the SIMD split needs.
    pub const MAX_RATIO: f64 = (1u64 << 19) as f64;
}

impl Qs8AddParams {
    /// Panics on zero points outside int8, non-positive scales or an empty clamp.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        a_scale: f32,
        a_zero_point: i32,
        b_scale: f32,
        b_zero_point: i32,
        output_scale: f32,
        output_zero_point: i32,
        qmin: i8,
        qmax: i8,
    ) -> Qs8AddParams {
        for zp in [a_zero_point, b_zero_point] {
            assert!(
                (-128..=127).contains(&zp),
                "input zero point {zp} outside int8"
            );
        }
        assert!(
            a_scale > 0.0 && b_scale > 0.0 && output_scale > 0.0,
            "qs8_add scales must be positive: {a_scale}, {b_scale}, {output_scale}"
        );
        let (ma, mb) = (
            a_scale as f64 / output_scale as f64,
            b_scale as f64 / output_scale as f64,
        );
        assert!(
            ma.max(mb) < Self::MAX_RATIO,
            "qs8_add input scales {a_scale}, {b_scale} are 2^19 or more times the output scale {output_scale}"
        );
        // The largest t in [12, 42] with both multipliers below 2^31 (an f64 multiplication by
        // a power of two is exact, so the search rounds exactly as the stored values do).
        let fits = |t: u32| (ma.max(mb) * (1u64 << t) as f64).round() < (1u64 << 31) as f64;
        let shift = (12..=42).rev().find(|&t| fits(t)).unwrap_or(12);
        let multiplier = |m: f64| (m * (1u64 << shift) as f64).round() as i32;
        Qs8AddParams {
            a_zero_point,
            b_zero_point,
            a_multiplier: multiplier(ma),
            b_multiplier: multiplier(mb),
            shift,
            out: OutputParams::new(output_zero_point, qmin, qmax),
            scales: [a_scale, b_scale, output_scale],
            fp32: None,
        }
    }

    /// These parameters in the f32 convention ([`Requantization::Fp32`](super::Requantization)):
    /// the Add onnxruntime computes, with `uint8` (all three tensors uint8 as onnxruntime sees
    /// them, stored so or converted by it, and fused into QLinearAdd) [`Fp32Add::Uint8`],
    /// otherwise (an Add it leaves unfused) ONNX's dequantize, add, quantize in f32,
    /// [`Fp32Add::Dequantized`]; then clamped to `[qmin, qmax]`. (An Add of three int8 tensors
    /// that all stay int8, which onnxruntime would fuse as an int8 QLinearAdd, takes the latter
    /// too; no model we have has one, so its rounding is not measured.)
    pub fn in_fp32(self, uint8: bool) -> Qs8AddParams {
        let [sa, sb, sy] = self.scales;
        let form = if uint8 {
            Fp32Add::Uint8 { sa, sb, sy, uzy: (self.out.zero_point + 128) as f32 }
        } else {
            Fp32Add::Dequantized { sa, sb, sy }
        };
        Qs8AddParams { fp32: Some(form), ..self }
    }

    /// One output element: the scalar definition every path of [`qs8_add`] computes.
    #[inline]
    pub fn add(&self, a: i8, b: i8) -> i8 {
        let OutputParams { zero_point, qmin, qmax } = self.out;
        match self.fp32 {
            Some(Fp32Add::Dequantized { sa, sb, sy }) => {
                let real = sa * (a as i32 - self.a_zero_point) as f32 + sb * (b as i32 - self.b_zero_point) as f32;
                return quantize_f32(real, sy, zero_point, qmin as i32, qmax as i32) as i8;
            }
            Some(Fp32Add::Uint8 { sa, sb, sy, uzy }) => {
                let real = sa * (a as i32 - self.a_zero_point) as f32 + sb * (b as i32 - self.b_zero_point) as f32;
                // `as` saturates; the uint8 saturation is within the int8 clamp after `- 128`.
                let u = (real / sy + uzy).round_ties_even() as i32;
                return (u.saturating_sub(128)).clamp(qmin as i32, qmax as i32) as i8;
            }
            None => {}
        }
        let acc = (a as i64 - self.a_zero_point as i64) * self.a_multiplier as i64
            + (b as i64 - self.b_zero_point as i64) * self.b_multiplier as i64
            + (1i64 << (self.shift - 1));
        // |acc| < 2 · 255 · 2^31 + 2^41: the shifted value is within ±2^33; the clamp keeps it.
        ((acc >> self.shift) + self.out.zero_point as i64).clamp(self.out.qmin as i64, self.out.qmax as i64) as i8
    }

    /// The real value `add` rounds, in output steps (tests).
    #[cfg(test)]
    fn real(&self, a: i8, b: i8) -> f64 {
        ((a as i32 - self.a_zero_point) as f64 * self.a_multiplier as f64
            + (b as i32 - self.b_zero_point) as f64 * self.b_multiplier as f64)
            / (1u64 << self.shift) as f64
    }
}

/// `out = a + b` in the quantization of `p` (see the module contract). `a` and `b` have
/// `out.len()` elements, or one of them has 1 (broadcast).
pub fn qs8_add(a: &[i8], b: &[i8], p: &Qs8AddParams, out: &mut [i8]) {
    let (a, b) = (
        Operand::new(a, out.len(), "a"),
        Operand::new(b, out.len(), "b"),
    );
    let done = simd::add(a, b, p, out);
    for (i, o) in out.iter_mut().enumerate().skip(done) {
        *o = p.add(a.at(i), b.at(i));
    }
}

/// `out = a · b`: `clamp(zy + requant((a - za) · (b - zb)), qmin, qmax)` with
/// `requant = Requantizer::from_real(sa · sb / sy)`. Lengths as in `qs8_add`.
#[allow(clippy::too_many_arguments)]
pub fn qs8_mul(
    a: &[i8],
    a_zero_point: i32,
    b: &[i8],
    b_zero_point: i32,
    requant: &Requantizer,
    output_zero_point: i32,
    qmin: i8,
    qmax: i8,
    out: &mut [i8],
) {
    for zp in [a_zero_point, b_zero_point] {
        assert!(
            (-128..=127).contains(&zp),
            "input zero point {zp} outside int8"
        );
    }
    let params = OutputParams::new(output_zero_point, qmin, qmax);
    let (a, b) = (
        Operand::new(a, out.len(), "a"),
        Operand::new(b, out.len(), "b"),
    );
    let zps = [a_zero_point, b_zero_point];
    let done = simd::mul(a, b, zps, requant, &params, out);
    for (i, o) in out.iter_mut().enumerate().skip(done) {
        let product = (a.at(i) as i32 - a_zero_point) * (b.at(i) as i32 - b_zero_point);
        *o = requantize(product, requant, &params);
    }
}

/// Requantizes `x` to another scale and zero point: `clamp(zy + requant(x - zx), qmin, qmax)`
/// with `requant = Requantizer::from_real(sx / sy)`. `x` and `out` have the same length.
#[allow(clippy::too_many_arguments)]
pub fn qs8_rescale(
    x: &[i8],
    input_zero_point: i32,
    requant: &Requantizer,
    output_zero_point: i32,
    qmin: i8,
    qmax: i8,
    out: &mut [i8],
) {
    assert_eq!(x.len(), out.len(), "qs8_rescale: input and output lengths");
    assert!(
        (-128..=127).contains(&input_zero_point),
        "input zero point {input_zero_point} outside int8"
    );
    let params = OutputParams::new(output_zero_point, qmin, qmax);
    let x = Operand::new(x, out.len(), "x");
    // Rescaling is a multiplication by the constant 1 with zero point 0.
    let done = simd::mul(
        x,
        Operand::Scalar(1),
        [input_zero_point, 0],
        requant,
        &params,
        out,
    );
    for (i, o) in out.iter_mut().enumerate().skip(done) {
        *o = requantize(x.at(i) as i32 - input_zero_point, requant, &params);
    }
}

/// An operand of the output's length, or a scalar broadcast to it.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Slice(&'a [i8]),
    Scalar(i8),
}

impl<'a> Operand<'a> {
    fn new(x: &'a [i8], len: usize, name: &str) -> Operand<'a> {
        if x.len() == len {
            Operand::Slice(x)
        } else {
            assert!(
                x.len() == 1,
                "operand {name} has {} elements for an output of {len}",
                x.len()
            );
            Operand::Scalar(x[0])
        }
    }

    #[inline(always)]
    fn at(&self, i: usize) -> i8 {
        match self {
            Operand::Slice(x) => x[i],
            Operand::Scalar(v) => *v,
        }
    }
}

/// Without simd128 nothing is done here and the scalar loops handle every element.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod simd {
    use super::{Operand, OutputParams, Qs8AddParams, Requantizer};

    pub fn add(_: Operand, _: Operand, _: &Qs8AddParams, _: &mut [i8]) -> usize {
        0
    }

    pub fn mul(
        _: Operand,
        _: Operand,
        _: [i32; 2],
        _: &Requantizer,
        _: &OutputParams,
        _: &mut [i8],
    ) -> usize {
        0
    }
}

/// The simd128 loops: whole blocks of 16 outputs; each returns how many outputs it wrote.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    use super::super::requant::simd::{
        fp32_lanes, narrow_clamp, prepared_lanes, requantize, requantize_fast, requantize_fp32, Lanes,
        OutputLanes,
    };
    use super::super::requant::PreparedRequant;
    use super::{Fp32Add, Operand, OutputParams, Qs8AddParams, Requantizer};

    /// 16 values of an operand from element `i`.
    #[inline(always)]
    fn load16(x: Operand, i: usize) -> v128 {
        match x {
            // SAFETY: the callers only ask for blocks with i + 16 <= len.
            Operand::Slice(s) => unsafe { v128_load(s.as_ptr().add(i) as *const v128) },
            Operand::Scalar(v) => i8x16_splat(v),
        }
    }

    /// 16 values of an operand from element `i`, minus the zero point, as two i16x8.
    #[inline(always)]
    fn load_centered(x: Operand, i: usize, zero_point: v128) -> [v128; 2] {
        let v = load16(x, i);
        // x - zp lies in [-255, 255]: exact in i16.
        [
            i16x8_sub(i16x8_extend_low_i8x16(v), zero_point),
            i16x8_sub(i16x8_extend_high_i8x16(v), zero_point),
        ]
    }

    /// Four lanes of 16 int8 values, sign-extended to i32.
    #[inline(always)]
    fn widen_i8(v: v128) -> [v128; 4] {
        let (lo, hi) = (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v));
        [
            i32x4_extend_low_i16x8(lo),
            i32x4_extend_high_i16x8(lo),
            i32x4_extend_low_i16x8(hi),
            i32x4_extend_high_i16x8(hi),
        ]
    }

    /// `Qs8AddParams::add` on 16 elements at a time, without i64 lanes: each multiplier is
    /// split as `M = Mh · 2^11 + Ml` (`Mh < 2^20`, `Ml < 2^11`), so the i64 sum
    /// `S = (a - za) · Ma + (b - zb) · Mb` is `H · 2^11 + L` with the i32 halves
    /// `H = (a - za) · Mah + (b - zb) · Mbh` (`|H| < 2^29`) and
    /// `L = (a - za) · Mal + (b - zb) · Mbl` (`|L| < 2^20`). Since `2^(t-1) = 2^(t-12) · 2^11`
    /// (`t >= 12`) and floors of power-of-two divisions compose,
    /// `floor((S + 2^(t-1)) / 2^t) = floor((H + 2^(t-12) + floor(L / 2^11)) / 2^(t-11))`.
    /// The zero points and the nudge are folded into constants added to `H` and `L`.
    pub fn add(a: Operand, b: Operand, p: &Qs8AddParams, out: &mut [i8]) -> usize {
        if let Some(form) = p.fp32 {
            return add_fp32(a, b, p, form, out);
        }
        let split = |m: i32| (m >> 11, m & 0x7ff);
        let ((mah, mal), (mbh, mbl)) = (split(p.a_multiplier), split(p.b_multiplier));
        let (za, zb) = (p.a_zero_point, p.b_zero_point);
        let ch = i32x4_splat((1 << (p.shift - 12)) - za * mah - zb * mbh);
        let cl = i32x4_splat(-za * mal - zb * mbl);
        let (mah, mal, mbh, mbl) = (i32x4_splat(mah), i32x4_splat(mal), i32x4_splat(mbh), i32x4_splat(mbl));
        let right = p.shift - 11;
        let o = OutputLanes::new(&p.out);
        let blocks = out.len() / 16;
        for i in (0..blocks * 16).step_by(16) {
            let (va, vb) = (widen_i8(load16(a, i)), widen_i8(load16(b, i)));
            let mut sum = [i32x4_splat(0); 4];
            for (s, (&x, &y)) in sum.iter_mut().zip(va.iter().zip(&vb)) {
                let h = i32x4_add(i32x4_add(i32x4_mul(x, mah), i32x4_mul(y, mbh)), ch);
                let l = i32x4_add(i32x4_add(i32x4_mul(x, mal), i32x4_mul(y, mbl)), cl);
                *s = i32x4_shr(i32x4_add(h, i32x4_shr(l, 11)), right);
            }
            let v = narrow_clamp(sum[0], sum[1], sum[2], sum[3], &o);
            // SAFETY: i + 16 <= out.len().
            unsafe { v128_store(out.as_mut_ptr().add(i) as *mut v128, v) };
        }
        blocks * 16
    }

    /// `Qs8AddParams::add` of the f32 convention on 16 elements at a time: the same f32
    /// operations lane by lane (each correctly rounded in both), `f32x4.nearest` for
    /// round-half-even, and the saturating conversion and narrows for the clamp.
    fn add_fp32(a: Operand, b: Operand, p: &Qs8AddParams, form: Fp32Add, out: &mut [i8]) -> usize {
        let blocks = out.len() / 16;
        let (za, zb) = (i32x4_splat(p.a_zero_point), i32x4_splat(p.b_zero_point));
        let ((sa, sb, sy), uzy, o) = match form {
            Fp32Add::Dequantized { sa, sb, sy } => ((sa, sb, sy), None, OutputLanes::new(&p.out)),
            // The zero point is added before rounding; the output lanes then take 128 off.
            Fp32Add::Uint8 { sa, sb, sy, uzy } => ((sa, sb, sy), Some(f32x4_splat(uzy)), OutputLanes::new(&OutputParams { zero_point: -128, ..p.out })),
        };
        let (sa, sb, sy) = (f32x4_splat(sa), f32x4_splat(sb), f32x4_splat(sy));
        for i in (0..blocks * 16).step_by(16) {
            let (va, vb) = (widen_i8(load16(a, i)), widen_i8(load16(b, i)));
            let q = |x: v128, y: v128| {
                let x = f32x4_mul(sa, f32x4_convert_i32x4(i32x4_sub(x, za)));
                let y = f32x4_mul(sb, f32x4_convert_i32x4(i32x4_sub(y, zb)));
                let v = f32x4_div(f32x4_add(x, y), sy);
                let v = match uzy {
                    Some(z) => f32x4_add(v, z),
                    None => v,
                };
                i32x4_trunc_sat_f32x4(f32x4_nearest(v))
            };
            let v = narrow_clamp(q(va[0], vb[0]), q(va[1], vb[1]), q(va[2], vb[2]), q(va[3], vb[3]), &o);
            // SAFETY: i + 16 <= out.len().
            unsafe { v128_store(out.as_mut_ptr().add(i) as *mut v128, v) };
        }
        blocks * 16
    }

    pub fn mul(
        a: Operand,
        b: Operand,
        [za, zb]: [i32; 2],
        requant: &Requantizer,
        params: &OutputParams,
        out: &mut [i8],
    ) -> usize {
        let (za, zb) = (i16x8_splat(za as i16), i16x8_splat(zb as i16));
        let lanes = Lanes::new(requant);
        // |(a - za) · (b - zb)| <= 255².
        let prepared = PreparedRequant::new(requant, 255 * 255);
        let o = OutputLanes::new(params);
        let blocks = out.len() / 16;
        for i in (0..blocks * 16).step_by(16) {
            let [a0, a1] = load_centered(a, i, za);
            let [b0, b1] = load_centered(b, i, zb);
            let products = [
                i32x4_extmul_low_i16x8(a0, b0),
                i32x4_extmul_high_i16x8(a0, b0),
                i32x4_extmul_low_i16x8(a1, b1),
                i32x4_extmul_high_i16x8(a1, b1),
            ];
            let [p0, p1, p2, p3] = if prepared.fp32 {
                let scale = fp32_lanes(&prepared);
                products.map(|x| requantize_fp32(x, scale))
            } else if prepared.fast {
                let (m, nudge) = prepared_lanes(&prepared);
                products.map(|x| requantize_fast(x, m, nudge, prepared.right))
            } else {
                products.map(|x| requantize(x, &lanes))
            };
            let v = narrow_clamp(p0, p1, p2, p3, &o);
            // SAFETY: i + 16 <= out.len().
            unsafe { v128_store(out.as_mut_ptr().add(i) as *mut v128, v) };
        }
        blocks * 16
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::test_util::{range_requantizers, reference_output, Rng};
    use super::*;

    const LENGTHS: [usize; 10] = [0, 1, 2, 15, 16, 17, 31, 32, 33, 101];

    fn zero_point(rng: &mut Rng) -> i32 {
        match rng.int(0, 3) {
            0 => -128,
            1 => 127,
            _ => rng.int(-128, 127) as i32,
        }
    }

    /// Every pair of int8 values through `qs8_add` (its SIMD path on wasm32) against the scalar
    /// definition, bit for bit, for scales from 2^-12 to 2^12 apart on either side, output
    /// scales around and far from the sum, and zero points at both ends.
    #[test]
    fn add_every_pair_matches_the_scalar_definition() {
        let seed = 0xadd2;
        let mut rng = Rng(seed);
        let a: Vec<i8> = (0..65536u32).map(|i| (i >> 8) as u8 as i8).collect();
        let b: Vec<i8> = (0..65536u32).map(|i| i as u8 as i8).collect();
        let mut out = vec![0i8; a.len()];
        for case in 0..16 {
            let (sa, sb) = if case == 0 {
                (0.25, 0.25)
            } else {
                let sa = 2f32.powf(rng.unit() as f32 * 8.0 - 4.0);
                (sa, sa * 2f32.powf(rng.unit() as f32 * 24.0 - 12.0))
            };
            let sy = (sa + sb) * 2f32.powf(rng.unit() as f32 * 6.0 - 3.0);
            let (za, zb, zy) = match case % 3 {
                0 => (-128, 127, 0),
                1 => (127, -128, -128),
                _ => (zero_point(&mut rng), zero_point(&mut rng), zero_point(&mut rng)),
            };
            for p in [
                Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127),
                Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(false),
                Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(true),
            ] {
                qs8_add(&a, &b, &p, &mut out);
                for (i, &got) in out.iter().enumerate() {
                    assert_eq!(got, p.add(a[i], b[i]), "seed {seed:#x} {p:?}: {} + {}", a[i], b[i]);
                }
            }
        }
    }

    /// `qs8_add` is the real sum rounded once: equal to `round(real) + zy` (clamped) wherever
    /// the real sum is not within the multipliers' error of a tie, and within one step there.
    #[test]
    fn add_rounds_the_real_sum_once() {
        let seed = 0xadd;
        let mut rng = Rng(seed);
        let mut near_tie = 0;
        for len in LENGTHS {
            for broadcast in 0..3 {
                for _ in 0..4 {
                    let (sa, sb) = (0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32);
                    let (za, zb, zy) = (
                        zero_point(&mut rng),
                        zero_point(&mut rng),
                        zero_point(&mut rng),
                    );
                    let sy = (sa + sb) * (0.05 + rng.unit() as f32);
                    let (qmin, qmax) = if rng.int(0, 1) == 0 {
                        (-128, 127)
                    } else {
                        (-50, 90)
                    };
                    let p = Qs8AddParams::new(sa, za, sb, zb, sy, zy, qmin, qmax);
                    let a = rng.i8s(if broadcast == 1 { 1 } else { len }, -128, 127);
                    let b = rng.i8s(if broadcast == 2 { 1 } else { len }, -128, 127);
                    let mut out = vec![0i8; len];
                    qs8_add(&a, &b, &p, &mut out);
                    let what = format!("seed {seed:#x} len={len} broadcast={broadcast} {p:?}");
                    for (i, &got) in out.iter().enumerate() {
                        let (x, y) = (a[i % a.len()], b[i % b.len()]);
                        // The fixed-point value: rounded half up, exactly.
                        let fixed = p.real(x, y);
                        let want = ((fixed + 0.5).floor() as i32 + zy).clamp(qmin as i32, qmax as i32);
                        assert_eq!(got as i32, want, "{what}: out[{i}] = {x} + {y}");
                        // Against the real sum: the multipliers are off by at most 2^-(t+1) each.
                        let real = (sa as f64 * (x as i32 - za) as f64
                            + sb as f64 * (y as i32 - zb) as f64)
                            / sy as f64;
                        let exact = (real.round() as i32 + zy).clamp(qmin as i32, qmax as i32);
                        let error = 255.0 / (1u64 << p.shift) as f64;
                        if (real - real.floor() - 0.5).abs() > error {
                            assert_eq!(got as i32, exact, "{what}: out[{i}] = {x} + {y}, real {real}");
                        } else {
                            near_tie += 1;
                            assert!((got as i32 - exact).abs() <= 1, "{what}: out[{i}] = {got}, real sum gives {exact}");
                        }
                    }
                }
            }
        }
        assert!(near_tie < 5, "{near_tie} sums near a tie: the multipliers are too coarse");
    }

    #[test]
    fn add_multipliers_use_the_largest_shift_below_2_31() {
        let p = Qs8AddParams::new(0.5, 0, 0.25, 0, 1.0, 0, -128, 127);
        assert_eq!((p.a_multiplier, p.b_multiplier, p.shift), (1 << 30, 1 << 29, 31));
        // Ties round up: 0.5 · 1 + 0.25 · 2 = 1.0; 0.5 · 1 = 0.5 -> 1; 0.5 · -1 = -0.5 -> 0.
        assert_eq!(p.add(1, 2), 1);
        assert_eq!(p.add(1, 0), 1);
        assert_eq!(p.add(-1, 0), 0);
        // A small ratio takes the largest shift.
        let p = Qs8AddParams::new(1e-6, 0, 1e-6, 0, 1.0, 0, -128, 127);
        assert_eq!(p.shift, 42);
        // A ratio near the limit still leaves a shift of 12.
        let p = Qs8AddParams::new(5e5, 0, 1.0, 0, 1.0, 0, -128, 127);
        assert_eq!(p.shift, 12);
        assert_eq!(p.add(1, 0), 127);
        assert_eq!(p.add(-1, 0), -128);
    }

    #[test]
    #[should_panic(expected = "2^19 or more times the output scale")]
    fn add_rejects_huge_ratios() {
        Qs8AddParams::new(6e5, 0, 1.0, 0, 1.0, 0, -128, 127);
    }

    #[test]
    fn mul_and_rescale_match_the_reference() {
        let seed = 0x301;
        let mut rng = Rng(seed);
        for len in LENGTHS {
            for broadcast in 0..3 {
                let (za, zb, zy) = (
                    zero_point(&mut rng),
                    zero_point(&mut rng),
                    zero_point(&mut rng),
                );
                let a = rng.i8s(if broadcast == 1 { 1 } else { len }, -128, 127);
                let b = rng.i8s(if broadcast == 2 { 1 } else { len }, -128, 127);
                let products: Vec<i64> = (0..len)
                    .map(|i| {
                        (a[i % a.len()] as i64 - za as i64) * (b[i % b.len()] as i64 - zb as i64)
                    })
                    .collect();
                let range = (
                    products.iter().copied().min().unwrap_or(0),
                    products.iter().copied().max().unwrap_or(0),
                );
                // Both conventions: the second requantizer is in f32.
                let rq = range_requantizers(&[range, range, range], zy)[len % 3];
                let (qmin, qmax) = (-128, if broadcast == 0 { 127 } else { 64 });
                let mut out = vec![0i8; len];
                qs8_mul(&a, za, &b, zb, &rq, zy, qmin, qmax, &mut out);
                for (i, (&got, &prod)) in out.iter().zip(&products).enumerate() {
                    let want = reference_output(prod, &rq, zy, qmin, qmax);
                    assert_eq!(
                        got, want,
                        "seed {seed:#x} mul len={len} broadcast={broadcast} [{i}]"
                    );
                }
            }
            for m in [0.3, 1.0, 1.7, 60.0] {
                let (zx, zy) = (zero_point(&mut rng), zero_point(&mut rng));
                let x = rng.i8s(len, -128, 127);
                let rq = if len % 2 == 0 { Requantizer::from_real(m) } else { Requantizer::fp32(m as f32) };
                let mut out = vec![0i8; len];
                qs8_rescale(&x, zx, &rq, zy, -100, 127, &mut out);
                for (i, (&got, &v)) in out.iter().zip(&x).enumerate() {
                    let want = reference_output(v as i64 - zx as i64, &rq, zy, -100, 127);
                    assert_eq!(got, want, "seed {seed:#x} rescale len={len} m={m} [{i}]");
                }
            }
        }
    }

    /// The f32 convention's Add is onnxruntime's: dequantize each side in f32, add, divide by
    /// the output scale, round half to even. Ties (0.5 + 1.0 over 1.0 = 1.5 -> 2, 0.5 over 1
    /// -> 0) and an f32 sum that is not the real one (0.1 + 0.2 in f32).
    #[test]
    fn fp32_add_rounds_in_f32_half_to_even() {
        let p = Qs8AddParams::new(0.5, 0, 1.0, 0, 1.0, 0, -128, 127).in_fp32(false);
        assert_eq!([p.add(1, 0), p.add(1, 1), p.add(-1, 0), p.add(3, 0), p.add(-3, 0)], [0, 2, 0, 2, -2]);
        let fixed = Qs8AddParams::new(0.5, 0, 1.0, 0, 1.0, 0, -128, 127);
        assert_eq!(fixed.add(1, 0), 1, "fixed point rounds ties up");
        // With these f32 scales the real (0.01 + 0.07) / 0.16 is 0.5000000116: 1 when rounded
        // once, as fixed point does. In f32 the sum and the quotient round to exactly 0.5: a
        // tie, 0, as in onnxruntime.
        let p = Qs8AddParams::new(0.01, 0, 0.07, 0, 0.16, 0, -128, 127).in_fp32(false);
        assert_eq!(p.add(1, 1), 0);
        assert_eq!(Qs8AddParams::new(0.01, 0, 0.07, 0, 0.16, 0, -128, 127).add(1, 1), 1);
        let seed = 0xadd32;
        let mut rng = Rng(seed);
        for i in 0..20000 {
            let (sa, sb, sy) = (0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32);
            let (za, zb, zy) = (zero_point(&mut rng), zero_point(&mut rng), zero_point(&mut rng));
            let (a, b) = (rng.int(-128, 127) as i8, rng.int(-128, 127) as i8);
            let p = Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(false);
            // The same operations, written as onnxruntime's reference QLinearAdd loop.
            let value_a = sa * (a as i32 - za) as f32;
            let value_b = sb * (b as i32 - zb) as f32;
            let want = (((value_a + value_b) / sy).round_ties_even() as i32 + zy).clamp(-128, 127) as i8;
            assert_eq!(p.add(a, b), want, "seed {seed:#x} case {i}");
        }
    }

    /// The uint8 form is onnxruntime-web's QLinearAdd: the output zero point goes in before the
    /// rounding, which decides ties (the all-pairs comparison with onnxruntime is in
    /// `tests/ort/qdq.test.mjs`). With the third parameter set of that test, uint8 inputs 32
    /// and 251 give exactly 20.5 before the zero point 31: 52 in onnxruntime (51.5 rounds to
    /// even), 51 with the zero point added after rounding. And EfficientNet-Lite0's `add_8` in
    /// our export (inputs 148 and 172): 157.49999 before rounding, which becomes 157.5 in f32
    /// with the zero point: 158 in onnxruntime, 157 otherwise.
    #[test]
    fn uint8_add_is_onnxruntime_qlinearadd() {
        let u = |p: Qs8AddParams, a: i32, b: i32| p.add((a - 128) as i8, (b - 128) as i8) as i32 + 128;
        let (za, zb, zy) = (7 - 128, 250 - 128, 31 - 128);
        assert_eq!(u(Qs8AddParams::new(0.013, za, 0.7, zb, 0.05, zy, -128, 127).in_fp32(true), 32, 251), 52);
        assert_eq!(u(Qs8AddParams::new(0.013, za, 0.7, zb, 0.05, zy, -128, 127).in_fp32(false), 32, 251), 51);
        let (za, zb, zy) = (160 - 128, 128 - 128, 123 - 128);
        let (sa, sb, sy) = (0.1333424, 0.25924355, 0.28424954);
        assert_eq!(u(Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(true), 148, 172), 158);
        assert_eq!(u(Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(false), 148, 172), 157);
        // uint8 saturation, then the clamp.
        let p = Qs8AddParams::new(1.0, 0, 1.0, 0, 1.0, 0, -100, 100).in_fp32(true);
        assert_eq!([p.add(127, 127), p.add(-128, -128), p.add(50, 60)], [100, -100, 100]);
    }

    /// A broadcast operand, on either side, in every form: the SIMD blocks and the tail against
    /// the scalar definition.
    #[test]
    fn add_broadcasts_either_side() {
        let seed = 0xb0ad;
        let mut rng = Rng(seed);
        for len in LENGTHS {
            for case in 0..12 {
                let (sa, sb, sy) = (0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32);
                let (za, zb, zy) = (zero_point(&mut rng), zero_point(&mut rng), zero_point(&mut rng));
                let p = match case % 3 {
                    0 => Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127),
                    1 => Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(false),
                    _ => Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127).in_fp32(true),
                };
                let slice = rng.i8s(len, -128, 127);
                let scalar = rng.int(-128, 127) as i8;
                let scalar_second = case % 2 == 0;
                let mut out = vec![0i8; len];
                if scalar_second {
                    qs8_add(&slice, &[scalar], &p, &mut out);
                } else {
                    qs8_add(&[scalar], &slice, &p, &mut out);
                }
                for (i, &got) in out.iter().enumerate() {
                    let want = if scalar_second { p.add(slice[i], scalar) } else { p.add(scalar, slice[i]) };
                    assert_eq!(got, want, "seed {seed:#x} len {len} case {case} [{i}]");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "operand b has 3 elements")]
    fn unsupported_broadcast_panics() {
        let p = Qs8AddParams::new(0.1, 0, 0.1, 0, 0.2, 0, -128, 127);
        qs8_add(&[0; 6], &[0; 3], &p, &mut [0; 6]);
    }
}
