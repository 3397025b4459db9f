//! Int8 GEMM: `Y = clamp(zy + requant(bias + W·(X - zx)))` on prepacked operands; the engine of
//! the int8 convolutions and of fully connected layers.
//!
//! # Contract
//! - Rows of the product are output channels, columns are pixels (convolutions) or batch rows
//!   (fully connected): `W` is `n x k` (ONNX weight layout, one row per output channel) and is
//!   packed once by [`PackedWeightsQs8`]; `X` is `k x cols` and is packed per call. With that
//!   orientation a convolution writes its NCHW output `[c][pixel]` directly, and each SIMD
//!   accumulator holds one channel, so the per-channel requantization uses the vector shifts of
//!   SIMD128 (which have one shift count per vector, not per lane).
//! - `PackedWeightsQs8` holds `MR`-channel panels, `k` padded to even (`kc`) with zeros, values
//!   widened to i16 so that a pair of k values is one i32 lane to splat:
//!   `panel[(p / 2) * MR * 2 + r * 2 + p % 2] = W[i * MR + r][p]`. Its bias is per channel
//!   `bias[c] - zx · Σ_p W[c][p]` (the zero-point correction), checked at pack time to keep every
//!   accumulator inside i32.
//! - Packed `X` holds `NR`-column panels of i8, pairs of k rows interleaved:
//!   `panel[(p / 2) * NR * 2 + j * 2 + p % 2] = X[p][col + j]`, zero past `k` and `cols`.
//! - Every output is `clamp(zy + rq[c].apply(acc), qmin, qmax)` with the exact i32 accumulator;
//!   nothing outside the output region is written, also for edge tiles.
//!
//! # Kernels
//! `qs8_gemm_minmax_4x8c2_scalar` (portable) and `qs8_gemm_minmax_4x8c2_simd128` (wasm32 with
//! `simd128`) compute a row of 4-channel x 8-column tiles (one weight panel against consecutive
//! X panels) and agree bit for bit. The simd128 tile is 8 i32x4 accumulators; each k pair loads 8
//! columns with `i16x8.load8x8_s` (two vectors), broadcasts each channel's weight pair with
//! `v128.load32_splat` (no shuffle) and issues 8 `i32x4.dot_i16x8_s` (2 MACs per lane) and 8
//! adds: 18 vector operations per 64 MACs, against a peak of 16 for `dot_i16x8` + add. The
//! epilogue requantizes with the channels' [`PreparedRequant`] (when all 4 channels allow it,
//! the exact f64 formula without ties, 8 vector operations per 4 outputs, as for small and
//! moderate depths; else the split-shift formula, about 14), narrows with saturation and
//! stores 8 bytes per row.
//!
//! In the relaxed-SIMD build, where [`relaxed::unsigned_dot`] holds, the full column panels go
//! to `qs8_gemm_minmax_4x8c4_relaxed` instead: the weights packed again in i8 with 4 k values
//! per channel and step (`quads`), X repacked per call from the `c2` panels into 4 k values
//! per column and offset to unsigned (`relaxed::quads_from_pairs`), and per step 8
//! `i32x4.relaxed_dot_i8x16_i7x16_add_s` (16 MACs each, the add included): 14 vector
//! operations per 128 MACs. The same accumulators, so the same epilogue and outputs.
//!
//! The accumulation of a tile is one function (`tile_4x8c2_*`, `qs8_gemm_4x1c2_*`) and what
//! happens to the accumulators is the driver's [`TileOutput`]: requantized to int8 (the
//! engine), or stored as they are in i32 (`qs8_gemm_4x8c2`: the simulation QAT trains on needs
//! the values before rounding, and takes them from the same kernels).
//!
//! The driver walks weight panel by weight panel (each stays in L1) over all the columns of the
//! packed X, which the convolutions size to stay in cache; the microkernel loops over the full
//! column panels itself, so the per-tile cost is the tile's work, and its 4 output rows are
//! written sequentially. A partial column panel of up to `NARROW_MAX` columns (the 49th pixel
//! of a 7x7 image) takes `qs8_gemm_minmax_4x1c2` column by column, with the 4 channels in the
//! lanes (per k pair: the column's pair broadcast, one dot with the packed weight step; scalar
//! requantization of the 4 lanes), about as cheap per column as a full tile; wider partial
//! panels and partial channel panels go through a small buffer.
//!
//! A fully connected layer on one image (up to `NARROW_MAX` rows, `PackedWeightsQs8::for_rows`)
//! reads each weight once per row, so its cost is the weight bytes: it keeps the weights as
//! int8 rows (half the bytes of the i16 panels) and `qs8_gemm_4x1c16` dots 16 k
//! values of 4 channels per step (one x load widened once, each channel's 16 weights widened
//! in registers, four independent accumulators, one transpose-and-add at the end).
//!
//! Two V8 pitfalls shape the code (x64, seen in `--print-wasm-code`): runtime-indexed arrays
//! of v128 live in the shadow stack in linear memory (the epilogue is written without them),
//! and LLVM turns `i64x2.extmul` of a loop-invariant operand into `i64x2.mul` of hoisted
//! sign-extensions, which V8 emulates with three multiplies (see `simd::prepared_lanes`).
//!
//! # Tests
//! Against an exact i64 reference then the same requantizer, on k, channels and columns around
//! the tile, strides, zero points at both ends of int8, clamps and the most negative weight;
//! output scales come from the accumulator range so every output code occurs. The tests run
//! natively and on wasm32 with simd128, where the whole GEMM is the simd128 microkernel, which
//! is also compared bit for bit with the scalar one on 1 and 3 panels, with requantizers that
//! take the f64 formula without ties, the split-shift formula and neither; every case also
//! runs on the row layout, and its accumulators through the `Accumulate` output against the
//! exact sums (the simd128 accumulator tiles and one-column kernel are compared with the
//! scalar ones too). In the relaxed-SIMD build the same tests run the `4x8c4` tiles (the
//! channel-major accumulators of every case, the convolutions' tests), and the microkernel test
//! compares them with the scalar `c2` tiles on the same operands.

use super::relaxed;
use super::requant::{OutputParams, PreparedRequant, Requantizer};

/// Output channels per tile (rows of a weight panel).
pub const MR: usize = 4;
/// Columns per tile (columns of an `X` panel).
pub const NR: usize = 8;
/// k values per dot step.
const KR: usize = 2;
/// k values per dot step of the relaxed-SIMD `4x8c4` tiles.
const KR4: usize = 4;
/// Partial column panels up to this wide take `qs8_gemm_minmax_4x1c2` column by column (as
/// cheap per column as a full 4x8 tile), wider ones one 4x8 tile through a buffer. Fully
/// connected layers on up to this many rows take the row layout (`for_rows`).
const NARROW_MAX: usize = 5;
/// k values per block of the row layout: one i8x16 load.
const ROW_BLOCK: usize = 16;

/// Weights `[n][k]` and bias packed for the microkernels (see the module contract).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeightsQs8 {
    n: usize,
    k: usize,
    /// The panels of the 4x8 tiles, or the rows of `qs8_gemm_4x1c16` (see `for_rows`).
    w: Vec<i16>,
    rows: Vec<i8>,
    /// The panels again for the relaxed-SIMD `4x8c4` tiles, in i8 with 4 k values per channel
    /// and step: `quads[(p / 4) * MR * 4 + r * 4 + p % 4] = W[i * MR + r][p]`, `k` padded to
    /// `kc4` with zeros. Empty unless [`relaxed::unsigned_dot`].
    quads: Vec<i8>,
    /// `n` rounded up to `MR` values: the zero-point-corrected bias, 0 for padding channels.
    bias: Vec<i32>,
    /// The bias of the `4x8c4` tiles, whose activations are offset by 128 (see `relaxed`):
    /// `bias[c] - 128 · Σ_p W[c][p]`. Empty with `quads`.
    quad_bias: Vec<i32>,
    /// Per channel, a bound of `|accumulator|`: `|bias| + 128 · Σ|w|` (fits an i32).
    max_abs_acc: Vec<u32>,
}

impl PackedWeightsQs8 {
    /// Packs row-major `weights` (`n x k`), `bias` (`n` values at scale `sx · sw[c]`, zeros if
    /// `None`) and folds in the input zero point.
    ///
    /// Panics on mismatched sizes, a zero point outside int8, or if some accumulator could
    /// overflow i32 (`|bias - zx·Σw| + 128·Σ|w| >= 2^31`, far beyond real layers).
    pub fn new(
        weights: &[i8],
        n: usize,
        k: usize,
        bias: Option<&[i32]>,
        input_zero_point: i32,
    ) -> PackedWeightsQs8 {
        PackedWeightsQs8::for_rows(usize::MAX, weights, n, k, bias, input_zero_point)
    }

    /// As `new`, for a fully connected layer on `m` input rows. Up to `NARROW_MAX` rows the
    /// weights are laid out as int8 rows: such a layer reads every weight once per input row,
    /// so its cost is the weight bytes, half those of the i16 panels. Per panel of `MR`
    /// channels, blocks of `ROW_BLOCK` k values, each the channels' `ROW_BLOCK` weights one
    /// after the other,
    /// `rows[((i · blocks + b) · MR + r) · ROW_BLOCK + j] = W[i · MR + r][b · ROW_BLOCK + j]`,
    /// zero past `k` and `n`.
    pub fn for_rows(
        m: usize,
        weights: &[i8],
        n: usize,
        k: usize,
        bias: Option<&[i32]>,
        input_zero_point: i32,
    ) -> PackedWeightsQs8 {
        let mut p = PackedWeightsQs8::unpacked(weights, n, k, bias, input_zero_point);
        if k == 0 {
            return p;
        }
        if m <= NARROW_MAX {
            let blocks = k.div_ceil(ROW_BLOCK);
            p.rows = vec![0i8; n.div_ceil(MR) * blocks * MR * ROW_BLOCK];
            for (c, row) in weights.chunks_exact(k).enumerate() {
                let (i, r) = (c / MR, c % MR);
                for (b, chunk) in row.chunks(ROW_BLOCK).enumerate() {
                    let at = ((i * blocks + b) * MR + r) * ROW_BLOCK;
                    p.rows[at..][..chunk.len()].copy_from_slice(chunk);
                }
            }
        } else {
            let kc = k.next_multiple_of(KR);
            p.w = vec![0i16; n.div_ceil(MR) * MR * kc];
            for (c, row) in weights.chunks_exact(k).enumerate() {
                let panel = &mut p.w[c / MR * MR * kc..][..MR * kc];
                let r = c % MR;
                for (q, &v) in row.iter().enumerate() {
                    panel[q / KR * MR * KR + r * KR + q % KR] = v as i16;
                }
            }
            if relaxed::unsigned_dot() {
                let kc4 = p.kc4();
                p.quads = vec![0i8; n.div_ceil(MR) * MR * kc4];
                p.quad_bias = p.bias.clone();
                for (c, row) in weights.chunks_exact(k).enumerate() {
                    let panel = &mut p.quads[c / MR * MR * kc4..][..MR * kc4];
                    let r = c % MR;
                    for (q, &v) in row.iter().enumerate() {
                        panel[q / KR4 * MR * KR4 + r * KR4 + q % KR4] = v;
                    }
                    // Within i32: |bias[c]| + 128 · Σ|w| was checked by `unpacked`.
                    p.quad_bias[c] -= 128 * row.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
        p
    }

    /// The checks and the zero-point-corrected bias shared by both layouts, no weights yet.
    fn unpacked(
        weights: &[i8],
        n: usize,
        k: usize,
        bias: Option<&[i32]>,
        input_zero_point: i32,
    ) -> PackedWeightsQs8 {
        assert_eq!(weights.len(), n * k, "qs8 weights are not {n}x{k}");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "qs8 bias size for {n} channels");
        }
        assert!(
            (-128..=127).contains(&input_zero_point),
            "input zero point {input_zero_point} outside int8"
        );
        let mut packed_bias = vec![0i32; n.div_ceil(MR) * MR];
        let mut max_abs_acc = vec![0u32; n];
        for c in 0..n {
            let row = &weights[c * k..][..k];
            let sum: i64 = row.iter().map(|&v| v as i64).sum();
            let abs_sum: i64 = row.iter().map(|&v| (v as i64).abs()).sum();
            let corrected = bias.map_or(0, |b| b[c] as i64) - input_zero_point as i64 * sum;
            assert!(
                corrected.abs() + 128 * abs_sum <= i32::MAX as i64,
                "qs8 channel {c}: accumulators may overflow i32 (bias {corrected}, Σ|w| {abs_sum})"
            );
            packed_bias[c] = corrected as i32;
            max_abs_acc[c] = (corrected.abs() + 128 * abs_sum) as u32;
        }
        PackedWeightsQs8 {
            n,
            k,
            w: Vec::new(),
            rows: Vec::new(),
            quads: Vec::new(),
            bias: packed_bias,
            quad_bias: Vec::new(),
            max_abs_acc,
        }
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Channel `c`'s bias with the zero-point correction, `bias[c] - zx · Σ_p W[c][p]`.
    pub(super) fn corrected_bias(&self, c: usize) -> i32 {
        assert!(c < self.n);
        self.bias[c]
    }

    /// `requant[c]` prepared for channel `c`'s accumulator bound, for `gemm_packed`.
    pub(super) fn prepare(&self, requant: &[Requantizer]) -> Vec<PreparedRequant> {
        assert_eq!(requant.len(), self.n, "qs8: one requantizer per channel");
        requant
            .iter()
            .zip(&self.max_abs_acc)
            .map(|(rq, &a)| PreparedRequant::new(rq, a))
            .collect()
    }

    /// `k` padded to the dot step.
    fn kc(&self) -> usize {
        self.k.next_multiple_of(KR)
    }

    /// `k` padded to the dot step of the `4x8c4` tiles.
    fn kc4(&self) -> usize {
        self.k.next_multiple_of(KR4)
    }
}

/// A fully connected layer: `out[i][c] = clamp(zy + requant[c](bias[c] + Σ_p (input[i][p] -
/// zx) · W[c][p]), qmin, qmax)` for `i < m`, `c < w.n()`. `input` is `m x k` with row stride
/// `lda`, `out` is `m x n` with row stride `ldc`; only that region of `out` is written.
/// `scratch` holds the packed input; it is grown as needed and reused, so warm calls do not
/// allocate.
///
/// Rows of the input are the GEMM's columns, so `m` below `NR` (one image) wastes part of each
/// tile; fully connected layers are a small share of a vision model's work.
#[allow(clippy::too_many_arguments)]
pub fn qs8_gemm(
    input: &[i8],
    m: usize,
    lda: usize,
    w: &PackedWeightsQs8,
    requant: &[Requantizer],
    output_zero_point: i32,
    qmin: i8,
    qmax: i8,
    out: &mut [i8],
    ldc: usize,
    scratch: &mut Vec<i8>,
) {
    let (n, k) = (w.n, w.k);
    check_matrix("qs8_gemm input", input.len(), m, k, lda);
    check_matrix("qs8_gemm output", out.len(), m, n, ldc);
    if w.w.is_empty() && n * k > 0 {
        let params = OutputParams::new(output_zero_point, qmin, qmax);
        for i in 0..m {
            gemm_rows(
                w,
                &input[i * lda..][..k],
                requant,
                &params,
                &mut out[i * ldc..][..n],
                scratch,
            );
        }
        return;
    }
    let dst = grow(scratch, packed_x_len(k, m));
    pack_x_transposed(dst, input, k, m, lda);
    let params = OutputParams::new(output_zero_point, qmin, qmax);
    let output = Requantize {
        requant: ChannelRequant::Plain(requant),
        params: &params,
    };
    gemm_packed(w, dst, m, &output, out, [1, ldc]);
}

/// `scratch[..len]`, growing `scratch` if it is shorter (never shrinking it).
pub(super) fn grow(scratch: &mut Vec<i8>, len: usize) -> &mut [i8] {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    &mut scratch[..len]
}

/// Bytes of a packed `k x cols` `X`.
pub(super) fn packed_x_len(k: usize, cols: usize) -> usize {
    cols.div_ceil(NR) * NR * k.next_multiple_of(KR)
}

/// Packs `X` given row by row (`k` rows of `cols` values, row stride `ld`: the NCHW input of a
/// pointwise convolution) into `dst` (`packed_x_len(k, cols)` bytes, every byte written).
pub(super) fn pack_x(dst: &mut [i8], x: &[i8], k: usize, cols: usize, ld: usize) {
    check_matrix("X", x.len(), k, cols, ld);
    assert_eq!(dst.len(), packed_x_len(k, cols), "pack_x: destination size");
    let kc = k.next_multiple_of(KR);
    if kc == 0 {
        return;
    }
    for (j, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let col = j * NR;
        let width = NR.min(cols - col);
        for (s, step) in panel.chunks_exact_mut(NR * KR).enumerate() {
            let row0 = &x[2 * s * ld + col..][..width];
            let row1 = (2 * s + 1 < k).then(|| &x[(2 * s + 1) * ld + col..][..width]);
            if let (true, Some(row1)) = (width == NR, row1) {
                interleave8(step, row0, row1);
            } else {
                step.fill(0);
                for (c, &v) in row0.iter().enumerate() {
                    step[c * KR] = v;
                }
                if let Some(row1) = row1 {
                    for (c, &v) in row1.iter().enumerate() {
                        step[c * KR + 1] = v;
                    }
                }
            }
        }
    }
}

/// `dst[2c] = a[c]`, `dst[2c + 1] = b[c]` for 8 values: one k pair of a full panel.
#[inline(always)]
fn interleave8(dst: &mut [i8], a: &[i8], b: &[i8]) {
    let (dst, a, b) = (&mut dst[..2 * NR], &a[..NR], &b[..NR]);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::*;
        // SAFETY: 8-byte loads from 8-byte slices and a 16-byte store into a 16-byte slice.
        unsafe {
            let va = v128_load64_zero(a.as_ptr() as *const u64);
            let vb = v128_load64_zero(b.as_ptr() as *const u64);
            let v = i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(va, vb);
            v128_store(dst.as_mut_ptr() as *mut v128, v);
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    for (pair, (&va, &vb)) in dst.chunks_exact_mut(KR).zip(a.iter().zip(b)) {
        pair[0] = va;
        pair[1] = vb;
    }
}

/// Packs `X` given column by column (`cols` columns of `k` values, column stride `ld`: the
/// `m x k` input of a fully connected layer) into `dst`, every byte written.
fn pack_x_transposed(dst: &mut [i8], xt: &[i8], k: usize, cols: usize, ld: usize) {
    assert_eq!(dst.len(), packed_x_len(k, cols), "pack_x: destination size");
    let kc = k.next_multiple_of(KR);
    if kc == 0 {
        return;
    }
    dst.fill(0);
    for (j, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        for c in 0..NR.min(cols - j * NR) {
            for (p, &v) in xt[(j * NR + c) * ld..][..k].iter().enumerate() {
                panel[p / KR * NR * KR + c * KR + p % KR] = v;
            }
        }
    }
}

/// The requantizers of a GEMM's channels: prepared once (convolutions, at construction) or
/// prepared tile by tile from the plain requantizers (fully connected layers).
#[derive(Clone, Copy)]
pub(super) enum ChannelRequant<'a> {
    Prepared(&'a [PreparedRequant]),
    Plain(&'a [Requantizer]),
}

impl ChannelRequant<'_> {
    fn len(&self) -> usize {
        match self {
            ChannelRequant::Prepared(p) => p.len(),
            ChannelRequant::Plain(p) => p.len(),
        }
    }
}

/// What the GEMM does with the exact i32 accumulators of its tiles: [`Requantize`] them to
/// int8 (the int8 engine), or keep them ([`Accumulate`]: the simulation QAT trains on needs the
/// values before rounding). One driver walks the tiles for both, so they cover the same
/// outputs and the same edge cases.
pub(super) trait TileOutput {
    type T: Copy + Default;
    /// What the tiles of weight panel `i` (channels `i * MR..`) need, computed once per panel.
    type Panel;
    fn panel(&self, w: &PackedWeightsQs8, i: usize) -> Self::Panel;
    /// `panels` full tiles of the weight panel `a` and the X panels `b`, into `c` (row stride
    /// `ldc`).
    #[allow(clippy::too_many_arguments)]
    fn tiles(
        p: &Self::Panel,
        a: &[i16],
        b: &[i8],
        panels: usize,
        bias: &[i32],
        c: &mut [Self::T],
        ldc: usize,
    );
    /// Column `col` of the X panel `b`, the 4 channels.
    fn column(p: &Self::Panel, a: &[i16], b: &[i8], col: usize, bias: &[i32]) -> [Self::T; MR];
    /// As `tiles`, on the relaxed-SIMD layouts: the weight panel `a` of `quads` and the X
    /// panels `b` of `relaxed::quads_from_pairs`, with `quad_bias`.
    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    #[allow(clippy::too_many_arguments)]
    fn tiles_c4(
        p: &Self::Panel,
        a: &[i8],
        b: &[u8],
        panels: usize,
        bias: &[i32],
        c: &mut [Self::T],
        ldc: usize,
    );
}

/// Outputs `clamp(zy + requant[c](acc), qmin, qmax)` in int8.
pub(super) struct Requantize<'a> {
    pub requant: ChannelRequant<'a>,
    pub params: &'a OutputParams,
}

impl TileOutput for Requantize<'_> {
    type T = i8;
    type Panel = ([PreparedRequant; MR], OutputParams);

    fn panel(&self, w: &PackedWeightsQs8, i: usize) -> Self::Panel {
        let n = w.n;
        assert_eq!(
            self.requant.len(),
            n,
            "qs8 gemm: {} requantizers for {n} channels",
            self.requant.len()
        );
        // Padding channels of the last panel: any fast requantizer (their outputs are dropped).
        let mut rq = [PreparedRequant::new(&Requantizer::from_real(0.25), 0); MR];
        let row = i * MR;
        for (r, p) in rq.iter_mut().enumerate().take(MR.min(n - row)) {
            *p = match self.requant {
                ChannelRequant::Prepared(v) => v[row + r],
                ChannelRequant::Plain(v) => {
                    PreparedRequant::new(&v[row + r], w.max_abs_acc[row + r])
                }
            };
        }
        (rq, *self.params)
    }

    fn tiles(
        (rq, params): &Self::Panel,
        a: &[i16],
        b: &[i8],
        panels: usize,
        bias: &[i32],
        c: &mut [i8],
        ldc: usize,
    ) {
        qs8_gemm_minmax_4x8c2(a, b, panels, bias, rq, params, c, ldc);
    }

    fn column(
        (rq, params): &Self::Panel,
        a: &[i16],
        b: &[i8],
        col: usize,
        bias: &[i32],
    ) -> [i8; MR] {
        let mut o = [0i8; MR];
        qs8_gemm_minmax_4x1c2(a, b, col, bias, rq, params, &mut o);
        o
    }

    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    fn tiles_c4(
        (rq, params): &Self::Panel,
        a: &[i8],
        b: &[u8],
        panels: usize,
        bias: &[i32],
        c: &mut [i8],
        ldc: usize,
    ) {
        qs8_gemm_minmax_4x8c4_relaxed(a, b, panels, bias, rq, params, c, ldc);
    }
}

/// Outputs the accumulators `bias[c] + Σ_p W[c][p] · X[p][j]` themselves, in i32: with the
/// packer's zero-point-corrected bias, `bias[c] + Σ_p W[c][p] · (X[p][j] - zx)`.
pub(super) struct Accumulate;

impl TileOutput for Accumulate {
    type T = i32;
    type Panel = ();

    fn panel(&self, _: &PackedWeightsQs8, _: usize) {}

    fn tiles(_: &(), a: &[i16], b: &[i8], panels: usize, bias: &[i32], c: &mut [i32], ldc: usize) {
        qs8_gemm_4x8c2(a, b, panels, bias, c, ldc);
    }

    fn column(_: &(), a: &[i16], b: &[i8], col: usize, bias: &[i32]) -> [i32; MR] {
        qs8_gemm_4x1c2(a, b, col, bias)
    }

    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    fn tiles_c4(_: &(), a: &[i8], b: &[u8], panels: usize, bias: &[i32], c: &mut [i32], ldc: usize) {
        qs8_gemm_4x8c4_relaxed(a, b, panels, bias, c, ldc);
    }
}

/// The GEMM on packed `X` (`x`, `cols` columns): output `(c, j)` goes to
/// `out[c * strides[0] + j * strides[1]]`, as `output` makes it of the accumulator.
pub(super) fn gemm_packed<O: TileOutput>(
    w: &PackedWeightsQs8,
    x: &[i8],
    cols: usize,
    output: &O,
    out: &mut [O::T],
    [row_stride, col_stride]: [usize; 2],
) {
    let n = w.n;
    assert_eq!(x.len(), packed_x_len(w.k, cols), "qs8 gemm: packed X size");
    assert!(w.rows.is_empty(), "qs8 gemm: weights in the row layout");
    if n == 0 || cols == 0 {
        return;
    }
    assert!(
        out.len() > (n - 1) * row_stride + (cols - 1) * col_stride,
        "qs8 gemm: output too small for {n}x{cols} with strides {row_stride}, {col_stride}"
    );
    // With the relaxed dot, the full column panels go to the `4x8c4` tiles: their X is
    // repacked once per call (a pass over X, against one sweep of X per 4 channels).
    #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
    if !w.quads.is_empty() && col_stride == 1 && cols >= NR {
        let (full_panels, kc) = (cols / NR, w.kc());
        return relaxed::with_scratch(full_panels * NR * w.kc4(), |xq| {
            relaxed::quads_from_pairs(&x[..full_panels * NR * kc], kc, xq);
            sweep(w, x, Some(xq), cols, output, out, [row_stride, col_stride]);
        });
    }
    sweep(w, x, None, cols, output, out, [row_stride, col_stride]);
}

/// `gemm_packed` once the operands are checked, with the full column panels of `x` also in the
/// `4x8c4` layout (`xq`) where the relaxed dot is used.
fn sweep<O: TileOutput>(
    w: &PackedWeightsQs8,
    x: &[i8],
    xq: Option<&[u8]>,
    cols: usize,
    output: &O,
    out: &mut [O::T],
    [row_stride, col_stride]: [usize; 2],
) {
    let (n, kc) = (w.n, w.kc());
    // Weight panel by weight panel (it stays in L1), over every column of the packed X (a
    // block of a convolution, sized to stay in cache): the microkernel sweeps the full
    // column panels itself, writing its 4 output rows sequentially; partial tiles go through
    // a small buffer.
    let (row_panels, col_panels) = (n.div_ceil(MR), cols.div_ceil(NR));
    let full_panels = if col_stride == 1 { cols / NR } else { 0 };
    for i in 0..row_panels {
        let panel = output.panel(w, i);
        let row = i * MR;
        let rows = MR.min(n - row);
        let a = &w.w[i * MR * kc..][..MR * kc];
        let bias = &w.bias[row..][..MR];
        let mut first_edge = 0;
        if rows == MR && full_panels > 0 {
            let c = &mut out[row * row_stride..];
            match xq {
                #[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
                Some(xq) => {
                    let kc4 = w.kc4();
                    let a = &w.quads[i * MR * kc4..][..MR * kc4];
                    let bias = &w.quad_bias[row..][..MR];
                    O::tiles_c4(&panel, a, xq, full_panels, bias, c, row_stride);
                }
                _ => {
                    let b = &x[..full_panels * NR * kc];
                    O::tiles(&panel, a, b, full_panels, bias, c, row_stride);
                }
            }
            first_edge = full_panels;
        }
        for j in first_edge..col_panels {
            let col = j * NR;
            let width = NR.min(cols - col);
            let b = &x[j * NR * kc..][..NR * kc];
            let at = row * row_stride + col * col_stride;
            if width <= NARROW_MAX {
                // A few columns (the 49th pixel of a 7x7 image, the one row of a fully
                // connected layer): one column at a time, no wasted lanes.
                for c in 0..width {
                    let o = O::column(&panel, a, b, c, bias);
                    for (r, &v) in o.iter().enumerate().take(rows) {
                        out[at + r * row_stride + c * col_stride] = v;
                    }
                }
                continue;
            }
            let mut edge = [O::T::default(); MR * NR];
            O::tiles(&panel, a, b, 1, bias, &mut edge, NR);
            for r in 0..rows {
                for c in 0..width {
                    out[at + r * row_stride + c * col_stride] = edge[r * NR + c];
                }
            }
        }
    }
}

/// One input row `x` (`k` values) against weights in the row layout: `out[c]` for every
/// channel, 4 channels per `qs8_gemm_minmax_4x1c16` call. `x` is copied into `scratch`,
/// padded with zeros to whole blocks (the padding meets zero weights).
fn gemm_rows(
    w: &PackedWeightsQs8,
    x: &[i8],
    requant: &[Requantizer],
    params: &OutputParams,
    out: &mut [i8],
    scratch: &mut Vec<i8>,
) {
    let (n, blocks) = (w.n, w.k.div_ceil(ROW_BLOCK));
    assert_eq!(
        requant.len(),
        n,
        "qs8 gemm: {} requantizers for {n} channels",
        requant.len()
    );
    let xp = grow(scratch, blocks * ROW_BLOCK);
    xp[..x.len()].copy_from_slice(x);
    xp[x.len()..].fill(0);
    for (i, panel) in w.rows.chunks_exact(blocks * MR * ROW_BLOCK).enumerate() {
        let acc = qs8_gemm_4x1c16(panel, xp, &w.bias[i * MR..][..MR]);
        for (r, &a) in acc.iter().enumerate().take(MR.min(n - i * MR)) {
            out[i * MR + r] = super::requant::requantize(a, &requant[i * MR + r], params);
        }
    }
}

/// The accumulators `bias[r] + Σ_p W[r][p] · x[p]` of one row-layout panel (`blocks` blocks of
/// `MR` x `ROW_BLOCK` weights) and `x` (`blocks · ROW_BLOCK` values): the portable reference.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn qs8_gemm_4x1c16_scalar(panel: &[i8], x: &[i8], bias: &[i32]) -> [i32; MR] {
    assert!(panel.len() == x.len() * MR && bias.len() == MR);
    let mut acc = [0i32; MR];
    acc.copy_from_slice(bias);
    for (block, xb) in panel
        .chunks_exact(MR * ROW_BLOCK)
        .zip(x.chunks_exact(ROW_BLOCK))
    {
        for (a, wr) in acc.iter_mut().zip(block.chunks_exact(ROW_BLOCK)) {
            *a += wr
                .iter()
                .zip(xb)
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum::<i32>();
        }
    }
    acc
}

/// The simd128 version of `qs8_gemm_4x1c16_scalar`, the same sums: per block, `x` as two
/// i16x8, each channel's 16 weights loaded once and widened, two `i32x4.dot_i16x8_s` into
/// that channel's accumulator (four independent chains), then one transpose-and-add.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn qs8_gemm_4x1c16_simd128(panel: &[i8], x: &[i8], bias: &[i32]) -> [i32; MR] {
    use core::arch::wasm32::*;
    assert!(panel.len() == x.len() * MR && bias.len() == MR && x.len() % ROW_BLOCK == 0);
    let mut out = [0i32; MR];
    // SAFETY: block b reads x[16 b..][..16] and panel[64 b..][..64], in bounds per the
    // assert; the loads of `bias` and the store to `out` are 16 bytes.
    unsafe {
        let (wp, xp) = (panel.as_ptr(), x.as_ptr());
        let mut acc = [i32x4_splat(0); MR];
        for b in 0..x.len() / ROW_BLOCK {
            let xv = v128_load(xp.add(b * ROW_BLOCK) as *const v128);
            let (x0, x1) = (i16x8_extend_low_i8x16(xv), i16x8_extend_high_i8x16(xv));
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = v128_load(wp.add((b * MR + r) * ROW_BLOCK) as *const v128);
                let d0 = i32x4_dot_i16x8(i16x8_extend_low_i8x16(wv), x0);
                let d1 = i32x4_dot_i16x8(i16x8_extend_high_i8x16(wv), x1);
                *a = i32x4_add(*a, i32x4_add(d0, d1));
            }
        }
        // Lane sums of the 4 accumulators as one vector: [Σa, Σb, Σc, Σd].
        let [a, b, c, d] = acc;
        let ab = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(a, b),
            i32x4_shuffle::<2, 6, 3, 7>(a, b),
        );
        let cd = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(c, d),
            i32x4_shuffle::<2, 6, 3, 7>(c, d),
        );
        let sums = i32x4_add(
            i32x4_shuffle::<0, 1, 4, 5>(ab, cd),
            i32x4_shuffle::<2, 3, 6, 7>(ab, cd),
        );
        let total = i32x4_add(sums, v128_load(bias.as_ptr() as *const v128));
        v128_store(out.as_mut_ptr() as *mut v128, total);
    }
    out
}

/// Panics unless a `rows x cols` row-major matrix with row stride `ld` fits in `len` bytes.
pub(super) fn check_matrix(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
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
        "{name}: {rows}x{cols} with stride {ld} needs {needed} values, got {len}"
    );
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use qs8_gemm_minmax_4x8c2_scalar as qs8_gemm_minmax_4x8c2;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use qs8_gemm_minmax_4x8c2_simd128 as qs8_gemm_minmax_4x8c2;

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use qs8_gemm_4x1c16_scalar as qs8_gemm_4x1c16;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use qs8_gemm_4x1c16_simd128 as qs8_gemm_4x1c16;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use qs8_gemm_4x1c2_scalar as qs8_gemm_4x1c2;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use qs8_gemm_4x1c2_simd128 as qs8_gemm_4x1c2;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use qs8_gemm_4x8c2_scalar as qs8_gemm_4x8c2;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use qs8_gemm_4x8c2_simd128 as qs8_gemm_4x8c2;

/// The accumulators `bias[r] + Σ_p a(r, p) · b(p, col)` of one column `col` of an X panel `b`
/// against a weight panel `a`, the 4 channels.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn qs8_gemm_4x1c2_scalar(a: &[i16], b: &[i8], col: usize, bias: &[i32]) -> [i32; MR] {
    let steps = a.len() / (MR * KR);
    assert!(
        a.len() == steps * MR * KR && b.len() == steps * NR * KR && bias.len() == MR && col < NR
    );
    let mut acc = [0i32; MR];
    acc.copy_from_slice(bias);
    for (ap, bp) in a.chunks_exact(MR * KR).zip(b.chunks_exact(NR * KR)) {
        let (x0, x1) = (bp[col * KR] as i32, bp[col * KR + 1] as i32);
        for (v, wp) in acc.iter_mut().zip(ap.chunks_exact(KR)) {
            *v += wp[0] as i32 * x0 + wp[1] as i32 * x1;
        }
    }
    acc
}

/// The simd128 version of `qs8_gemm_4x1c2_scalar`, the same sums. The lanes are the 4
/// channels: per k pair, the column's pair is broadcast (a 16-bit splat load, widened) and
/// dotted with the weight step (4 channel pairs, 16 bytes as packed).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn qs8_gemm_4x1c2_simd128(a: &[i16], b: &[i8], col: usize, bias: &[i32]) -> [i32; MR] {
    use core::arch::wasm32::*;
    let steps = a.len() / (MR * KR);
    assert!(
        a.len() == steps * MR * KR && b.len() == steps * NR * KR && bias.len() == MR && col < NR
    );
    let mut acc = [0i32; MR];
    // SAFETY: step s reads a[s * 8 ..][..8] (16 bytes) and b[s * 16 + 2 col ..][..2], in
    // bounds per the assert; the store writes the 16-byte `acc`.
    unsafe {
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr().add(col * KR));
        let mut acc0 = v128_load(bias.as_ptr() as *const v128);
        let mut acc1 = i32x4_splat(0);
        for s in 0..steps {
            let x = i16x8_extend_low_i8x16(v128_load16_splat(bp as *const u16));
            let d = i32x4_dot_i16x8(v128_load(ap as *const v128), x);
            if s % 2 == 0 {
                acc0 = i32x4_add(acc0, d);
            } else {
                acc1 = i32x4_add(acc1, d);
            }
            ap = ap.add(MR * KR);
            bp = bp.add(NR * KR);
        }
        v128_store(acc.as_mut_ptr() as *mut v128, i32x4_add(acc0, acc1));
    }
    acc
}

/// One column `col` of an X panel `b` against a weight panel `a`:
/// `out[r] = requantize(bias[r] + Σ_p a(r, p) · b(p, col), rq[r])` for the 4 channels, in
/// scalar code, each with its own channel's requantizer.
fn qs8_gemm_minmax_4x1c2(
    a: &[i16],
    b: &[i8],
    col: usize,
    bias: &[i32],
    rq: &[PreparedRequant; MR],
    params: &OutputParams,
    out: &mut [i8; MR],
) {
    use super::requant::requantize;
    let acc = qs8_gemm_4x1c2(a, b, col, bias);
    for (r, o) in out.iter_mut().enumerate() {
        *o = requantize(acc[r], &rq[r].rq, params);
    }
}

/// The accumulators of one `MR x NR` tile of a weight panel `a` (`kc / 2` steps) and an X
/// panel `b`: `acc[r][col] = bias[r] + Σ_p a(r, p) · b(p, col)`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn tile_4x8c2_scalar(a: &[i16], b: &[i8], bias: &[i32]) -> [[i32; NR]; MR] {
    let mut acc = [[0i32; NR]; MR];
    for (acc_row, &b0) in acc.iter_mut().zip(bias) {
        *acc_row = [b0; NR];
    }
    for (ap, bp) in a.chunks_exact(MR * KR).zip(b.chunks_exact(NR * KR)) {
        for (acc_row, wp) in acc.iter_mut().zip(ap.chunks_exact(KR)) {
            let (w0, w1) = (wp[0] as i32, wp[1] as i32);
            for (v, xp) in acc_row.iter_mut().zip(bp.chunks_exact(KR)) {
                *v += w0 * xp[0] as i32 + w1 * xp[1] as i32;
            }
        }
    }
    acc
}

/// Asserts the operand sizes of `panels` tiles of `kr` k values per step (`a_len` weights,
/// `b_len` X values) written to `c` with row stride `ldc`; returns the k steps.
fn check_tiles(
    kr: usize,
    a_len: usize,
    b_len: usize,
    panels: usize,
    bias: &[i32],
    c_len: usize,
    ldc: usize,
) -> usize {
    let steps = a_len / (MR * kr);
    assert!(
        a_len == steps * MR * kr
            && b_len == panels * steps * NR * kr
            && bias.len() == MR
            && (panels == 0 || c_len >= (MR - 1) * ldc + panels * NR)
    );
    steps
}

/// `panels` consecutive `MR x NR` tiles of one weight panel `a` (`kc / 2` steps) and the X
/// panels `b` (`panels * NR * kc` bytes): tile `j` writes
/// `c[r * ldc + j * NR + col] = requantize(bias[r] + Σ_p a(r, p) · b_j(p, col), rq[r])`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
#[allow(clippy::too_many_arguments)]
fn qs8_gemm_minmax_4x8c2_scalar(
    a: &[i16],
    b: &[i8],
    panels: usize,
    bias: &[i32],
    rq: &[PreparedRequant; MR],
    params: &OutputParams,
    c: &mut [i8],
    ldc: usize,
) {
    use super::requant::requantize;
    let steps = check_tiles(KR, a.len(), b.len(), panels, bias, c.len(), ldc);
    for j in 0..panels {
        let b = &b[j * steps * NR * KR..][..steps * NR * KR];
        for (r, acc_row) in tile_4x8c2_scalar(a, b, bias).iter().enumerate() {
            for (o, &v) in c[r * ldc + j * NR..][..NR].iter_mut().zip(acc_row) {
                *o = requantize(v, &rq[r].rq, params);
            }
        }
    }
}

/// The accumulators of `panels` tiles as `qs8_gemm_minmax_4x8c2_scalar` computes them,
/// written as they are: `c[r * ldc + j * NR + col] = bias[r] + Σ_p a(r, p) · b_j(p, col)`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn qs8_gemm_4x8c2_scalar(
    a: &[i16],
    b: &[i8],
    panels: usize,
    bias: &[i32],
    c: &mut [i32],
    ldc: usize,
) {
    let steps = check_tiles(KR, a.len(), b.len(), panels, bias, c.len(), ldc);
    for j in 0..panels {
        let b = &b[j * steps * NR * KR..][..steps * NR * KR];
        for (r, acc_row) in tile_4x8c2_scalar(a, b, bias).iter().enumerate() {
            c[r * ldc + j * NR..][..NR].copy_from_slice(acc_row);
        }
    }
}

/// The accumulators of one tile in simd128: per k pair, two `i16x8.load8x8_s` of X (8
/// columns), one broadcast load per channel of its weight pair (no shuffles), 8
/// `i32x4.dot_i16x8_s` and 8 adds. Row `r` is `acc[r] = [columns 0..4, columns 4..8]`.
///
/// # Safety
/// `a` points at `steps * MR * KR` values and `b` at `steps * NR * KR`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
unsafe fn tile_4x8c2_simd128(
    a: *const i16,
    b: *const i8,
    steps: usize,
    bias: &[i32],
) -> [[core::arch::wasm32::v128; 2]; MR] {
    use core::arch::wasm32::*;
    let mut acc0 = [i32x4_splat(bias[0]); 2];
    let mut acc1 = [i32x4_splat(bias[1]); 2];
    let mut acc2 = [i32x4_splat(bias[2]); 2];
    let mut acc3 = [i32x4_splat(bias[3]); 2];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..steps {
        let b_lo = i16x8_load_extend_i8x8(bp);
        let b_hi = i16x8_load_extend_i8x8(bp.add(NR));
        // Channel r's weight pair (w[p], w[p + 1]) as two i16, in every lane: a
        // broadcast load, which costs no shuffle.
        let w0 = v128_load32_splat(ap as *const u32);
        let w1 = v128_load32_splat(ap.add(KR) as *const u32);
        let w2 = v128_load32_splat(ap.add(2 * KR) as *const u32);
        let w3 = v128_load32_splat(ap.add(3 * KR) as *const u32);
        acc0[0] = i32x4_add(acc0[0], i32x4_dot_i16x8(w0, b_lo));
        acc0[1] = i32x4_add(acc0[1], i32x4_dot_i16x8(w0, b_hi));
        acc1[0] = i32x4_add(acc1[0], i32x4_dot_i16x8(w1, b_lo));
        acc1[1] = i32x4_add(acc1[1], i32x4_dot_i16x8(w1, b_hi));
        acc2[0] = i32x4_add(acc2[0], i32x4_dot_i16x8(w2, b_lo));
        acc2[1] = i32x4_add(acc2[1], i32x4_dot_i16x8(w2, b_hi));
        acc3[0] = i32x4_add(acc3[0], i32x4_dot_i16x8(w3, b_lo));
        acc3[1] = i32x4_add(acc3[1], i32x4_dot_i16x8(w3, b_hi));
        ap = ap.add(MR * KR);
        bp = bp.add(NR * KR);
    }
    [acc0, acc1, acc2, acc3]
}

/// The accumulators of one `4x8c4` tile with the relaxed dot (see `relaxed`): per k quad, two
/// 16-byte loads of X (4 columns of 4 k values each), one broadcast load per channel of its 4
/// weights and 8 `i32x4.relaxed_dot_i8x16_i7x16_add_s`, each 16 multiply-adds and the add:
/// 14 vector operations per 128 MACs, against 18 per 64 for `tile_4x8c2_simd128`. The same
/// accumulator layout: row `r` is `acc[r] = [columns 0..4, columns 4..8]`.
///
/// # Safety
/// `a` points at `steps * MR * KR4` values and `b` at `steps * NR * KR4`; the caller has
/// checked [`relaxed::unsigned_dot`], without which the sums are not exact.
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
#[target_feature(enable = "relaxed-simd")]
#[inline]
unsafe fn tile_4x8c4_relaxed(
    a: *const i8,
    b: *const u8,
    steps: usize,
    bias: &[i32],
) -> [[core::arch::wasm32::v128; 2]; MR] {
    use core::arch::wasm32::*;
    let mut acc0 = [i32x4_splat(bias[0]); 2];
    let mut acc1 = [i32x4_splat(bias[1]); 2];
    let mut acc2 = [i32x4_splat(bias[2]); 2];
    let mut acc3 = [i32x4_splat(bias[3]); 2];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..steps {
        let b_lo = v128_load(bp as *const v128);
        let b_hi = v128_load(bp.add(16) as *const v128);
        let w0 = v128_load32_splat(ap as *const u32);
        let w1 = v128_load32_splat(ap.add(KR4) as *const u32);
        let w2 = v128_load32_splat(ap.add(2 * KR4) as *const u32);
        let w3 = v128_load32_splat(ap.add(3 * KR4) as *const u32);
        acc0[0] = i32x4_relaxed_dot_i8x16_i7x16_add(w0, b_lo, acc0[0]);
        acc0[1] = i32x4_relaxed_dot_i8x16_i7x16_add(w0, b_hi, acc0[1]);
        acc1[0] = i32x4_relaxed_dot_i8x16_i7x16_add(w1, b_lo, acc1[0]);
        acc1[1] = i32x4_relaxed_dot_i8x16_i7x16_add(w1, b_hi, acc1[1]);
        acc2[0] = i32x4_relaxed_dot_i8x16_i7x16_add(w2, b_lo, acc2[0]);
        acc2[1] = i32x4_relaxed_dot_i8x16_i7x16_add(w2, b_hi, acc2[1]);
        acc3[0] = i32x4_relaxed_dot_i8x16_i7x16_add(w3, b_lo, acc3[0]);
        acc3[1] = i32x4_relaxed_dot_i8x16_i7x16_add(w3, b_hi, acc3[1]);
        ap = ap.add(MR * KR4);
        bp = bp.add(NR * KR4);
    }
    [acc0, acc1, acc2, acc3]
}

/// The epilogue of the simd128 4x8 tiles: tile `j` of `tile(j)` requantized with the f64
/// formula without ties of `PreparedRequant` when all 4 channels allow it, else its
/// split-shift formula when they all allow that (else per channel), narrowed with saturation
/// and stored 8 bytes per row at `c + j * NR`.
///
/// # Safety
/// `c` points at `(MR - 1) * ldc + panels * NR` writable bytes.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
unsafe fn requantize_tiles_simd128(
    panels: usize,
    rq: &[PreparedRequant; MR],
    params: &OutputParams,
    c: *mut i8,
    ldc: usize,
    mut tile: impl FnMut(usize) -> [[core::arch::wasm32::v128; 2]; MR],
) {
    use super::requant::simd::{
        f64_lanes, fp32_lanes, narrow_clamp, prepared_lanes, requantize, requantize_f64_no_ties,
        requantize_fast, requantize_fp32, Lanes, OutputLanes,
    };
    use core::arch::wasm32::*;
    let all_fp32 = rq.iter().all(|p| p.fp32);
    let all_no_ties = rq.iter().all(|p| p.no_ties);
    let all_fast = rq.iter().all(|p| p.fast);
    let o = OutputLanes::new(params);
    let mut cp = c;
    for j in 0..panels {
        let [acc0, acc1, acc2, acc3] = tile(j);
        // No arrays indexed at run time: they would live in the shadow stack in memory.
        let row = |acc: [v128; 2], p: &PreparedRequant| -> (v128, v128) {
            if all_fp32 || p.fp32 {
                let scale = fp32_lanes(p);
                (requantize_fp32(acc[0], scale), requantize_fp32(acc[1], scale))
            } else if all_no_ties {
                let (scale, _) = f64_lanes(p);
                (requantize_f64_no_ties(acc[0], scale), requantize_f64_no_ties(acc[1], scale))
            } else if all_fast || p.fast {
                let (m, nudge) = prepared_lanes(p);
                (
                    requantize_fast(acc[0], m, nudge, p.right),
                    requantize_fast(acc[1], m, nudge, p.right),
                )
            } else {
                let lanes = Lanes::new(&p.rq);
                (requantize(acc[0], &lanes), requantize(acc[1], &lanes))
            }
        };
        let (v0, v1) = row(acc0, &rq[0]);
        let (v2, v3) = row(acc1, &rq[1]);
        let (v4, v5) = row(acc2, &rq[2]);
        let (v6, v7) = row(acc3, &rq[3]);
        let rows01 = narrow_clamp(v0, v1, v2, v3, &o);
        let rows23 = narrow_clamp(v4, v5, v6, v7, &o);
        v128_store64_lane::<0>(rows01, cp as *mut u64);
        v128_store64_lane::<1>(rows01, cp.add(ldc) as *mut u64);
        v128_store64_lane::<0>(rows23, cp.add(2 * ldc) as *mut u64);
        v128_store64_lane::<1>(rows23, cp.add(3 * ldc) as *mut u64);
        cp = cp.add(NR);
    }
}

/// The accumulators of `tile(j)` stored as they are, 32 bytes per row at `c + j * NR`.
///
/// # Safety
/// `c` points at `(MR - 1) * ldc + panels * NR` writable values.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
unsafe fn store_tiles_simd128(
    panels: usize,
    c: *mut i32,
    ldc: usize,
    mut tile: impl FnMut(usize) -> [[core::arch::wasm32::v128; 2]; MR],
) {
    use core::arch::wasm32::*;
    for j in 0..panels {
        let cp = c.add(j * NR);
        for (r, [lo, hi]) in tile(j).into_iter().enumerate() {
            v128_store(cp.add(r * ldc) as *mut v128, lo);
            v128_store(cp.add(r * ldc + 4) as *mut v128, hi);
        }
    }
}

/// The simd128 version of `qs8_gemm_minmax_4x8c2_scalar`, bit for bit the same results: the
/// tiles of `tile_4x8c2_simd128` through `requantize_tiles_simd128`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[allow(clippy::too_many_arguments)]
fn qs8_gemm_minmax_4x8c2_simd128(
    a: &[i16],
    b: &[i8],
    panels: usize,
    bias: &[i32],
    rq: &[PreparedRequant; MR],
    params: &OutputParams,
    c: &mut [i8],
    ldc: usize,
) {
    let steps = check_tiles(KR, a.len(), b.len(), panels, bias, c.len(), ldc);
    // SAFETY: tile j reads a[..steps * 8] and b[j * steps * 16 ..][..steps * 16] for
    // j < panels, and the stores write c[r * ldc + j * 8 ..][..8] for r < MR, all in bounds
    // per the assert. v128 loads and stores have no alignment requirement.
    unsafe {
        requantize_tiles_simd128(panels, rq, params, c.as_mut_ptr(), ldc, |j| {
            tile_4x8c2_simd128(a.as_ptr(), b.as_ptr().add(j * steps * NR * KR), steps, bias)
        });
    }
}

/// The simd128 version of `qs8_gemm_4x8c2_scalar`: the tiles of `tile_4x8c2_simd128`, stored
/// as they are.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn qs8_gemm_4x8c2_simd128(
    a: &[i16],
    b: &[i8],
    panels: usize,
    bias: &[i32],
    c: &mut [i32],
    ldc: usize,
) {
    let steps = check_tiles(KR, a.len(), b.len(), panels, bias, c.len(), ldc);
    // SAFETY: as in `qs8_gemm_minmax_4x8c2_simd128`, with 8 i32 stored per row.
    unsafe {
        store_tiles_simd128(panels, c.as_mut_ptr(), ldc, |j| {
            tile_4x8c2_simd128(a.as_ptr(), b.as_ptr().add(j * steps * NR * KR), steps, bias)
        });
    }
}

/// `qs8_gemm_minmax_4x8c2` on the relaxed-SIMD layouts (`quads`, `quads_from_pairs`, the
/// quad bias): the tiles of `tile_4x8c4_relaxed` through `requantize_tiles_simd128`, the same
/// outputs bit for bit.
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
#[target_feature(enable = "relaxed-simd")]
#[allow(clippy::too_many_arguments)]
fn qs8_gemm_minmax_4x8c4_relaxed(
    a: &[i8],
    b: &[u8],
    panels: usize,
    bias: &[i32],
    rq: &[PreparedRequant; MR],
    params: &OutputParams,
    c: &mut [i8],
    ldc: usize,
) {
    assert!(relaxed::unsigned_dot(), "4x8c4 tiles without an exact relaxed dot");
    let steps = check_tiles(KR4, a.len(), b.len(), panels, bias, c.len(), ldc);
    // SAFETY: tile j reads a[..steps * 16] and b[j * steps * 32 ..][..steps * 32] for
    // j < panels, and the stores write c[r * ldc + j * 8 ..][..8] for r < MR, all in bounds
    // per the assert.
    unsafe {
        requantize_tiles_simd128(panels, rq, params, c.as_mut_ptr(), ldc, |j| {
            tile_4x8c4_relaxed(a.as_ptr(), b.as_ptr().add(j * steps * NR * KR4), steps, bias)
        });
    }
}

/// `qs8_gemm_4x8c2` on the relaxed-SIMD layouts: the tiles of `tile_4x8c4_relaxed`, stored as
/// they are.
#[cfg(all(target_arch = "wasm32", qp_relaxed_simd))]
#[target_feature(enable = "relaxed-simd")]
fn qs8_gemm_4x8c4_relaxed(
    a: &[i8],
    b: &[u8],
    panels: usize,
    bias: &[i32],
    c: &mut [i32],
    ldc: usize,
) {
    assert!(relaxed::unsigned_dot(), "4x8c4 tiles without an exact relaxed dot");
    let steps = check_tiles(KR4, a.len(), b.len(), panels, bias, c.len(), ldc);
    // SAFETY: as in `qs8_gemm_minmax_4x8c4_relaxed`, with 8 i32 stored per row.
    unsafe {
        store_tiles_simd128(panels, c.as_mut_ptr(), ldc, |j| {
            tile_4x8c4_relaxed(a.as_ptr(), b.as_ptr().add(j * steps * NR * KR4), steps, bias)
        });
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::test_util::{range_requantizers, reference_output, Rng};
    use super::*;

    const SENTINEL: i8 = 0x5a;

    /// One fully connected case: `m x k` input with stride `lda`, `n x k` weights.
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        lda: usize,
        ldc: usize,
        x: Vec<i8>,
        w: Vec<i8>,
        bias: Option<Vec<i32>>,
        zx: i32,
        zy: i32,
        qmin: i8,
        qmax: i8,
    }

    impl Case {
        fn new(rng: &mut Rng, m: usize, n: usize, k: usize, pad: usize) -> Case {
            let (lda, ldc) = (k + pad, n + 2 * pad);
            let zx = match rng.int(0, 3) {
                0 => -128,
                1 => 127,
                _ => rng.int(-128, 127) as i32,
            };
            Case {
                m,
                n,
                k,
                lda,
                ldc,
                x: rng.i8s(m * lda, -128, 127),
                w: rng.i8s(n * k, -127, 127),
                bias: (rng.int(0, 3) > 0)
                    .then(|| (0..n).map(|_| rng.int(-5000, 5000) as i32).collect()),
                zx,
                zy: rng.int(-128, 127) as i32,
                qmin: -128,
                qmax: 127,
            }
        }

        /// Exact accumulators `bias + Σ (x - zx) · w`, `[m][n]`.
        fn accumulators(&self) -> Vec<i64> {
            let mut acc = Vec::with_capacity(self.m * self.n);
            for i in 0..self.m {
                for c in 0..self.n {
                    let mut sum = self.bias.as_ref().map_or(0, |b| b[c] as i64);
                    for p in 0..self.k {
                        let x = self.x[i * self.lda + p] as i64 - self.zx as i64;
                        sum += x * self.w[c * self.k + p] as i64;
                    }
                    acc.push(sum);
                }
            }
            acc
        }

        fn check(&self, what: &str) {
            let acc = self.accumulators();
            let ranges: Vec<(i64, i64)> = (0..self.n)
                .map(|c| {
                    let col = (0..self.m).map(|i| acc[i * self.n + c]);
                    (col.clone().min().unwrap_or(0), col.max().unwrap_or(0))
                })
                .collect();
            let rq = range_requantizers(&ranges, self.zy);
            let panels =
                PackedWeightsQs8::new(&self.w, self.n, self.k, self.bias.as_deref(), self.zx);
            // The accumulators themselves, through the same driver.
            let mut x = vec![0; packed_x_len(self.k, self.m)];
            pack_x_transposed(&mut x, &self.x, self.k, self.m, self.lda);
            let mut sums = vec![i32::MIN; self.m * self.ldc + 3];
            gemm_packed(&panels, &x, self.m, &Accumulate, &mut sums, [1, self.ldc]);
            for (idx, &got) in sums.iter().enumerate() {
                let (i, c) = (idx / self.ldc, idx % self.ldc);
                let want = if i < self.m && c < self.n {
                    acc[i * self.n + c]
                } else {
                    i32::MIN as i64
                };
                assert_eq!(got as i64, want, "{what} (accumulators): out[{i}][{c}]");
            }
            // Channel-major, as the convolutions write: whole column panels take the 4x8
            // tiles (`4x8c4` with the relaxed dot).
            let mut by_channel = vec![i32::MIN; self.n * self.m];
            gemm_packed(&panels, &x, self.m, &Accumulate, &mut by_channel, [self.m, 1]);
            for (idx, &got) in by_channel.iter().enumerate() {
                let (c, i) = (idx / self.m, idx % self.m);
                assert_eq!(got as i64, acc[i * self.n + c], "{what} (channel-major): out[{c}][{i}]");
            }
            let rows = PackedWeightsQs8::for_rows(
                1,
                &self.w,
                self.n,
                self.k,
                self.bias.as_deref(),
                self.zx,
            );
            for (w, layout) in [(panels, "panels"), (rows, "rows")] {
                let what = format!("{what} ({layout})");
                let mut out = vec![SENTINEL; self.m * self.ldc + 3];
                let mut scratch = Vec::new();
                qs8_gemm(
                    &self.x,
                    self.m,
                    self.lda,
                    &w,
                    &rq,
                    self.zy,
                    self.qmin,
                    self.qmax,
                    &mut out,
                    self.ldc,
                    &mut scratch,
                );
                for (idx, &got) in out.iter().enumerate() {
                    let (i, c) = (idx / self.ldc, idx % self.ldc);
                    if i >= self.m || c >= self.n {
                        assert_eq!(got, SENTINEL, "{what}: wrote out[{i}][{c}]");
                        continue;
                    }
                    let want = reference_output(
                        acc[i * self.n + c],
                        &rq[c],
                        self.zy,
                        self.qmin,
                        self.qmax,
                    );
                    assert_eq!(
                        got,
                        want,
                        "{what}: out[{i}][{c}] (acc {})",
                        acc[i * self.n + c]
                    );
                }
            }
        }
    }

    #[test]
    fn sizes_around_the_tile() {
        let seed = 0x9e37_79b9_7f4a_7c15;
        let mut rng = Rng(seed);
        for m in [1, 2, 3, 5, 7, 8, 9, 16, 17] {
            for n in [1, 3, 4, 5, 8, 11, 13] {
                for k in [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 33, 64] {
                    let case = Case::new(&mut rng, m, n, k, 0);
                    case.check(&format!("seed {seed:#x} m={m} n={n} k={k} zx={}", case.zx));
                }
            }
        }
    }

    #[test]
    fn strides_clamps_and_extreme_values() {
        let seed = 0x1234_5678;
        let mut rng = Rng(seed);
        for (m, n, k) in [(1, 1, 1), (4, 8, 16), (7, 13, 31), (9, 29, 5), (13, 17, 97)] {
            for pad in [1, 3, 7] {
                for variant in 0..4 {
                    let mut case = Case::new(&mut rng, m, n, k, pad);
                    match variant {
                        // ReLU6-like clamp inside the range.
                        1 => (case.qmin, case.qmax) = (case.zy.min(100) as i8, 100),
                        // Most negative weights and inputs, both zero points at the ends.
                        2 => {
                            case.w.iter_mut().for_each(|v| *v = -128);
                            case.x.iter_mut().step_by(2).for_each(|v| *v = -128);
                            (case.zx, case.zy) = (127, -128);
                        }
                        3 => (case.zx, case.zy) = (-128, 127),
                        _ => {}
                    }
                    let what = format!(
                        "seed {seed:#x} m={m} n={n} k={k} pad={pad} variant {variant} zx={} zy={}",
                        case.zx, case.zy
                    );
                    case.check(&what);
                }
            }
        }
    }

    #[test]
    fn large_weights() {
        let seed = 77;
        let mut rng = Rng(seed);
        let case = Case::new(&mut rng, 19, 70, 1000, 1);
        case.check(&format!("seed {seed} large weights"));
    }

    #[test]
    fn row_layout() {
        // k = 17, n = 5: two blocks of 16; channel 4 lands in the second panel.
        let w: Vec<i8> = (0..85).map(|v| v as i8).collect();
        let p = PackedWeightsQs8::for_rows(1, &w, 5, 17, None, 0);
        assert_eq!(p.rows.len(), 2 * 2 * MR * ROW_BLOCK);
        assert_eq!(&p.rows[..16], &w[..16]); // channel 0, block 0
        assert_eq!(&p.rows[16..32], &w[17..33]); // channel 1, block 0
        assert_eq!(&p.rows[64..66], &[16, 0]); // channel 0, block 1: k = 16, then padding
        assert_eq!(&p.rows[128..144], &w[68..84]); // channel 4, block 0
        assert!(p.rows[144..]
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i == 48 { 84 } else { 0 }));
    }

    /// The simd128 row kernel against the scalar one on random panels, bit for bit.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_row_kernel_matches_scalar() {
        let mut rng = Rng(0x4c16);
        for blocks in [1, 2, 5, 80] {
            let panel = rng.i8s(blocks * MR * ROW_BLOCK, -128, 127);
            let x = rng.i8s(blocks * ROW_BLOCK, -128, 127);
            let bias: Vec<i32> = (0..MR).map(|_| rng.int(-1 << 20, 1 << 20) as i32).collect();
            assert_eq!(
                qs8_gemm_4x1c16_simd128(&panel, &x, &bias),
                qs8_gemm_4x1c16_scalar(&panel, &x, &bias),
                "{blocks} blocks"
            );
        }
    }

    #[test]
    fn packing_layouts() {
        // k = 3, n = 5: channel 4 lands in the second panel; the odd k pads with a zero.
        let w: Vec<i8> = (0..15).map(|v| v as i8).collect();
        let p = PackedWeightsQs8::new(&w, 5, 3, Some(&[1, 2, 3, 4, 5]), 2);
        assert_eq!(&p.w[..8], &[0, 1, 3, 4, 6, 7, 9, 10]);
        assert_eq!(&p.w[8..16], &[2, 0, 5, 0, 8, 0, 11, 0]);
        assert_eq!(&p.w[16..18], &[12, 13]);
        if relaxed::unsigned_dot() {
            // 4 k values per channel and step; k = 3 pads with a zero.
            assert_eq!(&p.quads[..8], &[0, 1, 2, 0, 3, 4, 5, 0]);
            assert_eq!(&p.quads[16..20], &[12, 13, 14, 0]);
            for (c, sum) in [3, 12, 21, 30, 39].into_iter().enumerate() {
                assert_eq!(p.quad_bias[c], p.bias[c] - 128 * sum, "channel {c}");
            }
        } else {
            assert!(p.quads.is_empty() && p.quad_bias.is_empty());
        }
        assert_eq!(
            p.bias,
            vec![
                1 - 2 * 3,
                2 - 2 * 12,
                3 - 2 * 21,
                4 - 2 * 30,
                5 - 2 * 39,
                0,
                0,
                0
            ]
        );
        // X of 3 rows x 9 columns (stride 10): the pack of rows equals the pack of columns.
        let x: Vec<i8> = (0..30).map(|v| v as i8).collect();
        let mut by_rows = vec![0x11; packed_x_len(3, 9)];
        pack_x(&mut by_rows, &x, 3, 9, 10);
        assert_eq!(&by_rows[..4], &[0, 10, 1, 11]);
        assert_eq!(&by_rows[16..20], &[20, 0, 21, 0]);
        let xt: Vec<i8> = (0..9)
            .flat_map(|j| (0..3).map(move |p| (p * 10 + j) as i8))
            .collect();
        let mut by_cols = vec![0x22; packed_x_len(3, 9)];
        pack_x_transposed(&mut by_cols, &xt, 3, 9, 3);
        assert_eq!(by_rows, by_cols);
    }

    #[test]
    #[should_panic(expected = "may overflow i32")]
    fn overflowing_accumulators_are_refused() {
        PackedWeightsQs8::new(&[127; 2], 1, 2, Some(&[i32::MAX - 100]), 0);
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_microkernel_matches_scalar_bit_for_bit() {
        let seed = 3;
        let mut rng = Rng(seed);
        for (steps, f64_tile) in [0, 1, 2, 5, 64, 301]
            .into_iter()
            .flat_map(|steps| [(steps, false), (steps, true)])
            .filter(|&(steps, f64_tile)| !f64_tile || steps <= 5)
        {
            for panels in [1, 3] {
                let a: Vec<i16> = rng
                    .i8s(steps * MR * KR, -128, 127)
                    .iter()
                    .map(|&v| v as i16)
                    .collect();
                let b = rng.i8s(panels * steps * NR * KR, -128, 127);
                let bias: Vec<i32> = (0..MR).map(|_| rng.int(-100_000, 100_000) as i32).collect();
                // Bounds that allow the fast path, then one that forces the general one;
                // shift 0 and above (multipliers of 1/2 and more) take the general path too.
                // With few steps, a bound of 2^21 (accumulators stay below 2^19 there) lets
                // every channel take the f64 formula without ties.
                let mut rq = [PreparedRequant::default(); MR];
                for (r, p) in rq.iter_mut().enumerate() {
                    let m = 2f64.powf(-20.0 + 21.0 * rng.unit());
                    let bound = if f64_tile {
                        1 << 21
                    } else if r == 3 && steps % 2 == 1 {
                        i32::MAX as u32
                    } else {
                        1 << 26
                    };
                    *p = PreparedRequant::new(&Requantizer::from_real(m), bound);
                }
                let params = OutputParams::new(rng.int(-128, 127) as i32, -100, 120);
                let ldc = panels * NR + 3;
                let mut want = vec![0i8; MR * ldc];
                let mut got = want.clone();
                qs8_gemm_minmax_4x8c2_scalar(&a, &b, panels, &bias, &rq, &params, &mut want, ldc);
                qs8_gemm_minmax_4x8c2_simd128(&a, &b, panels, &bias, &rq, &params, &mut got, ldc);
                assert_eq!(got, want, "seed {seed} steps={steps} panels={panels} f64 {f64_tile}");
                // The accumulator tiles, and the one-column kernel on every column of the
                // first panel, against the scalar tiles.
                let mut want_acc = vec![0i32; MR * ldc];
                let mut got_acc = vec![1i32; MR * ldc];
                qs8_gemm_4x8c2_scalar(&a, &b, panels, &bias, &mut want_acc, ldc);
                qs8_gemm_4x8c2_simd128(&a, &b, panels, &bias, &mut got_acc, ldc);
                for r in 0..MR {
                    let row = r * ldc..r * ldc + panels * NR;
                    assert_eq!(
                        got_acc[row.clone()],
                        want_acc[row],
                        "seed {seed} steps={steps} panels={panels} accumulators, row {r}"
                    );
                }
                let b0 = &b[..steps * NR * KR];
                for col in 0..NR {
                    let want1 = qs8_gemm_4x1c2_scalar(&a, b0, col, &bias);
                    assert_eq!(
                        qs8_gemm_4x1c2_simd128(&a, b0, col, &bias),
                        want1,
                        "seed {seed} steps={steps} 4x1 col={col}"
                    );
                    assert_eq!(
                        &want1[..],
                        &(0..MR).map(|r| want_acc[r * ldc + col]).collect::<Vec<_>>()[..]
                    );
                }
                #[cfg(qp_relaxed_simd)]
                if relaxed::unsigned_dot() {
                    // The same tiles in the relaxed layouts: the weights 4 k values per
                    // channel and step, X through `quads_from_pairs`, the bias offset.
                    let quads = (2 * steps).div_ceil(KR4);
                    let mut a4 = vec![0i8; quads * MR * KR4];
                    let mut bias4 = bias.clone();
                    for r in 0..MR {
                        for p in 0..2 * steps {
                            let v = a[p / KR * MR * KR + r * KR + p % KR];
                            a4[p / KR4 * MR * KR4 + r * KR4 + p % KR4] = v as i8;
                            bias4[r] -= 128 * v as i32;
                        }
                    }
                    let mut b4 = vec![0u8; panels * quads * NR * KR4];
                    relaxed::quads_from_pairs(&b, 2 * steps, &mut b4);
                    let mut got4 = vec![0i8; MR * ldc];
                    qs8_gemm_minmax_4x8c4_relaxed(&a4, &b4, panels, &bias4, &rq, &params, &mut got4, ldc);
                    assert_eq!(got4, want, "seed {seed} steps={steps} panels={panels} 4x8c4");
                    let mut got4_acc = vec![1i32; MR * ldc];
                    qs8_gemm_4x8c4_relaxed(&a4, &b4, panels, &bias4, &mut got4_acc, ldc);
                    for r in 0..MR {
                        let row = r * ldc..r * ldc + panels * NR;
                        assert_eq!(got4_acc[row.clone()], want_acc[row], "4x8c4 accumulators, row {r}");
                    }
                }
            }
        }
    }
}
