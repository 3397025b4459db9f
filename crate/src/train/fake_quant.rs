//! Fake quantization for training: the forward rounds exactly as the int8 engine and the
//! simulation do, the backward is the straight-through estimator plus the LSQ gradient of the
//! step size.
//!
//! # Forward (normative: `QuantParams::quantize`, `quantize_f32`)
//! `x̂ = s · (clamp(round_half_even(x / s) + z, qmin, qmax) - z)` for activations, and
//! `ŵ = s_c · clamp(round_half_even(w / s_c), -Q, Q)` for the channels `c` of a weight. Both go
//! through the rounding of [`quantize_f32`](crate::kernels::int8::quantize_f32), so `x̂` is bit for bit what `Fp32Engine::fake_quantized` computes and `ŵ` what
//! `ChannelParams::dequantize` gives for the integers PTQ chose.
//!
//! # Backward
//! With `t = x / s` and `r = round_half_even(t)`, an element is *in range* when
//! `qmin <= r + z <= qmax` (the rounded value before the clamp, as PyTorch's fake quantizers
//! decide). Then (Esser et al. 2020, eq. 3, with a zero point):
//! - `∂x̂/∂x = 1` in range, 0 outside (straight-through: rounding is treated as the identity,
//!   a bare `round` would kill every gradient);
//! - `∂x̂/∂s = r - t` in range, `qmin - z` or `qmax - z` when clipped below or above.
//!
//! LSQ multiplies the step-size gradient by `g = 1 / sqrt(N · Qp)` (`N` elements share the
//! step, `Qp` the largest integer distance from the zero point), so that the step size learns
//! at a rate comparable to the weights; see [`grad_scale`]. Zero points stay fixed: a real 0
//! (padding, ReLU outputs) stays exact.
//!
//! # Speed
//! The loops compute in f32 only ([`fake_quant_value`]): `r + z` clamped to `[qmin, qmax]` is
//! exactly the integer `quantize_f32` computes (every integer that can be in range is exact in
//! f32; larger ones clamp the same), so they vectorise. Natively, without SSE4.1, Rust's
//! `round_ties_even` is a libm call; [`round_half_even`] adds and subtracts `2^23` instead,
//! which the default rounding mode makes the same function.
//!
//! Tests: the forward against `QuantParams::fake_quantize` and the PTQ weight quantizer bit for
//! bit (ties, extremes, infinities, NaN), the estimator on hand-computed elements (clipped, in
//! range, ties), and the step-size gradient of a whole tensor against its definition.

use crate::quant::params::{ChannelParams, QuantParams};

/// The fake quantization of one activation (a value annotated `Quant::Tensor`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeQuant {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

/// All ones when `c`, else zero: a branch-free select on bits.
#[inline(always)]
fn mask(c: bool) -> u32 {
    (c as u32).wrapping_neg()
}

/// `g` where `keep`, else 0, without a branch (see `ops::keep_if`).
#[inline(always)]
fn keep_if(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & mask(keep))
}

/// `if c { a } else { b }` on bits: LLVM keeps float selects as branches, which stop the loops
/// from vectorising (and mispredict on data-dependent conditions).
#[inline(always)]
fn select(c: bool, a: f32, b: f32) -> f32 {
    let m = mask(c);
    f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

/// `q` clamped to `[lo, hi]` by compare-selects; NaN stays NaN. Not `q.max(lo).min(hi)`:
/// `f32::max`/`min` are IEEE maxNum/minNum, which wasm has no instruction for, and LLVM
/// scalarises them in vector loops (the fake quantization then cost 6-7 ns an element in
/// Chromium, a third of a QAT step on EfficientNet-Lite0).
#[inline(always)]
fn clamp_lanes(q: f32, lo: f32, hi: f32) -> f32 {
    let c = select(q < lo, lo, q);
    select(c > hi, hi, c)
}

/// `x.round_ties_even()`, without a libm call where the target has no rounding instruction.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    #[cfg(any(target_arch = "wasm32", target_feature = "sse4.1"))]
    {
        x.round_ties_even()
    }
    #[cfg(not(any(target_arch = "wasm32", target_feature = "sse4.1")))]
    {
        // For |x| < 2^23, |x| + 2^23 has no fraction bits left: the addition rounds to an
        // integer, ties to even, and the subtraction is exact. Larger values (and infinities)
        // already are integers; NaN fails the comparison and stays NaN.
        const M: f32 = 8_388_608.0;
        let a = x.abs();
        select(a < M, ((a + M) - M).copysign(x), x)
    }
}

/// `scale · (clamp(round(x / scale) + zp, lo, hi) - zp)` in f32: bit for bit
/// `QuantParams::fake_quantize` (NaN gives 0, as `quantize_f32` maps it to the zero point).
#[inline(always)]
pub fn fake_quant_value(x: f32, scale: f32, zp: f32, lo: f32, hi: f32) -> f32 {
    let q = round_half_even(x / scale) + zp;
    let c = select(q.is_nan(), zp, clamp_lanes(q, lo, hi));
    scale * (c - zp)
}

impl FakeQuant {
    pub fn new(p: &QuantParams) -> FakeQuant {
        FakeQuant { scale: p.scale, zero_point: p.zero_point, qmin: p.qmin(), qmax: p.qmax() }
    }

    /// `x̂` of one value, the expression of `engine::fp32::fake_quantize`
    /// (`Fp32Engine::fake_quantized`).
    #[inline(always)]
    pub fn apply(&self, x: f32) -> f32 {
        fake_quant_value(x, self.scale, self.zero_point as f32, self.qmin as f32, self.qmax as f32)
    }

    /// `y = x̂` for every element.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        debug_assert_eq!(x.len(), y.len());
        let (s, z, lo, hi) = (self.scale, self.zero_point as f32, self.qmin as f32, self.qmax as f32);
        for (o, &v) in y.iter_mut().zip(x) {
            *o = fake_quant_value(v, s, z, lo, hi);
        }
    }

    /// Straight-through backward in place: `grad` (`∂L/∂x̂`) becomes `∂L/∂x`, zero where `x`
    /// was clipped. Returns `Σ ∂L/∂x̂ · ∂x̂/∂s` (without the LSQ factor).
    pub fn backward(&self, x: &[f32], grad: &mut [f32]) -> f64 {
        debug_assert_eq!(x.len(), grad.len());
        let (s, z) = (self.scale, self.zero_point as f32);
        let (lo, hi) = (self.qmin as f32, self.qmax as f32);
        // One element: (gradient kept, ∂x̂/∂s), branch-free so that it vectorises. Every
        // integer that can be in range is exact in f32 (larger ones are out of range either
        // way). NaN quantizes to the zero point, has no gradient (it is not `inside`) and no
        // step-size term.
        let one = |v: f32| -> (bool, f32) {
            let t = v / s;
            let r = round_half_even(t);
            let q = r + z;
            let clamped = clamp_lanes(q, lo, hi);
            let inside = q == clamped;
            // Inside, ∂x̂/∂s is r - t; clipped, it is the bound's distance from the zero point.
            let d = select(inside, r - t, clamped - z);
            (inside, select(q.is_nan(), 0.0, d))
        };
        // Eight f32 lanes (a reduction the compiler may vectorise without reassociating),
        // flushed into f64 every 1024 elements.
        let mut ds = 0f64;
        for (gb, xb) in grad.chunks_mut(1024).zip(x.chunks(1024)) {
            let mut lanes = [0f32; 8];
            let mut gc = gb.chunks_exact_mut(8);
            let mut xc = xb.chunks_exact(8);
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            simd::backward_lanes(self, &mut gc, &mut xc, &mut lanes);
            for (g8, x8) in (&mut gc).zip(&mut xc) {
                for l in 0..8 {
                    let (keep, d) = one(x8[l]);
                    lanes[l] += g8[l] * d;
                    g8[l] = keep_if(g8[l], keep);
                }
            }
            let mut part = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
            for (g, &v) in gc.into_remainder().iter_mut().zip(xc.remainder()) {
                let (keep, d) = one(v);
                part += *g * d;
                *g = keep_if(*g, keep);
            }
            ds += part as f64;
        }
        ds
    }

    /// The largest integer distance from the zero point: LSQ's `Qp`.
    pub fn positive_levels(&self) -> i32 {
        (self.qmax - self.zero_point).max(self.zero_point - self.qmin).max(1)
    }
}

/// LSQ's gradient scale `1 / sqrt(N · Qp)` for a step size shared by `n` elements.
pub fn grad_scale(n: usize, qp: i32) -> f64 {
    1.0 / ((n.max(1) as f64) * qp.max(1) as f64).sqrt()
}

/// Where channel `c` of a weight sits: `outer · channels · inner` elements, channel `c` at
/// `(o · channels + c) · inner + i` (per tensor: one channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl ChannelLayout {
    /// The layout of `params` on a weight of `shape`.
    pub fn of(params: &ChannelParams, shape: &[usize]) -> ChannelLayout {
        let len: usize = shape.iter().product();
        if params.is_per_tensor() || params.axis >= shape.len() {
            return ChannelLayout { outer: 1, channels: 1, inner: len };
        }
        ChannelLayout {
            outer: shape[..params.axis].iter().product(),
            channels: shape[params.axis],
            inner: shape[params.axis + 1..].iter().product(),
        }
    }

    /// Elements per channel.
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }

    /// Calls `f(c, range)` for each contiguous run of channel `c`.
    fn for_each_run(&self, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        for o in 0..self.outer {
            for c in 0..self.channels {
                let start = (o * self.channels + c) * self.inner;
                f(c, start..start + self.inner);
            }
        }
    }
}

/// The activation backward's 8-lane loop in SIMD128: LLVM leaves the scalar loop half
/// vectorised on wasm32 (2.4 ns an element in Chromium). Each lane computes what the scalar
/// `one` does, in the same order (two f32x4 accumulators are its lanes 0-3 and 4-7), so
/// gradients and sums are bit for bit those of the scalar loop.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use super::FakeQuant;
    use core::arch::wasm32::*;

    pub(super) fn backward_lanes(q: &FakeQuant, grads: &mut core::slice::ChunksExactMut<f32>, xs: &mut core::slice::ChunksExact<f32>, lanes: &mut [f32; 8]) {
        let (s, z) = (f32x4_splat(q.scale), f32x4_splat(q.zero_point as f32));
        let (lo, hi) = (f32x4_splat(q.qmin as f32), f32x4_splat(q.qmax as f32));
        // SAFETY: 16-byte loads and stores within 8-element chunks, and of `lanes`.
        unsafe {
            let mut acc = [v128_load(lanes.as_ptr() as *const v128), v128_load(lanes.as_ptr().add(4) as *const v128)];
            for (g8, x8) in grads.zip(xs) {
                for (half, acc) in acc.iter_mut().enumerate() {
                    let gp = g8.as_mut_ptr().add(4 * half) as *mut v128;
                    let t = f32x4_div(v128_load(x8.as_ptr().add(4 * half) as *const v128), s);
                    let r = f32x4_nearest(t);
                    let qv = f32x4_add(r, z);
                    // `clamp_lanes`: pmax/pmin are the compare-selects, NaN stays NaN.
                    let clamped = f32x4_pmin(f32x4_pmax(qv, lo), hi);
                    let inside = f32x4_eq(qv, clamped);
                    let d = v128_bitselect(f32x4_sub(r, t), f32x4_sub(clamped, z), inside);
                    let d = v128_andnot(d, f32x4_ne(qv, qv));
                    let g = v128_load(gp);
                    *acc = f32x4_add(*acc, f32x4_mul(g, d));
                    v128_store(gp, v128_and(g, inside));
                }
            }
            v128_store(lanes.as_mut_ptr() as *mut v128, acc[0]);
            v128_store(lanes.as_mut_ptr().add(4) as *mut v128, acc[1]);
        }
    }
}

/// Symmetric weight fake quantization: `ŵ = s_c · clamp(round(w / s_c), -qmax, qmax)`.
pub fn quantize_weights(w: &[f32], layout: ChannelLayout, scales: &[f32], qmax: i32, out: &mut [f32]) {
    debug_assert_eq!(scales.len(), layout.channels);
    let q = qmax as f32;
    layout.for_each_run(|c, run| {
        let s = scales[c];
        for (o, &v) in out[run.clone()].iter_mut().zip(&w[run]) {
            *o = fake_quant_value(v, s, 0.0, -q, q);
        }
    });
}

/// The backward of [`quantize_weights`]: `dw` (when given) gets the straight-through gradient
/// of `dŵ`, and `dscale[c]` adds `Σ dŵ · ∂ŵ/∂s_c` (without the LSQ factor).
pub fn weights_backward(w: &[f32], layout: ChannelLayout, scales: &[f32], qmax: i32, dwhat: &[f32], mut dw: Option<&mut [f32]>, dscale: &mut [f64]) {
    let q = qmax as f32;
    layout.for_each_run(|c, run| {
        let s = scales[c];
        // One weight: (gradient passed, ∂ŵ/∂s), branch-free as in `FakeQuant::backward`.
        // NaN rounds to NaN, which is neither inside nor beyond a bound: no gradient, no term.
        let one = |v: f32| -> (bool, f32) {
            let t = v / s;
            let r = round_half_even(t);
            let inside = r >= -q && r <= q;
            (inside, select(inside, r - t, select(r < -q, -q, select(r > q, q, 0.0))))
        };
        let (w, g) = (&w[run.clone()], &dwhat[run.clone()]);
        let mut dw = dw.as_deref_mut().map(|d| &mut d[run]);
        // Eight f32 lanes flushed into f64 every 1024 weights, as in `FakeQuant::backward`.
        let mut ds = 0f64;
        for (b, (wb, gb)) in w.chunks(1024).zip(g.chunks(1024)).enumerate() {
            let mut lanes = [0f32; 8];
            let mut rest = 0f32;
            let full = wb.len() / 8 * 8;
            for (w8, g8) in wb[..full].chunks_exact(8).zip(gb[..full].chunks_exact(8)) {
                for l in 0..8 {
                    lanes[l] += g8[l] * one(w8[l]).1;
                }
            }
            for (&v, &gv) in wb[full..].iter().zip(&gb[full..]) {
                rest += gv * one(v).1;
            }
            ds += (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + rest) as f64;
            if let Some(d) = dw.as_deref_mut() {
                for ((d, &v), &gv) in d[b * 1024..][..wb.len()].iter_mut().zip(wb).zip(gb) {
                    *d = keep_if(gv, one(v).0);
                }
            }
        }
        dscale[c] += ds;
    });
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::quant::params::{from_range, quantize_weights as ptq_weights, WeightRange};
    use crate::rng::Rng;

    /// The activation backward (SIMD128 lanes on wasm32) against a per-element reference with
    /// branches, bit for bit: gradients, and the step-size sum accumulated in the same eight
    /// lanes. Ties, NaN, values just past either bound, lengths around the 8 and 1024 blocks.
    #[test]
    fn backward_equals_a_per_element_reference_bit_for_bit() {
        let mut rng = Rng::seeded(11);
        let quants = [
            FakeQuant { scale: 0.02, zero_point: -3, qmin: -128, qmax: 127 },
            FakeQuant { scale: 0.5, zero_point: -2, qmin: -8, qmax: 7 },
            FakeQuant { scale: 0.1, zero_point: 0, qmin: 0, qmax: 255 },
        ];
        for fq in quants {
            let (s, z, lo, hi) = (fq.scale, fq.zero_point as f32, fq.qmin as f32, fq.qmax as f32);
            let reference = |v: f32| -> (bool, f32) {
                let t = v / s;
                let r = t.round_ties_even();
                let q = r + z;
                if q.is_nan() {
                    (false, 0.0)
                } else if q < lo {
                    (false, lo - z)
                } else if q > hi {
                    (false, hi - z)
                } else {
                    (true, r - t)
                }
            };
            for len in [1, 7, 8, 9, 1023, 1024, 1025, 3001] {
                let x: Vec<f32> = (0..len)
                    .map(|i| match i % 7 {
                        0 => (rng.int(-300, 300) as f32 + 0.5) * s,
                        1 => f32::NAN,
                        2 => (hi - z) * s * 1.0001,
                        3 => (lo - z) * s * 1.0001,
                        _ => rng.uniform(-300.0, 300.0) as f32 * s,
                    })
                    .collect();
                let g0: Vec<f32> = (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
                let mut g = g0.clone();
                let ds = fq.backward(&x, &mut g);
                let (mut want, mut want_ds) = (g0.clone(), 0f64);
                for (gb, xb) in want.chunks_mut(1024).zip(x.chunks(1024)) {
                    let (mut lanes, full) = ([0f32; 8], xb.len() / 8 * 8);
                    let mut part = None;
                    for (i, (g, &v)) in gb.iter_mut().zip(xb).enumerate() {
                        if i == full {
                            part = Some(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
                        }
                        let (keep, d) = reference(v);
                        match part.as_mut() {
                            Some(p) => *p += *g * d,
                            None => lanes[i % 8] += *g * d,
                        }
                        *g = if keep { *g } else { 0.0 };
                    }
                    let part = part.unwrap_or(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
                    want_ds += part as f64;
                }
                for (i, (a, b)) in g.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{fq:?} len {len}: gradient {i} of x = {}", x[i]);
                }
                assert_eq!(ds.to_bits(), want_ds.to_bits(), "{fq:?} len {len}: step-size sum {ds} vs {want_ds}");
            }
        }
    }

    #[test]
    fn forward_is_the_simulation_bit_for_bit() {
        let mut rng = Rng::seeded(3);
        for (bits, symmetric, signed) in [(8, false, true), (8, true, true), (4, false, false), (6, true, false)] {
            let p = from_range(-1.3, 2.9, bits, symmetric).with_storage(signed);
            let fq = FakeQuant::new(&p);
            let x: Vec<f32> = (0..999).map(|_| rng.uniform(-4.0, 5.0) as f32).collect();
            let mut y = vec![0.0; x.len()];
            fq.forward(&x, &mut y);
            for (a, b) in x.iter().zip(&y) {
                assert_eq!(b.to_bits(), p.fake_quantize(*a).to_bits(), "{p:?} at {a}");
            }
        }
    }

    /// What lets the tape skip the fake quantization of values that only select elements of
    /// values on their grid (`tape::on_grid`): for 4000 random step sizes over twelve decades
    /// and every storage, each grid point `s · (q - z)` is its own fake quantization bit for
    /// bit and in range (the gradient passes), and its step-size term `round(t) - t` is f32
    /// rounding noise (at most an ulp of 255, 2^-16), 0 in exact arithmetic.
    #[test]
    fn fake_quantization_is_the_identity_on_its_grid() {
        let mut rng = Rng::seeded(23);
        for _ in 0..4000 {
            let scale = 10f64.powf(rng.uniform(-8.0, 4.0)) as f32;
            let (qmin, qmax) = [(-128, 127), (0, 255), (-8, 7), (-127, 127)][rng.next_u64() as usize % 4];
            let zero_point = qmin + (rng.next_u64() % (qmax - qmin + 1) as u64) as i32;
            let fq = FakeQuant { scale, zero_point, qmin, qmax };
            let grid: Vec<f32> = (qmin..=qmax).map(|q| fq.apply((q - zero_point) as f32 * scale)).collect();
            for (q, x) in (qmin..=qmax).zip(&grid) {
                assert_eq!(fq.apply(*x).to_bits(), x.to_bits(), "{fq:?}: q = {q}");
            }
            let mut grad = vec![1.0; grid.len()];
            let ds = fq.backward(&grid, &mut grad);
            assert!(grad.iter().all(|&g| g == 1.0), "{fq:?}: a grid point out of range");
            assert!(ds.abs() < grid.len() as f64 * 2f64.powi(-16), "{fq:?}: step-size term {ds}");
        }
    }

    #[test]
    fn float_domain_rounding_is_quantize_f32_on_every_edge() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 8_388_607.5, 8_388_608.0, -8_388_609.0, 1e30, -1e30];
        for i in -600..=600 {
            xs.push(i as f32 * 0.5); // every tie
            xs.push(i as f32 * 0.5 + 1e-4);
            xs.push(i as f32 * 0.5 - 1e-4);
        }
        let mut rng = Rng::seeded(8);
        xs.extend((0..20000).map(|_| (rng.gaussian() * 10f64.powf(rng.uniform(-3.0, 9.0))) as f32));
        for &x in &xs {
            let r = round_half_even(x);
            assert!(r.to_bits() == x.round_ties_even().to_bits() || (r.is_nan() && x.is_nan()), "{x}");
        }
        for (scale, zp, lo, hi) in [(0.5f32, 0, -128, 127), (0.03, -128, -128, 127), (0.7, 3, -8, 7), (1e-3, 100, 0, 255), (2.0, 0, -127, 127)] {
            for &x in &xs {
                let ours = fake_quant_value(x, scale, zp as f32, lo as f32, hi as f32);
                let theirs = scale * (crate::kernels::int8::quantize_f32(x, scale, zp, lo, hi) - zp) as f32;
                assert_eq!(ours.to_bits(), theirs.to_bits(), "x {x} scale {scale} zp {zp}");
            }
        }
    }

    #[test]
    fn weights_match_the_ptq_quantizer_bit_for_bit() {
        let mut rng = Rng::seeded(5);
        let shape = [5, 3, 3, 3];
        let w: Vec<f32> = (0..135).map(|_| rng.gaussian() as f32 * 0.2).collect();
        for bits in [8, 4, 3] {
            let (params, q) = ptq_weights(&w, &shape, Some(0), bits, WeightRange::Mse);
            let layout = ChannelLayout::of(&params, &shape);
            let mut out = vec![0.0; w.len()];
            quantize_weights(&w, layout, &params.scales, params.qmax(), &mut out);
            assert_eq!(out, params.dequantize(&q, &shape));
        }
        // Per channel on a middle axis (a Gemm weight without transB) and per tensor.
        let shape = [4, 6];
        let w: Vec<f32> = (0..24).map(|_| rng.gaussian() as f32).collect();
        for axis in [Some(1), None] {
            let (params, q) = ptq_weights(&w, &shape, axis, 5, WeightRange::MaxAbs);
            let mut out = vec![0.0; w.len()];
            quantize_weights(&w, ChannelLayout::of(&params, &shape), &params.scales, params.qmax(), &mut out);
            assert_eq!(out, params.dequantize(&q, &shape));
        }
    }

    #[test]
    fn straight_through_and_step_size_gradients_by_hand() {
        // s = 0.5, z = -2, integers [-8, 7] (4 bits signed, asymmetric).
        let fq = FakeQuant { scale: 0.5, zero_point: -2, qmin: -8, qmax: 7 };
        // x/s:    0.6 -> r 1 (in, r - t = 0.4); 4.5 -> 4 (tie to even; in, -0.5);
        //         9.4 -> 9, q 7: in range (edge); 9.6 -> 10, q 8 > 7: clipped, dŝ = qmax - z = 9;
        //        -6.6 -> -7, q -9 < -8: clipped, dŝ = qmin - z = -6.
        let x = [0.3, 2.25, 4.7, 4.8, -3.3];
        let mut g = [1.0, 2.0, 1.0, 1.0, 3.0];
        let ds = fq.backward(&x, &mut g);
        assert_eq!(g, [1.0, 2.0, 1.0, 0.0, 0.0]);
        let expected = 1.0 * 0.4 + 2.0 * -0.5 + 1.0 * (9.0 - 9.4) + 9.0 + 3.0 * -6.0;
        assert!((ds - expected).abs() < 1e-5, "{ds} vs {expected}");
        // The step-size gradient is the derivative of x̂ where x̂ is smooth in s: on a grid point
        // (r fixed), x̂ = s · r, so ∂x̂/∂s = r and the estimator gives r - t; summed with
        // ∂x̂/∂x · x/s = t it is r, the real derivative.
        assert_eq!(fq.positive_levels(), 9);
        assert!((grad_scale(100, 9) - 1.0 / 30.0).abs() < 1e-12);
    }

    #[test]
    fn weight_backward_clips_and_sums_per_channel() {
        // Two channels on axis 0, 3 bits: integers [-3, 3].
        let layout = ChannelLayout { outer: 1, channels: 2, inner: 3 };
        let scales = [0.1, 1.0];
        let w = [0.14, 0.5, -0.26, 0.4, -3.6, 2.5];
        let dwhat = [1.0, 1.0, 2.0, 1.0, 1.0, 1.0];
        let mut dw = [9.0; 6];
        let mut ds = [0.0; 2];
        weights_backward(&w, layout, &scales, 3, &dwhat, Some(&mut dw), &mut ds);
        assert_eq!(dw, [1.0, 0.0, 1.0 * 2.0, 1.0, 0.0, 1.0]);
        // ch0: 1.4 -> 1 (-0.4); 5 -> clipped +3; -2.6 -> -3 (2 · -0.4).
        // ch1: 0.4 -> 0 (-0.4); -3.6 -> -4 clipped -3; 2.5 -> 2 (tie to even, -0.5).
        assert!((ds[0] - (-0.4 + 3.0 - 0.8)).abs() < 1e-5, "{ds:?}");
        assert!((ds[1] - (-0.4 - 3.0 - 0.5)).abs() < 1e-5, "{ds:?}");
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::rng::Rng;
    use std::time::Instant;

    /// ns per element of the fake-quant forward and backward on ReLU6-like data
    /// (`cargo test --release --lib fake_quant_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn fake_quant_speed() {
        let mut rng = Rng::seeded(2);
        let n = 1 << 20;
        let x: Vec<f32> = (0..n).map(|_| rng.uniform(-0.5, 6.5) as f32).collect();
        let fq = FakeQuant::new(&crate::quant::params::from_range(0.0, 6.0, 8, false));
        let mut y = vec![0f32; n];
        let mut g: Vec<f32> = (0..n).map(|_| rng.gaussian() as f32).collect();
        let best = |f: &mut dyn FnMut()| (0..9).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() }).fold(f64::MAX, f64::min) * 1e9 / n as f64;
        let fwd = best(&mut || {
            fq.forward(std::hint::black_box(&x), &mut y);
            std::hint::black_box(&y);
        });
        let bwd = best(&mut || {
            std::hint::black_box(fq.backward(&x, &mut g));
        });
        eprintln!("fake quant: forward {fwd:.2} ns/element, backward {bwd:.2} ns/element");
    }
}
