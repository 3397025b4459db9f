//! `C += A · Bᵀ` for row-major `A` (`m x k`) and `B` (`n x k`): every output is the dot product
//! of a row of `A` and a row of `B`.
//!
//! The weight gradient of a pointwise convolution, `dW += dz · Xᵀ`, has this form with `k` the
//! pixels (12544 in EfficientNet-Lite0's first layers) and `C` small (channels by channels). A
//! packed GEMM (`kernels::gemm`) has to transpose both operands into panels for that, block by
//! block of the reduction, and writes and adds its small output once per block; here the rows
//! are read as they lie, four pixels per vector, and a tile of `MR x NR` outputs keeps one
//! accumulator vector each for the whole block (8 accumulators and 6 loaded vectors: 14 of the
//! 16 vector registers of x86-64).
//!
//! Summation order, the same in the scalar and the SIMD128 kernel (bit for bit): the reduction
//! is cut into blocks of [`block_len`] (a multiple of 4, the same in every build); within a
//! block, lane `l` sums the products at `p ≡ l (mod 4)` below the block's last multiple of 4 in
//! increasing `p`, the lanes add as `(l0 + l1) + (l2 + l3)`, the remaining products add to that
//! in increasing `p`, and the block's sum adds into `C`.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32::*;

/// Rows of `A` per tile.
const MR: usize = 4;
/// Rows of `B` per tile.
const NR: usize = 2;

/// The reduction's block for `n` rows of `B`: the tiles of `A`'s rows each read the whole block
/// of `B`, which should stay in L1 (about 32 KiB), and at least 64 products per output amortise
/// the lanes' final sum.
pub fn block_len(n: usize) -> usize {
    ((8 * 1024 / n.max(1)) / 4 * 4).clamp(64, 2048)
}

/// `C[i][j] += Σ_p A[i][p] · B[j][p]` for `i < m`, `j < n`, `p < k`; `A`, `B` and `C` row-major
/// with row strides `lda`, `ldb` and `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn f32_gemm_nt_acc(a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, n: usize, k: usize, c: &mut [f32], ldc: usize) {
    run::<true>(a, lda, b, ldb, m, n, k, c, ldc);
}

fn check(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    if rows > 0 && cols > 0 {
        assert!(ld >= cols && len >= (rows - 1) * ld + cols, "f32_gemm_nt_acc: {name} ({len} floats) is not {rows} rows of {cols} at stride {ld}");
    }
}

/// The driver; `SIMD` picks the SIMD128 tiles where the build has them (the scalar ones
/// otherwise), so that a test can run both.
#[allow(clippy::too_many_arguments)]
fn run<const SIMD: bool>(a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, n: usize, k: usize, c: &mut [f32], ldc: usize) {
    check("A", a.len(), m, k, lda);
    check("B", b.len(), n, k, ldb);
    check("C", c.len(), m, n, ldc);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let kc = block_len(n);
    for p0 in (0..k).step_by(kc) {
        let len = kc.min(k - p0);
        for i in (0..m).step_by(MR) {
            let rows = MR.min(m - i);
            let a = &a[i * lda + p0..];
            for j in (0..n).step_by(NR) {
                let cols = NR.min(n - j);
                let b = &b[j * ldb + p0..];
                let mut sums = [[0f32; NR]; MR];
                macro_rules! tile {
                    ($r:literal, $c:literal) => {{
                        let s = tile::<$r, $c, SIMD>(a, lda, b, ldb, len);
                        for r in 0..$r {
                            sums[r][..$c].copy_from_slice(&s[r]);
                        }
                    }};
                }
                match (rows, cols) {
                    (4, 2) => tile!(4, 2),
                    (4, _) => tile!(4, 1),
                    (3, 2) => tile!(3, 2),
                    (3, _) => tile!(3, 1),
                    (2, 2) => tile!(2, 2),
                    (2, _) => tile!(2, 1),
                    (_, 2) => tile!(1, 2),
                    _ => tile!(1, 1),
                }
                for (r, row) in sums[..rows].iter().enumerate() {
                    for (out, s) in c[(i + r) * ldc + j..][..cols].iter_mut().zip(row) {
                        *out += s;
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn tile<const R: usize, const C: usize, const SIMD: bool>(a: &[f32], lda: usize, b: &[f32], ldb: usize, len: usize) -> [[f32; C]; R] {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if SIMD {
        return f32_gemm_nt_simd128::<R, C>(a, lda, b, ldb, len);
    }
    f32_gemm_nt_scalar::<R, C>(a, lda, b, ldb, len)
}

/// The portable tile, the definition of the summation order: `R` rows of `a` (stride `lda`)
/// against `C` rows of `b` (stride `ldb`), `len` products each.
fn f32_gemm_nt_scalar<const R: usize, const C: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, len: usize) -> [[f32; C]; R] {
    let a: [&[f32]; R] = std::array::from_fn(|r| &a[r * lda..][..len]);
    let b: [&[f32]; C] = std::array::from_fn(|c| &b[c * ldb..][..len]);
    let body = len / 4 * 4;
    let mut acc = [[[0f32; 4]; C]; R];
    let mut a4 = a.map(|r| r[..body].chunks_exact(4));
    let mut b4 = b.map(|r| r[..body].chunks_exact(4));
    for _ in 0..body / 4 {
        let bv: [&[f32]; C] = std::array::from_fn(|c| b4[c].next().unwrap());
        for r in 0..R {
            let av = a4[r].next().unwrap();
            for c in 0..C {
                for l in 0..4 {
                    acc[r][c][l] += av[l] * bv[c][l];
                }
            }
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let s = &acc[r][c];
            let mut t = (s[0] + s[1]) + (s[2] + s[3]);
            for p in body..len {
                t += a[r][p] * b[c][p];
            }
            t
        })
    })
}

/// [`f32_gemm_nt_scalar`] four products at a time, bit for bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn f32_gemm_nt_simd128<const R: usize, const C: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, len: usize) -> [[f32; C]; R] {
    let a: [&[f32]; R] = std::array::from_fn(|r| &a[r * lda..][..len]);
    let b: [&[f32]; C] = std::array::from_fn(|c| &b[c * ldb..][..len]);
    let body = len / 4 * 4;
    let mut acc = [[f32x4_splat(0.0); C]; R];
    // SAFETY: every load is of 4 floats at p + 4 <= body <= len from rows of `len` floats.
    unsafe {
        let ap = a.map(|r| r.as_ptr());
        let bp = b.map(|r| r.as_ptr());
        let mut p = 0;
        while p < body {
            let bv: [v128; C] = std::array::from_fn(|c| v128_load(bp[c].add(p) as *const v128));
            for r in 0..R {
                let av = v128_load(ap[r].add(p) as *const v128);
                for c in 0..C {
                    acc[r][c] = f32x4_add(acc[r][c], f32x4_mul(av, bv[c]));
                }
            }
            p += 4;
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let s = acc[r][c];
            let mut t = (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)) + (f32x4_extract_lane::<2>(s) + f32x4_extract_lane::<3>(s));
            for p in body..len {
                t += a[r][p] * b[c][p];
            }
            t
        })
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.gaussian() as f32).collect()
    }

    /// Sizes around the tile (4 x 2), the lanes (4) and the reduction's blocks, with strides.
    fn cases() -> Vec<(usize, usize, usize, usize, usize, usize)> {
        let mut v = Vec::new();
        for (m, n) in [(1, 1), (3, 1), (4, 2), (5, 3), (7, 5), (9, 4), (16, 96)] {
            for k in [1, 3, 4, 5, 63, 64, 67, block_len(n), block_len(n) + 1, 2 * block_len(n) + 6] {
                v.push((m, n, k, k + (m % 3), k + 2 * (n % 2), n + 1));
            }
        }
        v
    }

    #[test]
    fn sums_are_the_dot_products_of_rows() {
        let mut rng = Rng::seeded(7);
        for (m, n, k, lda, ldb, ldc) in cases() {
            let a = random(&mut rng, (m - 1) * lda + k);
            let b = random(&mut rng, (n - 1) * ldb + k);
            let c0 = random(&mut rng, (m - 1) * ldc + n);
            let mut c = c0.clone();
            f32_gemm_nt_acc(&a, lda, &b, ldb, m, n, k, &mut c, ldc);
            for i in 0..m {
                for j in 0..ldc {
                    let got = c.get(i * ldc + j).copied();
                    if j >= n {
                        // Outside the m x n region nothing is written.
                        assert_eq!(got, c0.get(i * ldc + j).copied(), "{m}x{n}x{k}: C[{i}][{j}] was written");
                        continue;
                    }
                    let dot: f64 = (0..k).map(|p| a[i * lda + p] as f64 * b[j * ldb + p] as f64).sum();
                    let scale: f64 = (0..k).map(|p| (a[i * lda + p] as f64 * b[j * ldb + p] as f64).abs()).sum::<f64>() + c0[i * ldc + j].abs() as f64;
                    let want = c0[i * ldc + j] as f64 + dot;
                    let got = got.unwrap() as f64;
                    assert!((got - want).abs() <= 1e-5 * scale + 1e-6, "{m}x{n}x{k}: C[{i}][{j}] = {got}, want {want}");
                }
            }
        }
    }

    #[test]
    fn the_blocks_follow_the_summation_order() {
        // The order is part of the contract (every build computes the same floats): check the
        // driver against the definition written out, on a reduction of several blocks.
        let mut rng = Rng::seeded(8);
        let (m, n, k) = (5, 3, 2 * block_len(3) + 7);
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, n * k);
        let mut c = vec![0f32; m * n];
        run::<false>(&a, k, &b, k, m, n, k, &mut c, n);
        let kc = block_len(n);
        for i in 0..m {
            for j in 0..n {
                let mut want = 0f32;
                for p0 in (0..k).step_by(kc) {
                    let len = kc.min(k - p0);
                    let body = len / 4 * 4;
                    let lane = |l: usize| (l..body).step_by(4).fold(0f32, |s, p| s + a[i * k + p0 + p] * b[j * k + p0 + p]);
                    let mut t = (lane(0) + lane(1)) + (lane(2) + lane(3));
                    for p in body..len {
                        t += a[i * k + p0 + p] * b[j * k + p0 + p];
                    }
                    want += t;
                }
                assert_eq!(c[i * n + j].to_bits(), want.to_bits(), "C[{i}][{j}]");
            }
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_tiles_match_the_scalar_definition_bit_for_bit() {
        let mut rng = Rng::seeded(9);
        for (m, n, k, lda, ldb, ldc) in cases() {
            let a = random(&mut rng, (m - 1) * lda + k);
            let b = random(&mut rng, (n - 1) * ldb + k);
            let c0 = random(&mut rng, (m - 1) * ldc + n);
            let (mut simd, mut scalar) = (c0.clone(), c0);
            run::<true>(&a, lda, &b, ldb, m, n, k, &mut simd, ldc);
            run::<false>(&a, lda, &b, ldb, m, n, k, &mut scalar, ldc);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&simd), bits(&scalar), "{m}x{n}x{k}");
        }
    }

    #[test]
    #[should_panic(expected = "B (10 floats) is not 3 rows of 4 at stride 4")]
    fn short_operands_are_refused() {
        let mut c = vec![0f32; 6];
        f32_gemm_nt_acc(&[0.0; 8], 4, &[0.0; 10], 4, 2, 3, 4, &mut c, 3);
    }
}
