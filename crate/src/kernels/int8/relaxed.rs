//! Relaxed SIMD's `i32x4.relaxed_dot_i8x16_i7x16_add_s` on full 8-bit operands, where this
//! machine computes it exactly.
//!
//! # Why
//! SIMD128's widest integer multiply-add, `i32x4.dot_i16x8_s` and an add, does 8 multiply-adds
//! per two instructions: twice `f32x4.mul` + `add`, which caps int8 at about 2x f32. The relaxed
//! dot does 16 in one instruction (`vpdpbusd` on x64 with AVX-VNNI).
//!
//! # Contract
//! The relaxed dot multiplies signed bytes of its first operand with bytes of its second and
//! adds groups of 4 products to each i32 lane. The result is only portable when the second
//! operand fits 7 bits. With the full byte, engines differ:
//! - x64 with AVX-VNNI (`vpdpbusd`): the second operand is unsigned, the sums are exact;
//! - x64 without it (`pmaddubsw` + `pmaddwd`): unsigned, but each pair of products saturates
//!   to i16;
//! - Arm (`sdot`): the second operand is signed.
//!
//! The int8 GEMM feeds weights (i8) as the first operand and activations offset by 128 (`x +
//! 128`, u8) as the second, so it needs the first behaviour. [`unsigned_dot`] probes for it
//! once, on operands that tell the three apart. onnxruntime's MLAS probes the same way
//! (`HasUSDot`). The offset is undone in the bias: `Σ w · x = Σ w · (x + 128) - 128 · Σ w`.
//!
//! # Builds
//! The instruction exists only in the relaxed-SIMD build (`--cfg qp_relaxed_simd`;
//! `scripts/build-wasm.sh` writes `quant_playground_relaxed_bg.wasm` beside the SIMD128 one),
//! and there only in the functions that ask for it with `#[target_feature(enable =
//! "relaxed-simd")]`. Enabling the feature for the whole crate lets LLVM pick relaxed
//! instructions anywhere: the FP32 Max/Min kernels then gave other results on NaN inputs (two
//! of the crate's tests failed), relaxed min/max leaving NaN handling to the machine.
//!
//! The worker loads this build where the browser validates relaxed SIMD
//! (`www/engine-build.js`). In every other build [`unsigned_dot`] is the constant `false`.

/// Whether the relaxed dot is exact with an unsigned second operand on this machine: the
/// condition for the GEMM's `4x8c4` tiles (see the module docs). Probed once.
pub fn unsigned_dot() -> bool {
    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    {
        use core::sync::atomic::{AtomicU8, Ordering};
        // 0: not probed yet, 1: exact, 2: not.
        static STATE: AtomicU8 = AtomicU8::new(0);
        match STATE.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let exact = probe();
                STATE.store(if exact { 1 } else { 2 }, Ordering::Relaxed);
                exact
            }
        }
    }
    #[cfg(not(all(target_arch = "wasm32", qp_relaxed_simd)))]
    false
}

/// The lanes of the probe: `(first operand, second operand, accumulator)` per i32 lane.
/// - lane 0: `-128 · 255` four times, whose pairs saturate with `pmaddubsw` and which a
///   signed reading turns into `+512`;
/// - lane 1: `127 · 255`, saturating the other way;
/// - lanes 2 and 3: mixed signs and magnitudes, so that the grouping of 4 consecutive bytes
///   into each lane is checked too.
#[cfg(any(test, all(target_arch = "wasm32", qp_relaxed_simd)))]
const PROBE: [([i8; 4], [u8; 4], i32); 4] = [
    ([-128, -128, -128, -128], [255, 255, 255, 255], 7),
    ([127, 127, 127, 127], [255, 255, 255, 255], -7),
    ([1, -2, 3, -4], [200, 100, 3, 250], 100_000),
    ([-127, 64, 0, 5], [129, 128, 77, 1], -100_000),
];

/// What the probe must give: the exact sums with the second operand unsigned.
#[cfg(any(test, all(target_arch = "wasm32", qp_relaxed_simd)))]
fn probe_expected() -> [i32; 4] {
    PROBE.map(|(a, b, c)| c + (0..4).map(|i| a[i] as i32 * b[i] as i32).sum::<i32>())
}

#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
fn probe() -> bool {
    let a: [i8; 16] = core::array::from_fn(|i| PROBE[i / 4].0[i % 4]);
    let b: [u8; 16] = core::array::from_fn(|i| PROBE[i / 4].1[i % 4]);
    relaxed_dot(a, b, PROBE.map(|p| p.2)) == probe_expected()
}

/// One `i32x4.relaxed_dot_i8x16_i7x16_add_s(a, b, c)` as this machine computes it.
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
#[target_feature(enable = "relaxed-simd")]
fn relaxed_dot(a: [i8; 16], b: [u8; 16], c: [i32; 4]) -> [i32; 4] {
    use core::arch::wasm32::*;
    use core::hint::black_box;
    // black_box: the instruction must run on this machine, not be folded by the compiler.
    let (a, b, c) = black_box((a, b, c));
    // SAFETY: 16-byte loads from 16-byte arrays and a 16-byte store into one.
    let got = unsafe {
        let va = v128_load(a.as_ptr() as *const v128);
        let vb = v128_load(b.as_ptr() as *const v128);
        let vc = v128_load(c.as_ptr() as *const v128);
        let mut got = [0i32; 4];
        v128_store(got.as_mut_ptr() as *mut v128, i32x4_relaxed_dot_i8x16_i7x16_add(va, vb, vc));
        got
    };
    black_box(got)
}

/// X panels of the `4x8c2` tiles (i8, pairs of k interleaved, `kc` rows padded to even) into
/// those of the `4x8c4` tiles (u8 `x + 128`, 4 k values per column and step):
/// `dst[(p / 4) * 32 + j * 4 + p % 4] = src[(p / 2) * 16 + j * 2 + p % 2] + 128` per panel of
/// 8 columns, `kc` padded to a multiple of 4 with 128 (the padding meets zero weights).
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
pub(super) fn quads_from_pairs(src: &[i8], kc: usize, dst: &mut [u8]) {
    use core::arch::wasm32::*;
    const PANEL_PAIRS: usize = 16; // bytes of one k pair of 8 columns
    const PANEL_QUAD: usize = 32; // bytes of one k quad of 8 columns
    let (pairs, quads) = (kc / 2, kc.div_ceil(4));
    assert!(kc % 2 == 0 && src.len() % (pairs * PANEL_PAIRS).max(1) == 0);
    let panels = if pairs == 0 { 0 } else { src.len() / (pairs * PANEL_PAIRS) };
    assert_eq!(dst.len(), panels * quads * PANEL_QUAD, "quads_from_pairs: destination size");
    // SAFETY: panel i reads src[i * pairs * 16 ..][..pairs * 16] (step s at s * 16, s < pairs)
    // and writes dst[i * quads * 32 ..][..quads * 32], in bounds per the asserts.
    unsafe {
        let offset = u8x16_splat(0x80);
        for i in 0..panels {
            let s = src.as_ptr().add(i * pairs * PANEL_PAIRS);
            let d = dst.as_mut_ptr().add(i * quads * PANEL_QUAD);
            for q in 0..quads {
                let s0 = v128_load(s.add(2 * q * PANEL_PAIRS) as *const v128);
                let s1 = if 2 * q + 1 < pairs {
                    v128_load(s.add((2 * q + 1) * PANEL_PAIRS) as *const v128)
                } else {
                    i8x16_splat(0)
                };
                // 16-bit lane j of s0 holds column j's (k0, k1), of s1 its (k2, k3).
                let lo = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(s0, s1);
                let hi = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(s0, s1);
                v128_store(d.add(q * PANEL_QUAD) as *mut v128, v128_xor(lo, offset));
                v128_store(d.add(q * PANEL_QUAD + 16) as *mut v128, v128_xor(hi, offset));
            }
        }
    }
}

/// Runs `f` on a scratch buffer of `len` bytes, kept for the next call (the engine is
/// single-threaded per instance, so one per thread is one per engine).
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    // Taken out, not borrowed, so a nested call (there is none today) would allocate its own.
    let mut buf = SCRATCH.with_borrow_mut(std::mem::take);
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with_borrow_mut(|s| *s = buf);
    r
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn probe_expects_exact_unsigned_sums() {
        // The lanes a saturating or signed engine gets wrong, written out.
        assert_eq!(probe_expected(), [7 - 4 * 128 * 255, -7 + 4 * 127 * 255, 100_000 + 200 - 200 + 9 - 1000, -100_000 - 127 * 129 + 64 * 128 + 5]);
    }

    /// The probe's answer holds for random operands: where it finds the exact unsigned sums,
    /// every dot is exact (the GEMM's tiles rely on that); where it does not, some operand
    /// of its own tells the engine apart, and the answer is kept.
    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    #[test]
    fn probe_answer_holds_for_random_operands() {
        let exact = unsigned_dot();
        assert_eq!(exact, unsigned_dot(), "the probe's answer is kept");
        if !exact {
            return;
        }
        let mut rng = crate::test_rng::Rng(0xd07);
        for _ in 0..2000 {
            let a: [i8; 16] = rng.i8s(16, -128, 127).try_into().unwrap();
            let b: [u8; 16] = core::array::from_fn(|_| rng.int(0, 255) as u8);
            let c: [i32; 4] = core::array::from_fn(|_| rng.int(-1 << 24, 1 << 24) as i32);
            let want: [i32; 4] = core::array::from_fn(|l| {
                c[l] + (0..4).map(|i| a[4 * l + i] as i32 * b[4 * l + i] as i32).sum::<i32>()
            });
            assert_eq!(relaxed_dot(a, b, c), want, "a {a:?} b {b:?} c {c:?}");
        }
    }

    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    #[test]
    fn quads_from_pairs_matches_the_layouts() {
        let mut rng = crate::test_rng::Rng(0xc4);
        for kc in [0usize, 2, 4, 6, 8, 18] {
            for panels in [1usize, 3] {
                let src = rng.i8s(panels * kc * 8, -128, 127);
                let quads = kc.div_ceil(4);
                let mut dst = vec![0x55u8; panels * quads * 32];
                quads_from_pairs(&src, kc, &mut dst);
                for i in 0..panels {
                    for p in 0..quads * 4 {
                        for j in 0..8 {
                            let want = if p < kc {
                                (src[i * kc * 8 + (p / 2) * 16 + j * 2 + p % 2] as i32 + 128) as u8
                            } else {
                                128
                            };
                            let got = dst[i * quads * 32 + (p / 4) * 32 + j * 4 + p % 4];
                            assert_eq!(got, want, "kc {kc} panel {i} k {p} column {j}");
                        }
                    }
                }
            }
        }
    }
}
