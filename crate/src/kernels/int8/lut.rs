//! Int8 activations by table lookup: any pointwise function of one int8 input (Sigmoid,
//! HardSwish, SiLU, Tanh, ...) is one of 256 outputs.
//!
//! # Contract
//! - [`lut_from_fn`] builds the table in float, with the simulation's quantizer:
//!   `lut[q as u8] = quantize_f32(f(sx · (q - zx)), sy, zy, qmin, qmax)` for every int8 `q`.
//!   Fake quantization of `f` in training computes the same values, so the int8 engine and the
//!   simulation agree exactly on these ops (given the same f32 `f`).
//! - [`qs8_lut`] maps each byte through the table. The table is indexed by the byte's bits
//!   (`q as u8`), so the SIMD path uses the raw input as an index. A table that is a clamp,
//!   `lut[q] = clamp(q, lo, hi)` for every `q` (ReLU, ReLU6 or Clip between equal input and
//!   output quantizations; the identity), is applied as one min and one max per 16 lanes
//!   instead of 16 lookups: the same outputs, checked on the table at each call.
//!
//! # SIMD128
//! `i8x16.swizzle` looks up 16 lanes in a 16-byte table and gives 0 for indices >= 16. The
//! 256-entry table is 16 such tables: chunk `j` answers exactly the lanes whose index minus
//! `16 j` (wrapping) is below 16, so OR-ing the 16 lookups gives every lane its entry.
//!
//! # Tests
//! The table against the float formula, and `qs8_lut` against plain indexing on lengths around
//! 16 (natively and on wasm32 with simd128).

use super::requant::quantize_f32;

/// The table of `f` from input quantization `(sx, zx)` to output quantization `(sy, zy)` with
/// the output clamped to `[qmin, qmax]`; index an input `q` as `lut[q as u8 as usize]`.
pub fn lut_from_fn(
    f: impl Fn(f32) -> f32,
    input_scale: f32,
    input_zero_point: i32,
    output_scale: f32,
    output_zero_point: i32,
    qmin: i8,
    qmax: i8,
) -> [i8; 256] {
    assert!(qmin <= qmax, "empty output clamp [{qmin}, {qmax}]");
    let mut lut = [0i8; 256];
    for q in -128i32..=127 {
        let x = input_scale * (q - input_zero_point) as f32;
        let y = quantize_f32(
            f(x),
            output_scale,
            output_zero_point,
            qmin as i32,
            qmax as i32,
        );
        lut[q as u8 as usize] = y as i8;
    }
    lut
}

/// `out[i] = lut[x[i] as u8]`; `x` and `out` have the same length.
pub fn qs8_lut(x: &[i8], lut: &[i8; 256], out: &mut [i8]) {
    assert_eq!(x.len(), out.len(), "qs8_lut: input and output lengths");
    let done = match as_clamp(lut) {
        Some((lo, hi)) => clamp_simd(x, lo, hi, out),
        None => lut_simd(x, lut, out),
    };
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = lut[v as u8 as usize];
    }
}

/// `(lo, hi)` when `lut[q] = clamp(q, lo, hi)` for every int8 `q`.
fn as_clamp(lut: &[i8; 256]) -> Option<(i8, i8)> {
    let (lo, hi) = (lut[(-128i8) as u8 as usize], lut[127]);
    (lo <= hi && (-128i8..=127).all(|q| lut[q as u8 as usize] == q.clamp(lo, hi))).then_some((lo, hi))
}

/// Without simd128 the scalar loop handles every element.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn lut_simd(_: &[i8], _: &[i8; 256], _: &mut [i8]) -> usize {
    0
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn clamp_simd(_: &[i8], _: i8, _: i8, _: &mut [i8]) -> usize {
    0
}

/// Whole blocks of 16 elements of `clamp(x, lo, hi)`; returns how many were written.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn clamp_simd(x: &[i8], lo: i8, hi: i8, out: &mut [i8]) -> usize {
    use core::arch::wasm32::*;
    let blocks = x.len() / 16;
    let (lo, hi) = (i8x16_splat(lo), i8x16_splat(hi));
    // SAFETY: 16-byte loads and stores at i + 16 <= len of x and out (same length).
    unsafe {
        for i in (0..blocks * 16).step_by(16) {
            let v = v128_load(x.as_ptr().add(i) as *const v128);
            v128_store(out.as_mut_ptr().add(i) as *mut v128, i8x16_max(i8x16_min(v, hi), lo));
        }
    }
    blocks * 16
}

/// Whole blocks of 16 elements (see the module docs); returns how many were written.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn lut_simd(x: &[i8], lut: &[i8; 256], out: &mut [i8]) -> usize {
    use core::arch::wasm32::*;
    let blocks = x.len() / 16;
    // SAFETY: 16-byte loads from the 256-byte table and from/to x and out at i + 16 <= len.
    unsafe {
        let mut tables = [i8x16_splat(0); 16];
        for (j, t) in tables.iter_mut().enumerate() {
            *t = v128_load(lut.as_ptr().add(16 * j) as *const v128);
        }
        for i in (0..blocks * 16).step_by(16) {
            let idx = v128_load(x.as_ptr().add(i) as *const v128);
            let mut v = i8x16_swizzle(tables[0], idx);
            for (j, &t) in tables.iter().enumerate().skip(1) {
                let shifted = i8x16_sub(idx, i8x16_splat((16 * j) as u8 as i8));
                v = v128_or(v, i8x16_swizzle(t, shifted));
            }
            v128_store(out.as_mut_ptr().add(i) as *mut v128, v);
        }
    }
    blocks * 16
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::test_util::Rng;
    use super::*;

    #[test]
    fn table_follows_the_float_formula() {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let lut = lut_from_fn(sigmoid, 0.1, -20, 1.0 / 256.0, -128, -128, 127);
        assert_eq!(lut[(-20i8) as u8 as usize], 0); // sigmoid(0) = 0.5 -> 128 - 128
        assert_eq!(lut[127u8 as usize], 127); // sigmoid(14.7) saturates
        assert_eq!(lut[(-128i8) as u8 as usize], -128); // sigmoid(-10.8) ~ 2e-5 -> 0 steps
        let hardswish = |x: f32| x * (x / 6.0 + 0.5).clamp(0.0, 1.0);
        let lut = lut_from_fn(hardswish, 0.05, 3, 0.04, -10, -10, 127);
        for q in -128i32..=127 {
            let y = hardswish(0.05 * (q - 3) as f32);
            let want = ((y / 0.04).round_ties_even() as i32 - 10).clamp(-10, 127);
            assert_eq!(lut[q as u8 as usize] as i32, want, "q={q}");
        }
    }

    #[test]
    fn lookup_matches_indexing() {
        let seed = 0x1u64 << 40 | 0x1ab;
        let mut rng = Rng(seed);
        let lut: [i8; 256] = rng.i8s(256, -128, 127).try_into().unwrap();
        for len in [0, 1, 15, 16, 17, 32, 47, 256, 1000] {
            let x = rng.i8s(len, -128, 127);
            let mut out = vec![0i8; len];
            qs8_lut(&x, &lut, &mut out);
            for (i, (&got, &v)) in out.iter().zip(&x).enumerate() {
                assert_eq!(
                    got, lut[v as u8 as usize],
                    "seed {seed:#x} len={len} [{i}] x={v}"
                );
            }
        }
        let every: Vec<i8> = (0..=255u8).map(|v| v as i8).collect();
        let mut out = vec![0i8; 256];
        qs8_lut(&every, &lut, &mut out);
        assert_eq!(&out[..], &lut[..], "every index");
    }

    /// Clamp tables (ReLU, ReLU6, the identity) take the min/max path with the same outputs;
    /// a table that is a clamp but for one entry does not.
    #[test]
    fn clamp_tables_match_indexing() {
        let mut rng = Rng(0xc1a);
        let relu = lut_from_fn(|v| v.max(0.0), 0.1, -7, 0.1, -7, -128, 127);
        assert_eq!(as_clamp(&relu), Some((-7, 127)));
        let relu6 = lut_from_fn(|v| v.clamp(0.0, 6.0), 0.05, -128, 0.05, -128, -128, 127);
        assert_eq!(as_clamp(&relu6), Some((-128, -8)));
        let identity: [i8; 256] = core::array::from_fn(|i| i as u8 as i8);
        assert_eq!(as_clamp(&identity), Some((-128, 127)));
        let mut almost = relu;
        almost[5] = 4;
        assert_eq!(as_clamp(&almost), None);
        for lut in [relu, relu6, identity, almost] {
            for len in [0, 1, 15, 16, 17, 33, 300] {
                let x = rng.i8s(len, -128, 127);
                let mut out = vec![0i8; len];
                qs8_lut(&x, &lut, &mut out);
                let want: Vec<i8> = x.iter().map(|&v| lut[v as u8 as usize]).collect();
                assert_eq!(out, want, "len={len}");
            }
        }
    }
}
