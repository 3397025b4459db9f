//! FP32 matrix multiplication: `C = act(A·B + bias)` on prepacked operands.
//!
//! # Contract
//! - `A` is `m x k`, `B` is `k x n`, `C` is `m x n`, all row-major with an explicit row stride.
//!   `C` is overwritten; nothing outside its `m x n` region is written, also for edge tiles.
//! - Both operands are packed first. `PackedA` holds `MR`-row panels, k-major inside a panel:
//!   `panel[p * MR + r] = A[i * MR + r][p]`. `PackedB` holds `NR`-column panels:
//!   `panel[p * NR + c] = B[p][j * NR + c]`. Rows/columns past `m`/`n` are zero.
//!   `pack_b_panels` and `gemm_panels` work on that layout in plain slices, for the conv kernels
//!   that pack blocks of `B` (or write im2col columns) into their scratch buffer.
//! - Each output is `bias + Σ_p A[r][p]·B[p][c]`, accumulated in f32 in increasing `p` with a
//!   separate multiply and add (no FMA), so the scalar and SIMD128 microkernels agree bit for bit.
//!   `Relu` and `Clip` are applied as a clamp in the microkernel; any other activation by
//!   `Activation::apply` on the finished tile.
//!
//! # Kernels
//! `f32_gemm_minmax_4x8_scalar` (portable; fixed-size accumulators that LLVM keeps in vector
//! registers) and `f32_gemm_minmax_4x8_simd128` (wasm32 with `simd128`) share one signature; the
//! build picks one as `f32_gemm_minmax_4x8`. The simd128 tile is 8 accumulators of f32x4: each
//! k-step loads two B vectors, splats four A values and issues 8 multiplies and 8 adds.
//!
//! # Tests
//! Against an f64 reference on sizes around the tile, with strides, both biases and every
//! activation; on wasm32 the simd128 microkernel is also compared bit for bit with the scalar one.

use super::Activation;

/// Rows of the microkernel tile (rows of an `A` panel).
pub const MR: usize = 4;
/// Columns of the microkernel tile (columns of a `B` panel).
pub const NR: usize = 8;

/// When all of packed `A` fits this many floats (~256 KiB, a typical L2), the driver walks
/// `B` panels in the outer loop: each `B` panel stays in L1 while `A` streams from L2. A bigger
/// `A` (1x1 convs with thousands of input channels) keeps one `A` panel in L1 instead.
const A_STREAM_BUDGET: usize = 64 * 1024;

/// `A` packed into `MR`-row panels (see the module contract).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs row-major `a` (`m x k`, row stride `lda`).
    pub fn pack(a: &[f32], m: usize, k: usize, lda: usize) -> PackedA {
        let mut packed = PackedA::default();
        packed.repack_from(a, m, k, lda);
        packed
    }

    /// Like `pack`, reusing this value's allocation.
    pub fn repack_from(&mut self, a: &[f32], m: usize, k: usize, lda: usize) {
        check_matrix("A", a.len(), m, k, lda);
        self.m = m;
        self.k = k;
        // Every element is overwritten below, so stale contents need no clearing.
        self.data.resize(m.div_ceil(MR) * MR * k, 0.0);
        if k == 0 {
            return;
        }
        for (i, panel) in self.data.chunks_exact_mut(MR * k).enumerate() {
            let row = i * MR;
            interleave_rows::<MR>(panel, &a[row * lda..], MR.min(m - row), k, lda);
        }
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }
}

/// `B` packed into `NR`-column panels (see the module contract).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs row-major `b` (`k x n`, row stride `ldb`).
    pub fn pack(b: &[f32], k: usize, n: usize, ldb: usize) -> PackedB {
        let mut packed = PackedB::default();
        packed.repack_from(b, k, n, ldb);
        packed
    }

    /// Packs `B` given as its transpose `bt` (`n x k`, row stride `ldbt`), the layout of ONNX
    /// `Gemm` weights with `transB = 1` and of `MatMul` weights read column by column.
    pub fn pack_transposed(bt: &[f32], k: usize, n: usize, ldbt: usize) -> PackedB {
        let mut packed = PackedB::default();
        packed.repack_transposed_from(bt, k, n, ldbt);
        packed
    }

    /// Like `pack_transposed`, reusing this value's allocation: `B` whose columns are
    /// contiguous, such as `X_gᵀ` in a weight gradient `dz_g · X_gᵀ` (`train::ops::conv`).
    pub fn repack_transposed_from(&mut self, bt: &[f32], k: usize, n: usize, ldbt: usize) {
        check_matrix("B^T", bt.len(), n, k, ldbt);
        self.k = k;
        self.n = n;
        self.data.resize(packed_b_len(k, n), 0.0);
        if k == 0 {
            return;
        }
        for (j, panel) in self.data.chunks_exact_mut(NR * k).enumerate() {
            let col = j * NR;
            interleave_rows::<NR>(panel, &bt[col * ldbt..], NR.min(n - col), k, ldbt);
        }
    }

    /// Like `pack`, reusing this value's allocation: the per-call packing of the hot path.
    pub fn repack_from(&mut self, b: &[f32], k: usize, n: usize, ldb: usize) {
        self.k = k;
        self.n = n;
        // Every element is overwritten by `pack_b_panels`, so stale contents need no clearing.
        self.data.resize(packed_b_len(k, n), 0.0);
        pack_b_panels(&mut self.data, b, k, n, ldb);
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// The bias added to every output before the activation.
#[derive(Clone, Copy, Debug)]
pub enum GemmBias<'a> {
    None,
    /// One value per row of `C` (per output channel of a convolution); length `>= m`.
    PerRow(&'a [f32]),
    /// One value per column of `C` (per output feature of a fully connected layer); length `>= n`.
    PerCol(&'a [f32]),
}

/// `C[r][c] = act(Σ_p A[r][p]·B[p][c] + bias)` for `r < a.m()`, `c < b.n()`; `C` is row-major
/// with row stride `ldc` and only its `m x n` region is written.
pub fn gemm(a: &PackedA, b: &PackedB, c: &mut [f32], ldc: usize, bias: GemmBias, act: Activation) {
    assert_eq!(
        a.k, b.k,
        "gemm: A is {}x{} but B is {}x{}",
        a.m, a.k, b.k, b.n
    );
    gemm_panels(a, &b.data, b.n, c, ldc, bias, act);
}

/// The number of floats of a packed `k x n` `B`.
pub(super) fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Packs row-major `b` (`k x n`, row stride `ldb`) into `dst`, which has exactly
/// `packed_b_len(k, n)` floats; every float of `dst` is written.
pub(super) fn pack_b_panels(dst: &mut [f32], b: &[f32], k: usize, n: usize, ldb: usize) {
    check_matrix("B", b.len(), k, n, ldb);
    assert_eq!(
        dst.len(),
        packed_b_len(k, n),
        "pack_b_panels: destination size"
    );
    if k == 0 {
        return;
    }
    // Panel by panel, so writes are sequential; the k source rows of a panel are read 32 bytes
    // at a time and the other half of each cache line is read by the next panel, still in L1.
    for (j, panel) in dst.chunks_exact_mut(NR * k).enumerate() {
        let col = j * NR;
        let cols = NR.min(n - col);
        for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
            row[..cols].copy_from_slice(&b[p * ldb + col..][..cols]);
            row[cols..].fill(0.0);
        }
    }
}

/// One panel from `rows` (at most `R`) rows of `src` (`k` values each, row stride `ld`):
/// `panel[p * R + r] = src[r * ld + p]`, and 0 for `r >= rows`. The layout of an `A` panel
/// (`R = MR`, from `A`'s rows) and of a `B` panel given `Bᵀ` (`R = NR`, from its rows): both
/// are transposes of `R x k` blocks, which SIMD128 does 4x4 at a time with shuffles (a scalar
/// element at a time cost more than the GEMM itself in weight gradients, where `k` is the
/// pixel count and the output small). Pure data movement: every build packs the same panel.
fn interleave_rows<const R: usize>(panel: &mut [f32], src: &[f32], rows: usize, k: usize, ld: usize) {
    let panel = &mut panel[..R * k];
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if rows == R && R % 4 == 0 {
        done = k / 4 * 4;
        interleave_rows_4x4_simd128::<R>(panel, src, done, ld);
    }
    for p in done..k {
        for r in 0..R {
            panel[p * R + r] = if r < rows { src[r * ld + p] } else { 0.0 };
        }
    }
}

/// The first `k` (a multiple of 4) columns of [`interleave_rows`] for a full panel, by 4x4
/// transposes: rows `4g..4g+4`, columns `p..p+4` become `panel[(p + q) * R + 4g..][..4]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn interleave_rows_4x4_simd128<const R: usize>(panel: &mut [f32], src: &[f32], k: usize, ld: usize) {
    use core::arch::wasm32::*;
    assert!(k % 4 == 0 && R % 4 == 0 && panel.len() >= R * k && (k == 0 || src.len() >= (R - 1) * ld + k));
    let load = |i: usize| -> v128 {
        let v = &src[i..i + 4];
        // SAFETY: `v` holds 4 floats; v128.load needs no alignment.
        unsafe { v128_load(v.as_ptr() as *const v128) }
    };
    for g in 0..R / 4 {
        let row = 4 * g * ld;
        for p in (0..k).step_by(4) {
            let (a, b, c, d) = (load(row + p), load(row + ld + p), load(row + 2 * ld + p), load(row + 3 * ld + p));
            let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b); // a0 b0 a1 b1
            let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b); // a2 b2 a3 b3
            let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
            let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
            let columns = [
                i32x4_shuffle::<0, 1, 4, 5>(ab_lo, cd_lo), // a0 b0 c0 d0
                i32x4_shuffle::<2, 3, 6, 7>(ab_lo, cd_lo),
                i32x4_shuffle::<0, 1, 4, 5>(ab_hi, cd_hi),
                i32x4_shuffle::<2, 3, 6, 7>(ab_hi, cd_hi),
            ];
            for (q, v) in columns.into_iter().enumerate() {
                let out = &mut panel[(p + q) * R + 4 * g..][..4];
                // SAFETY: `out` holds 4 floats; v128.store needs no alignment.
                unsafe { v128_store(out.as_mut_ptr() as *mut v128, v) };
            }
        }
    }
}

/// `gemm` on a `B` already in packed layout in `b` (`packed_b_len(a.k(), n)` floats).
pub(super) fn gemm_panels(
    a: &PackedA,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
    bias: GemmBias,
    act: Activation,
) {
    let (m, k) = (a.m, a.k);
    assert_eq!(
        b.len(),
        packed_b_len(k, n),
        "gemm: packed B size for k={k}, n={n}"
    );
    check_matrix("C", c.len(), m, n, ldc);
    match bias {
        GemmBias::None => {}
        GemmBias::PerRow(v) => assert!(v.len() >= m, "gemm: {} row biases for m={m}", v.len()),
        GemmBias::PerCol(v) => assert!(v.len() >= n, "gemm: {} column biases for n={n}", v.len()),
    }
    if m == 0 || n == 0 {
        return;
    }
    let (clamp, epilogue) = split_activation(act);

    let mut tile = |i: usize, j: usize| {
        let (row, col) = (i * MR, j * NR);
        let (rows, cols) = (MR.min(m - row), NR.min(n - col));
        let a_panel = &a.data[i * MR * k..][..MR * k];
        let b_panel = &b[j * NR * k..][..NR * k];
        let mut tb = TileBias {
            row: [0.0; MR],
            col: [0.0; NR],
        };
        match bias {
            GemmBias::None => {}
            GemmBias::PerRow(v) => tb.row[..rows].copy_from_slice(&v[row..row + rows]),
            GemmBias::PerCol(v) => tb.col[..cols].copy_from_slice(&v[col..col + cols]),
        }
        let out = &mut c[row * ldc + col..];
        if rows == MR && cols == NR {
            f32_gemm_minmax_4x8(a_panel, b_panel, &tb, clamp, out, ldc);
        } else {
            let mut edge = [0.0; MR * NR];
            f32_gemm_minmax_4x8(a_panel, b_panel, &tb, clamp, &mut edge, NR);
            for r in 0..rows {
                out[r * ldc..][..cols].copy_from_slice(&edge[r * NR..][..cols]);
            }
        }
        if let Some(act) = epilogue {
            (0..rows).for_each(|r| act.apply(&mut out[r * ldc..][..cols]));
        }
    };

    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    if a.data.len() <= A_STREAM_BUDGET {
        for j in 0..n_panels {
            (0..m_panels).for_each(|i| tile(i, j));
        }
    } else {
        for i in 0..m_panels {
            (0..n_panels).for_each(|j| tile(i, j));
        }
    }
}

/// Splits an activation into the clamp `(lo, hi)` that a "minmax" microkernel applies to its
/// accumulators as `x.max(lo).min(hi)` (`Relu` and `Clip`, by their definition), and the
/// activation left to apply with `Activation::apply` afterwards (all others).
pub(super) fn split_activation(act: Activation) -> (Option<(f32, f32)>, Option<Activation>) {
    match act {
        Activation::Identity => (None, None),
        Activation::Relu => (Some((0.0, f32::INFINITY)), None),
        Activation::Clip { min, max } => (Some((min, max)), None),
        other => (None, Some(other)),
    }
}

/// Panics unless a `rows x cols` row-major matrix with row stride `ld` fits in `len` floats.
fn check_matrix(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        rows == 1 || ld >= cols,
        "{name}: row stride {ld} < width {cols}"
    );
    let needed = (rows - 1) * ld + cols;
    assert!(
        len >= needed,
        "{name}: {rows}x{cols} with stride {ld} needs {needed} floats, got {len}"
    );
}

/// The bias of one tile: `row[r] + col[c]` initialises accumulator `(r, c)`. At most one of the
/// two is non-zero, so the sum is exactly the bias.
struct TileBias {
    row: [f32; MR],
    col: [f32; NR],
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use f32_gemm_minmax_4x8_scalar as f32_gemm_minmax_4x8;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use f32_gemm_minmax_4x8_simd128 as f32_gemm_minmax_4x8;

/// One `MR x NR` tile: `c[r * ldc + j] = clamp(bias(r, j) + Σ_p a[p * MR + r] · b[p * NR + j])`
/// over the `k = a.len() / MR` steps of an `A` panel and a `B` panel. `clamp` is `(lo, hi)`
/// applied as `x.max(lo).min(hi)`, the definition of `Relu` and `Clip`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn f32_gemm_minmax_4x8_scalar(
    a: &[f32],
    b: &[f32],
    bias: &TileBias,
    clamp: Option<(f32, f32)>,
    c: &mut [f32],
    ldc: usize,
) {
    let k = a.len() / MR;
    assert!(a.len() == k * MR && b.len() == k * NR && c.len() >= (MR - 1) * ldc + NR);
    let mut acc = [[0.0f32; NR]; MR];
    for (r, acc_row) in acc.iter_mut().enumerate() {
        for (j, v) in acc_row.iter_mut().enumerate() {
            *v = bias.row[r] + bias.col[j];
        }
    }
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc_row, &av) in acc.iter_mut().zip(ap) {
            for (v, &bv) in acc_row.iter_mut().zip(bp) {
                *v += av * bv;
            }
        }
    }
    if let Some((lo, hi)) = clamp {
        acc.iter_mut()
            .flatten()
            .for_each(|v| *v = v.max(lo).min(hi));
    }
    for (r, acc_row) in acc.iter().enumerate() {
        c[r * ldc..][..NR].copy_from_slice(acc_row);
    }
}

/// The simd128 version of `f32_gemm_minmax_4x8_scalar`, bit for bit the same results.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn f32_gemm_minmax_4x8_simd128(
    a: &[f32],
    b: &[f32],
    bias: &TileBias,
    clamp: Option<(f32, f32)>,
    c: &mut [f32],
    ldc: usize,
) {
    use core::arch::wasm32::*;
    let k = a.len() / MR;
    assert!(a.len() == k * MR && b.len() == k * NR && c.len() >= (MR - 1) * ldc + NR);
    // SAFETY: every load reads a[p * MR .. p * MR + MR] or b[p * NR .. p * NR + NR] for p < k,
    // and every store writes c[r * ldc .. r * ldc + NR] for r < MR, all in bounds per the assert.
    // v128 loads and stores have no alignment requirement.
    unsafe {
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        let col_lo = v128_load(bias.col.as_ptr() as *const v128);
        let col_hi = v128_load(bias.col.as_ptr().add(4) as *const v128);
        let mut acc = [[col_lo, col_hi]; MR];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let row = f32x4_splat(bias.row[r]);
            acc_row[0] = f32x4_add(row, acc_row[0]);
            acc_row[1] = f32x4_add(row, acc_row[1]);
        }
        for _ in 0..k {
            let b_lo = v128_load(bp as *const v128);
            let b_hi = v128_load(bp.add(4) as *const v128);
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let av = v128_load32_splat(ap.add(r) as *const u32);
                acc_row[0] = f32x4_add(acc_row[0], f32x4_mul(av, b_lo));
                acc_row[1] = f32x4_add(acc_row[1], f32x4_mul(av, b_hi));
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        if let Some((lo, hi)) = clamp {
            // pmax(lo, x) = lo < x ? x : lo and pmin(hi, y) = y < hi ? y : hi: exactly
            // x.max(lo).min(hi), NaN included (f32::max returns the non-NaN operand).
            let (lo, hi) = (f32x4_splat(lo), f32x4_splat(hi));
            for v in acc.iter_mut().flatten() {
                *v = f32x4_pmin(hi, f32x4_pmax(lo, *v));
            }
        }
        let cp = c.as_mut_ptr();
        for (r, acc_row) in acc.iter().enumerate() {
            v128_store(cp.add(r * ldc) as *mut v128, acc_row[0]);
            v128_store(cp.add(r * ldc + 4) as *mut v128, acc_row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// xorshift64*: deterministic, dependency-free test data.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.f32()).collect()
        }
    }

    /// Both packings against their definition (module contract), on every row count of a
    /// panel, widths around the 4-column SIMD128 step, row strides past the width, and
    /// reusing a bigger buffer (stale values must not survive).
    #[test]
    fn packing_is_the_panel_layout() {
        let mut rng = Rng(0x51ed);
        let (mut pa, mut pb, mut pbt) = (PackedA::default(), PackedB::default(), PackedB::default());
        for (m, k, ld_pad) in [(1, 1, 0), (3, 5, 2), (4, 4, 0), (5, 7, 1), (8, 8, 3), (9, 12, 0), (13, 3, 4), (17, 16, 1), (2, 0, 0)] {
            let ld = k + ld_pad;
            let src = rng.vec(m * ld);
            // A (m x k) and B given transposed (n = m columns of k values).
            pa.repack_from(&src, m, k, ld);
            pbt.repack_transposed_from(&src, k, m, ld);
            assert_eq!((pa.m(), pa.k(), pbt.k(), pbt.n()), (m, k, k, m));
            for (panel_rows, data) in [(MR, &pa.data), (NR, &pbt.data)] {
                assert_eq!(data.len(), m.div_ceil(panel_rows) * panel_rows * k, "m={m} k={k}");
                for (i, panel) in data.chunks(panel_rows * k.max(1)).enumerate() {
                    for p in 0..k {
                        for r in 0..panel_rows {
                            let row = i * panel_rows + r;
                            let want = if row < m { src[row * ld + p] } else { 0.0 };
                            assert_eq!(panel[p * panel_rows + r].to_bits(), want.to_bits(), "R={panel_rows} m={m} k={k} ld={ld} panel {i} p={p} r={r}");
                        }
                    }
                }
            }
            assert_eq!(pbt, PackedB::pack_transposed(&src, k, m, ld));
            // The same B given as is: one packed form.
            let b: Vec<f32> = (0..k * m).map(|i| src[(i % m) * ld + i / m]).collect();
            pb.repack_from(&b, k, m, m);
            assert_eq!(pb, pbt, "m={m} k={k}");
        }
    }

    const ACTIVATIONS: [Activation; 9] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Clip {
            min: -0.5,
            max: 0.75,
        },
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Sigmoid,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::HardSwish,
        Activation::Silu,
        Activation::Tanh,
    ];

    fn act_f64(act: Activation, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match act {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min as f64).min(max as f64),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha as f64 * x
                } else {
                    x
                }
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoid { alpha, beta } => {
                (alpha as f64 * x + beta as f64).clamp(0.0, 1.0)
            }
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::Silu => x * sigmoid(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// One test case: row-major A, B, strides, bias and activation.
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        lda: usize,
        ldb: usize,
        ldc: usize,
        a: Vec<f32>,
        b: Vec<f32>,
        bias: Vec<f32>,
        bias_kind: u8, // 0 none, 1 per row, 2 per column
        act: Activation,
    }

    impl Case {
        fn new(
            rng: &mut Rng,
            m: usize,
            n: usize,
            k: usize,
            pad: usize,
            bias_kind: u8,
            act: Activation,
        ) -> Case {
            let (lda, ldb, ldc) = (k + pad, n + 2 * pad, n + 3 * pad);
            Case {
                m,
                n,
                k,
                lda,
                ldb,
                ldc,
                a: rng.vec(m * lda),
                b: rng.vec(k * ldb),
                bias: rng.vec(m.max(n)),
                bias_kind,
                act,
            }
        }

        fn bias(&self) -> GemmBias<'_> {
            match self.bias_kind {
                0 => GemmBias::None,
                1 => GemmBias::PerRow(&self.bias[..self.m]),
                _ => GemmBias::PerCol(&self.bias[..self.n]),
            }
        }

        /// Runs `gemm` on a C prefilled with a sentinel, so writes outside m x n show.
        fn run(&self) -> Vec<f32> {
            let a = PackedA::pack(&self.a, self.m, self.k, self.lda);
            let b = PackedB::pack(&self.b, self.k, self.n, self.ldb);
            let mut c = vec![SENTINEL; self.m * self.ldc + 5];
            gemm(&a, &b, &mut c, self.ldc, self.bias(), self.act);
            c
        }

        /// Checks `c` against an f64 reference within 1e-5 relative to the sum of magnitudes
        /// of the terms, and that every float outside the m x n region is untouched.
        fn check(&self, c: &[f32], what: &str) {
            for (idx, &got) in c.iter().enumerate() {
                let (r, col) = (idx / self.ldc, idx % self.ldc);
                if r >= self.m || col >= self.n {
                    assert!(
                        got.to_bits() == SENTINEL.to_bits(),
                        "{what}: wrote C[{r}][{col}]"
                    );
                    continue;
                }
                let bias = match self.bias_kind {
                    0 => 0.0,
                    1 => self.bias[r] as f64,
                    _ => self.bias[col] as f64,
                };
                let (mut sum, mut mag) = (bias, bias.abs());
                for p in 0..self.k {
                    let t = self.a[r * self.lda + p] as f64 * self.b[p * self.ldb + col] as f64;
                    sum += t;
                    mag += t.abs();
                }
                let want = act_f64(self.act, sum);
                let tol = 1e-5 * (mag + want.abs()) + 1e-30;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{what}: C[{r}][{col}] = {got}, want {want} (tol {tol})"
                );
            }
        }
    }

    const SENTINEL: f32 = -12345.0;

    #[test]
    fn sizes_around_the_tile() {
        let seed = 0x9e37_79b9_7f4a_7c15;
        let mut rng = Rng(seed);
        let sizes = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31];
        for &m in &sizes {
            for &n in &sizes {
                for k in [0, 1, 3, 4, 7, 8, 13, 17, 32] {
                    let case = Case::new(&mut rng, m, n, k, 0, 0, Activation::Identity);
                    case.check(&case.run(), &format!("seed {seed:#x} m={m} n={n} k={k}"));
                }
            }
        }
    }

    #[test]
    fn strides_bias_and_activations() {
        let seed = 0x1234_5678_9abc_def1;
        let mut rng = Rng(seed);
        for (m, n, k) in [
            (1, 1, 1),
            (4, 8, 16),
            (7, 13, 31),
            (13, 17, 5),
            (9, 33, 64),
            (3, 1000, 3),
        ] {
            for pad in [0, 1, 5] {
                for bias_kind in 0..3 {
                    for act in ACTIVATIONS {
                        let case = Case::new(&mut rng, m, n, k, pad, bias_kind, act);
                        let what = format!(
                            "seed {seed:#x} m={m} n={n} k={k} pad={pad} bias={bias_kind} {act:?}"
                        );
                        case.check(&case.run(), &what);
                    }
                }
            }
        }
    }

    #[test]
    fn large_a_takes_the_a_outer_loop_order() {
        let seed = 77;
        let mut rng = Rng(seed);
        // 40 x 2000 floats exceeds A_STREAM_BUDGET.
        let case = Case::new(&mut rng, 40, 19, 2000, 1, 1, Activation::Relu);
        assert!(case.m * case.k > A_STREAM_BUDGET);
        case.check(&case.run(), &format!("seed {seed} large A"));
    }

    #[test]
    fn transposed_and_repacked_b_match_pack() {
        let seed = 5;
        let mut rng = Rng(seed);
        let mut reused = PackedB::pack(&rng.vec(64 * 64), 64, 64, 64);
        let capacity = reused.data.capacity();
        for (k, n) in [(1, 1), (7, 9), (17, 8), (3, 31), (0, 5)] {
            let ldb = n + 3;
            let b = rng.vec(k * ldb);
            let packed = PackedB::pack(&b, k, n, ldb);
            let ldbt = k + 2;
            let mut bt = vec![0.0; n * ldbt];
            for p in 0..k {
                for j in 0..n {
                    bt[j * ldbt + p] = b[p * ldb + j];
                }
            }
            assert_eq!(
                PackedB::pack_transposed(&bt, k, n, ldbt),
                packed,
                "seed {seed} k={k} n={n}"
            );
            reused.repack_from(&b, k, n, ldb);
            assert_eq!(reused, packed, "seed {seed} k={k} n={n}");
            assert_eq!((packed.k(), packed.n()), (k, n));
        }
        assert_eq!(reused.data.capacity(), capacity, "repack_from reallocated");
    }

    #[test]
    fn repacked_a_matches_pack() {
        let mut rng = Rng(11);
        let mut reused = PackedA::pack(&rng.vec(16 * 16), 16, 16, 16);
        for (m, k) in [(1, 3), (5, 7), (8, 2)] {
            let a = rng.vec(m * (k + 1));
            let packed = PackedA::pack(&a, m, k, k + 1);
            reused.repack_from(&a, m, k, k + 1);
            assert_eq!(reused, packed, "m={m} k={k}");
            assert_eq!((packed.m(), packed.k()), (m, k));
        }
    }

    #[test]
    #[should_panic(expected = "gemm: A is")]
    fn mismatched_k_panics() {
        let a = PackedA::pack(&[1.0; 6], 2, 3, 3);
        let b = PackedB::pack(&[1.0; 8], 4, 2, 2);
        gemm(
            &a,
            &b,
            &mut [0.0; 4],
            2,
            GemmBias::None,
            Activation::Identity,
        );
    }

    #[cfg(target_arch = "wasm32")]
    #[test]
    fn simd128_is_compiled_in() {
        assert!(
            cfg!(target_feature = "simd128"),
            "wasm tests must be built with +simd128"
        );
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_microkernel_matches_scalar_bit_for_bit() {
        let mut rng = Rng(3);
        for k in [0, 1, 2, 5, 64, 301] {
            for clamp in [None, Some((0.0, f32::INFINITY)), Some((-0.1, 0.2))] {
                let (a, b) = (rng.vec(k * MR), rng.vec(k * NR));
                let mut bias = TileBias {
                    row: [0.0; MR],
                    col: [0.0; NR],
                };
                bias.row.iter_mut().for_each(|v| *v = rng.f32());
                bias.col.iter_mut().for_each(|v| *v = rng.f32());
                let ldc = NR + 3;
                let mut want = vec![0.0; MR * ldc];
                let mut got = want.clone();
                f32_gemm_minmax_4x8_scalar(&a, &b, &bias, clamp, &mut want, ldc);
                f32_gemm_minmax_4x8_simd128(&a, &b, &bias, clamp, &mut got, ldc);
                let (want, got): (Vec<u32>, Vec<u32>) = (
                    want.iter().map(|v| v.to_bits()).collect(),
                    got.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(got, want, "k={k} clamp={clamp:?}");
            }
        }
    }

    /// `cargo test --release -- --ignored --nocapture gemm_gflops`
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore]
    fn gemm_gflops() {
        let mut rng = Rng(1);
        // EfficientNet-Lite0-like 1x1 convolutions (m = out_c, k = in_c, n = h * w) and its FC.
        for (m, k, n) in [
            (96, 16, 12544),
            (24, 96, 3136),
            (144, 24, 3136),
            (192, 1152, 49),
            (1, 1280, 1000),
        ] {
            let a = PackedA::pack(&rng.vec(m * k), m, k, k);
            let b_src = rng.vec(k * n);
            let mut b = PackedB::pack(&b_src, k, n, n);
            let mut c = vec![0.0; m * n];
            let bias = rng.vec(m);
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
            let start = std::time::Instant::now();
            for _ in 0..reps {
                b.repack_from(&b_src, k, n, n);
                gemm(
                    &a,
                    &b,
                    &mut c,
                    n,
                    GemmBias::PerRow(&bias),
                    Activation::Clip { min: 0.0, max: 6.0 },
                );
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "m={m:4} k={k:4} n={n:5}: {:6.3} ms/call incl. B pack, {:5.1} GFLOP/s",
                secs * 1e3,
                2.0 * (m * n * k) as f64 / secs / 1e9
            );
        }
    }
}
