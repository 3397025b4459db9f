//! Int8 elementwise ops with rescaling: Add, Mul, and requantization to another scale (Concat
//! inputs, identity requantization).
//!
//! # Contract
//! - Operands are int8 tensors with their own scale and zero point; the output has its own.
//!   Add and Mul take operands of the output's length, or one side of length 1 (a scalar
//!   broadcast); the engine runs other broadcasts in float.
//! - `qs8_add` is TFLite's int8 Add: with `twice_max = 2 · max(sa, sb)`, each input becomes
//!   `rq_a((a - za) · 2^ADD_LEFT_SHIFT)` with `rq_a = sa / twice_max` (likewise b), the two are
//!   summed and the sum requantized by `twice_max / (2^ADD_LEFT_SHIFT · sy)`. The left shift of 20
//!   (TFLite's reference 8-bit Add) keeps 20 fractional bits through the input rescaling, so the
//!   result is within one step of the exact
//!   `round((sa (a - za) + sb (b - zb)) / sy) + zy`, and `255 · 2^20` leaves headroom in i32.
//! - `qs8_mul` is `clamp(zy + rq((a - za) · (b - zb)), qmin, qmax)` with `rq = sa · sb / sy`.
//! - `qs8_rescale` is `clamp(zy + rq(x - zx), qmin, qmax)` with `rq = sx / sy`.
//! - Every output is defined by these integer formulas; the simd128 versions (16 elements at a
//!   time, the scalar code for the tail) compute them bit for bit.
//!
//! # Tests
//! Exact integer references with the same requantizers, on lengths around 16, both broadcast
//! sides, zero points at the ends of int8 and clamps; plus the within-one-step check of `qs8_add`
//! against the real formula.

use super::requant::{requantize, OutputParams, Requantizer};

/// Fractional bits kept by `qs8_add` while rescaling its inputs to a common scale.
pub const ADD_LEFT_SHIFT: u32 = 20;

/// The quantization of an Add: input and output zero points and the three requantizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qs8AddParams {
    a_zero_point: i32,
    b_zero_point: i32,
    a_requant: Requantizer,
    b_requant: Requantizer,
    out_requant: Requantizer,
    out: OutputParams,
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
        let twice_max = 2.0 * a_scale.max(b_scale) as f64;
        Qs8AddParams {
            a_zero_point,
            b_zero_point,
            a_requant: Requantizer::from_real(a_scale as f64 / twice_max),
            b_requant: Requantizer::from_real(b_scale as f64 / twice_max),
            out_requant: Requantizer::from_real(
                twice_max / ((1u64 << ADD_LEFT_SHIFT) as f64 * output_scale as f64),
            ),
            out: OutputParams::new(output_zero_point, qmin, qmax),
        }
    }

    /// One output element: the scalar definition every path of [`qs8_add`] computes.
    #[inline]
    pub fn add(&self, a: i8, b: i8) -> i8 {
        let a = self
            .a_requant
            .apply((a as i32 - self.a_zero_point) << ADD_LEFT_SHIFT);
        let b = self
            .b_requant
            .apply((b as i32 - self.b_zero_point) << ADD_LEFT_SHIFT);
        requantize(a + b, &self.out_requant, &self.out)
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
        narrow_clamp, prepared_lanes, requantize, requantize_fast, Lanes, OutputLanes,
    };
    use super::super::requant::PreparedRequant;
    use super::{Operand, OutputParams, Qs8AddParams, Requantizer, ADD_LEFT_SHIFT};

    /// 16 values of an operand from element `i`, minus the zero point, as two i16x8.
    #[inline(always)]
    fn load_centered(x: Operand, i: usize, zero_point: v128) -> [v128; 2] {
        let v = match x {
            // SAFETY: the callers only ask for blocks with i + 16 <= len.
            Operand::Slice(s) => unsafe { v128_load(s.as_ptr().add(i) as *const v128) },
            Operand::Scalar(v) => i8x16_splat(v),
        };
        // x - zp lies in [-255, 255]: exact in i16.
        [
            i16x8_sub(i16x8_extend_low_i8x16(v), zero_point),
            i16x8_sub(i16x8_extend_high_i8x16(v), zero_point),
        ]
    }

    #[inline(always)]
    fn widen(v: [v128; 2]) -> [v128; 4] {
        [
            i32x4_extend_low_i16x8(v[0]),
            i32x4_extend_high_i16x8(v[0]),
            i32x4_extend_low_i16x8(v[1]),
            i32x4_extend_high_i16x8(v[1]),
        ]
    }

    /// `Requantizer::apply(x << ADD_LEFT_SHIFT)` for `|x| <= 255` and a requantizer with
    /// `shift <= 0`, on four i32 lanes without i64 products (`multiplier` split as
    /// `mh · 2^11 + ml`, see `apply`).
    #[derive(Clone, Copy)]
    struct InputRescale {
        mh: v128,
        ml: v128,
        /// `2^10` when `right = 0`, else 0; `2^(right - 1)` when `right >= 1`, else 0.
        low_nudge: v128,
        high_nudge: v128,
        right: u32,
    }

    impl InputRescale {
        fn new(rq: &Requantizer) -> Option<InputRescale> {
            let (m, shift) = (rq.multiplier(), rq.shift());
            if shift > 0 || m < 0 {
                return None;
            }
            let right = (-shift) as u32;
            Some(InputRescale {
                mh: i32x4_splat(m >> 11),
                ml: i32x4_splat(m & 0x7ff),
                low_nudge: i32x4_splat(if right == 0 { 1 << 10 } else { 0 }),
                high_nudge: i32x4_splat(if right == 0 { 0 } else { 1 << (right - 1) }),
                right,
            })
        }

        #[inline(always)]
        fn apply(&self, x: v128) -> v128 {
            // apply(x · 2^20) = floor((x · m · 2^20 + 2^(30 + r)) / 2^(31 + r))
            //                 = floor((x · m + 2^(10 + r)) / 2^(11 + r)), and with
            // x · m = x · mh · 2^11 + x · ml, dividing by 2^11 first (floors of power-of-two
            // divisions compose):
            //   r >= 1: floor((x · mh + 2^(r - 1) + floor(x · ml / 2^11)) / 2^r)
            //   r  = 0: x · mh + floor((x · ml + 2^10) / 2^11).
            // |x · mh| < 2^28 and |x · ml| < 2^19, so nothing leaves i32.
            let t = i32x4_add(
                i32x4_mul(x, self.mh),
                i32x4_shr(i32x4_add(i32x4_mul(x, self.ml), self.low_nudge), 11),
            );
            i32x4_shr(i32x4_add(t, self.high_nudge), self.right)
        }
    }

    pub fn add(a: Operand, b: Operand, p: &Qs8AddParams, out: &mut [i8]) -> usize {
        const { assert!(ADD_LEFT_SHIFT == 20) };
        // The usual case: input multipliers of at most 1/2 (they are `s / (2 max(sa, sb))`)
        // and an output multiplier below 1/2, whose accumulators `|a'| + |b'| <= 255 · 2^20`
        // allow the split-shift formula.
        let out_rq = PreparedRequant::new(&p.out_requant, (255 << ADD_LEFT_SHIFT) + 2);
        if let (Some(ra), Some(rb), true) = (
            InputRescale::new(&p.a_requant),
            InputRescale::new(&p.b_requant),
            out_rq.fast,
        ) {
            let (za, zb) = (
                i16x8_splat(p.a_zero_point as i16),
                i16x8_splat(p.b_zero_point as i16),
            );
            let o = OutputLanes::new(&p.out);
            let blocks = out.len() / 16;
            for i in (0..blocks * 16).step_by(16) {
                let va = widen(load_centered(a, i, za));
                let vb = widen(load_centered(b, i, zb));
                let (m, nudge) = prepared_lanes(&out_rq);
                let mut sum = [i32x4_splat(0); 4];
                for (s, (&x, &y)) in sum.iter_mut().zip(va.iter().zip(&vb)) {
                    let xy = i32x4_add(ra.apply(x), rb.apply(y));
                    *s = requantize_fast(xy, m, nudge, out_rq.right);
                }
                let v = narrow_clamp(sum[0], sum[1], sum[2], sum[3], &o);
                // SAFETY: i + 16 <= out.len().
                unsafe { v128_store(out.as_mut_ptr().add(i) as *mut v128, v) };
            }
            return blocks * 16;
        }
        let (za, zb) = (
            i16x8_splat(p.a_zero_point as i16),
            i16x8_splat(p.b_zero_point as i16),
        );
        let (la, lb, lo) = (
            Lanes::new(&p.a_requant),
            Lanes::new(&p.b_requant),
            Lanes::new(&p.out_requant),
        );
        let o = OutputLanes::new(&p.out);
        let blocks = out.len() / 16;
        for i in (0..blocks * 16).step_by(16) {
            let va = widen(load_centered(a, i, za));
            let vb = widen(load_centered(b, i, zb));
            let mut sum = [i32x4_splat(0); 4];
            for (s, (&x, &y)) in sum.iter_mut().zip(va.iter().zip(&vb)) {
                let x = requantize(i32x4_shl(x, ADD_LEFT_SHIFT), &la);
                let y = requantize(i32x4_shl(y, ADD_LEFT_SHIFT), &lb);
                *s = requantize(i32x4_add(x, y), &lo);
            }
            let v = narrow_clamp(sum[0], sum[1], sum[2], sum[3], &o);
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
        let o = OutputLanes::new(params);
        let blocks = out.len() / 16;
        for i in (0..blocks * 16).step_by(16) {
            let [a0, a1] = load_centered(a, i, za);
            let [b0, b1] = load_centered(b, i, zb);
            let v = narrow_clamp(
                requantize(i32x4_extmul_low_i16x8(a0, b0), &lanes),
                requantize(i32x4_extmul_high_i16x8(a0, b0), &lanes),
                requantize(i32x4_extmul_low_i16x8(a1, b1), &lanes),
                requantize(i32x4_extmul_high_i16x8(a1, b1), &lanes),
                &o,
            );
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
            let p = Qs8AddParams::new(sa, za, sb, zb, sy, zy, -128, 127);
            qs8_add(&a, &b, &p, &mut out);
            for (i, &got) in out.iter().enumerate() {
                assert_eq!(got, p.add(a[i], b[i]), "seed {seed:#x} {p:?}: {} + {}", a[i], b[i]);
            }
        }
    }

    #[test]
    fn add_matches_the_tflite_formula_and_the_real_sum() {
        let seed = 0xadd;
        let mut rng = Rng(seed);
        for len in LENGTHS {
            for broadcast in 0..3 {
                for _ in 0..4 {
                    let (sa, sb) = (0.01 + rng.unit() as f32, 0.01 + rng.unit() as f32);
                    let (za, zb, zy) = (
                        zero_point(&mut rng),
                        zero_point(&mut rng),
                        zero_point(&mut rng),
                    );
                    let sy = (sa + sb) * (0.5 + rng.unit() as f32);
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
                        let (x, y) = (a[i % a.len()] as i32, b[i % b.len()] as i32);
                        let scaled_a = p.a_requant.apply((x - za) << 20);
                        let scaled_b = p.b_requant.apply((y - zb) << 20);
                        let want = reference_output(
                            (scaled_a + scaled_b) as i64,
                            &p.out_requant,
                            zy,
                            qmin,
                            qmax,
                        );
                        assert_eq!(got, want, "{what}: out[{i}] = {x} + {y}");
                        let real =
                            (sa as f64 * (x - za) as f64 + sb as f64 * (y - zb) as f64) / sy as f64;
                        let exact = (real.round() as i32 + zy).clamp(qmin as i32, qmax as i32);
                        assert!(
                            (got as i32 - exact).abs() <= 1,
                            "{what}: out[{i}] = {got}, real sum gives {exact}"
                        );
                    }
                }
            }
        }
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
                let rq = range_requantizers(&[range], zy)[0];
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
                let rq = Requantizer::from_real(m);
                let mut out = vec![0i8; len];
                qs8_rescale(&x, zx, &rq, zy, -100, 127, &mut out);
                for (i, (&got, &v)) in out.iter().zip(&x).enumerate() {
                    let want = reference_output(v as i64 - zx as i64, &rq, zy, -100, 127);
                    assert_eq!(got, want, "seed {seed:#x} rescale len={len} m={m} [{i}]");
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
