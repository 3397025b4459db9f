//! f32 convolution that adds its products in the order of onnxruntime's CPU execution provider
//! on WebAssembly with one thread (MLAS `MlasConv`; onnxruntime-web 1.30), so that a Conv which
//! onnxruntime runs in float gives the same f32 results here, bit for bit.
//!
//! # Why
//! In a QDQ file with int8 activations, onnxruntime leaves some Conv node units unfused and runs
//! them as DequantizeLinear → float Conv → QuantizeLinear (`engine::ort_fusion` says which). An
//! f32 sum of a few hundred products rounds differently in another order, and where it lands
//! near a rounding tie of the QuantizeLinear after it, another order gives another integer,
//! which then spreads through the network: computed in our own order (or exactly, in integers),
//! EfficientNet-Lite0's int8 file ended 2-3 output steps from onnxruntime. In this order the
//! int8 engine computes onnxruntime's integers (`tests/ort/qdq.test.mjs`).
//!
//! # The order
//! Per group and image, MLAS computes `C = A · B`, A the `M × K` filters and B the `K × N` input
//! or its im2col (`K = C/group · kh · kw` in (channel, row, column) order, padding reading 0,
//! `N = out_h · out_w`), then adds the bias and applies the activation (`MlasActivation`).
//! - K is cut into blocks of `stride_k(N, K)` (`MlasSgemmOperation`, `MlasConvOperation`).
//! - With two or more filters (`MlasSgemmKernel`), each block sums its products in k order
//!   starting from 0; the first block's sum is the output, each further block's sum is added
//!   to it (`block + C`).
//! - With one filter, MLAS calls its GEMV (`MlasGemvFloatKernel`): the first product of the
//!   first block starts the sum and the others are added one at a time in k order, except in
//!   the last `N mod 4` columns, which add four products at a time summed among themselves
//!   first (`C + (((p0 + p1) + p2) + p3)`, then the remaining ones singly).
//! - Which algorithm (`MlasConvPrepare`): a pointwise Conv (1×1, stride 1, no padding), and a
//!   single-channel one whose kernel spans the input's width (or its height, being one wide),
//!   is one GEMM over the whole K on the input itself (`GemmDirect`; the width-spanning case reads
//!   B transposed, which MLAS never hands to the GEMV); more filters than output positions is one
//!   GEMM on the full im2col (`ExpandThenGemm`); anything else runs one GEMM per K block
//!   (`ExpandThenGemmSegmented`). A single GEMM blocks K inside for two or more filters but not
//!   in the GEMV, so only a segmented single-filter convolution (a depthwise one) blocks its
//!   GEMV.
//!
//! Products are `x · w` and sums are plain IEEE f32 (WebAssembly has no fused multiply-add, and
//! MLAS's wasm kernels use none; Rust never fuses `a += x * w` either), and an IEEE sum does not
//! depend on the order of its two operands, so the vectorised loops here, which keep each
//! column's order of additions, give the same bits. Tested against a per-element reference of
//! this description, and against onnxruntime itself by `tests/ort/qdq.test.mjs`.

use super::conv::Conv2dShape;
use super::Activation;

/// MLAS's default N and K strides (`MLAS_SGEMM_STRIDEN`, `MLAS_SGEMM_STRIDEK`).
const STRIDE_N: usize = 128;
const STRIDE_K: usize = 128;

/// The K block MLAS uses for a GEMM of `n` columns and depth `k`: narrower (and N wider) while
/// half of it still covers a small K, wider (and N narrower, down to 16) while a narrower N
/// still covers a small N.
fn stride_k(n: usize, k: usize) -> usize {
    let (n, k) = (n.max(1), k.max(1));
    let mut stride_k = STRIDE_K;
    if n >= k {
        // MLAS widens its N stride as much, which changes no sum.
        while stride_k / 2 >= k {
            stride_k /= 2;
        }
    } else {
        let mut stride_n = STRIDE_N;
        while stride_n > 16 && stride_n / 2 >= n {
            stride_k *= 2;
            stride_n /= 2;
        }
    }
    stride_k
}

/// How a group's sums are formed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduction {
    /// Two or more filters, or B read transposed: blocks of `stride_k`, `block + C`.
    Gemm,
    /// One filter, one GEMV over the whole K (`GemmDirect`).
    GemvWhole,
    /// One filter, one GEMV per K block (`ExpandThenGemmSegmented`).
    GemvBlocked,
}

/// A convolution with constant weights, in MLAS's summation order.
pub struct MlasOrderConv2d {
    shape: Conv2dShape,
    /// `[out_c][K]`, as ONNX stores them.
    weights: Vec<f32>,
    bias: Option<Vec<f32>>,
    activation: Activation,
    reduction: Reduction,
    /// B is the input itself (pointwise): no im2col.
    direct: bool,
}

impl MlasOrderConv2d {
    pub fn new(shape: Conv2dShape, weights: &[f32], bias: Option<&[f32]>, activation: Activation) -> MlasOrderConv2d {
        let s = &shape;
        let channels = s.in_c / s.group;
        let (k, filters) = (channels * s.kernel_h * s.kernel_w, s.out_c / s.group);
        assert_eq!(weights.len(), s.out_c * k, "MlasOrderConv2d: weights for {} filters of {k}", s.out_c);
        if let Some(b) = bias {
            assert_eq!(b.len(), s.out_c, "MlasOrderConv2d: one bias per filter");
        }
        // MlasConvPrepare's tests. With stride 1 and no begin pads, the output size says there
        // is no end pad when the last window ends on the last input row (column).
        let no_end_pad = |out: usize, dilation: usize, kernel: usize, input: usize| out + dilation * (kernel - 1) == input;
        let unit = s.stride_h == 1
            && s.stride_w == 1
            && s.pad_top == 0
            && s.pad_left == 0
            && no_end_pad(s.out_h, s.dilation_h, s.kernel_h, s.in_h)
            && no_end_pad(s.out_w, s.dilation_w, s.kernel_w, s.in_w);
        let unit_dilation = s.dilation_h == 1 && s.dilation_w == 1;
        let direct = unit && k == channels;
        let spans_width = unit && unit_dilation && channels == 1 && s.kernel_w == s.in_w;
        let spans_height = unit && unit_dilation && channels == 1 && s.kernel_h == s.in_h && s.kernel_w == 1;
        let reduction = match () {
            _ if filters > 1 || spans_width => Reduction::Gemm,
            _ if direct || spans_height => Reduction::GemvWhole,
            _ => Reduction::GemvBlocked,
        };
        MlasOrderConv2d { shape, weights: weights.to_vec(), bias: bias.map(<[f32]>::to_vec), activation, reduction, direct }
    }

    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }

    /// One image: `input` `[in_c, in_h, in_w]`, `output` `[out_c, out_h, out_w]`; `scratch`
    /// holds the im2col and the block sums between calls.
    pub fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
        let s = &self.shape;
        let channels = s.in_c / s.group;
        let (k, n, filters) = (channels * s.kernel_h * s.kernel_w, s.out_h * s.out_w, s.out_c / s.group);
        assert_eq!(input.len(), s.in_c * s.in_h * s.in_w, "MlasOrderConv2d: input size");
        assert_eq!(output.len(), s.out_c * n, "MlasOrderConv2d: output size");
        if n == 0 {
            return;
        }
        let block = stride_k(n, k);
        let columns = if self.direct { 0 } else { k * n };
        scratch.clear();
        scratch.resize(columns + 4 * TILE_N, 0.0);
        let (cols, sums) = scratch.split_at_mut(columns);
        for g in 0..s.group {
            let b: &[f32] = if self.direct {
                &input[g * channels * n..][..k * n]
            } else {
                im2col(input, s, g, cols);
                cols
            };
            let a = &self.weights[g * filters * k..][..filters * k];
            let c = &mut output[g * filters * n..][..filters * n];
            match self.reduction {
                // No input channels: a sum of nothing.
                _ if k == 0 => c.fill(0.0),
                Reduction::Gemm => gemm_blocked(a, b, c, k, n, block, sums),
                Reduction::GemvWhole => gemv(a, b, c, n, k),
                Reduction::GemvBlocked => gemv(a, b, c, n, block),
            }
            for (f, row) in c.chunks_exact_mut(n).enumerate() {
                if let Some(bias) = &self.bias {
                    let b = bias[g * filters + f];
                    row.iter_mut().for_each(|v| *v += b);
                }
                self.activation.apply(row);
            }
        }
    }
}

/// Group `g`'s im2col, `[K][N]`: row `(c, i, j)` holds input channel `c` at kernel tap
/// `(i, j)` for every output position, 0 in the padding.
fn im2col(x: &[f32], s: &Conv2dShape, g: usize, cols: &mut [f32]) {
    let channels = s.in_c / s.group;
    let n = s.out_h * s.out_w;
    let mut rows = cols.chunks_exact_mut(n);
    for c in 0..channels {
        let plane = &x[(g * channels + c) * s.in_h * s.in_w..][..s.in_h * s.in_w];
        for i in 0..s.kernel_h {
            for j in 0..s.kernel_w {
                let row = rows.next().expect("K rows");
                for oy in 0..s.out_h {
                    let iy = (oy * s.stride_h + i * s.dilation_h) as isize - s.pad_top as isize;
                    let out = &mut row[oy * s.out_w..][..s.out_w];
                    if iy < 0 || iy >= s.in_h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &plane[iy as usize * s.in_w..][..s.in_w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * s.stride_w + j * s.dilation_w) as isize - s.pad_left as isize;
                        *o = if ix < 0 || ix >= s.in_w as isize { 0.0 } else { line[ix as usize] };
                    }
                }
            }
        }
    }
}

/// Columns per tile of [`gemm_blocked`]: four rows of block sums (8 KiB) stay in L1.
const TILE_N: usize = 512;

/// `MlasSgemmKernel` over K blocks: each block's sum from 0 in k order; the first is the
/// output, later ones are added to it. Four filters share each input row, a tile of columns at
/// a time, which changes no output's order. `acc` holds `4 · TILE_N` block sums.
fn gemm_blocked(a: &[f32], b: &[f32], c: &mut [f32], k: usize, n: usize, block: usize, acc: &mut [f32]) {
    let filters = c.len() / n;
    for n0 in (0..n).step_by(TILE_N) {
        let width = (n - n0).min(TILE_N);
        for f0 in (0..filters).step_by(4) {
            let rows = (filters - f0).min(4);
            for k0 in (0..k).step_by(block) {
                acc.fill(0.0);
                for kk in k0..(k0 + block).min(k) {
                    let x = &b[kk * n + n0..][..width];
                    for (r, sums) in acc.chunks_exact_mut(TILE_N).take(rows).enumerate() {
                        let w = a[(f0 + r) * k + kk];
                        sums[..width].iter_mut().zip(x).for_each(|(s, &x)| *s += x * w);
                    }
                }
                for (r, sums) in acc.chunks_exact(TILE_N).take(rows).enumerate() {
                    let out = &mut c[(f0 + r) * n + n0..][..width];
                    if k0 == 0 {
                        out.copy_from_slice(&sums[..width]);
                    } else {
                        out.iter_mut().zip(&sums[..width]).for_each(|(c, &s)| *c += s);
                    }
                }
            }
        }
    }
}

/// `MlasGemvFloatKernel` (one filter `a`) over K blocks of `block`: the first product starts
/// the sum, products are added singly, except in the last `n mod 4` columns where each run of
/// four is summed first.
fn gemv(a: &[f32], b: &[f32], c: &mut [f32], n: usize, block: usize) {
    let k = a.len();
    let vector = n / 4 * 4;
    let line = |kk: usize| &b[kk * n..][..n];
    for k0 in (0..k).step_by(block) {
        let end = (k0 + block).min(k);
        let mut kk = k0;
        if k0 == 0 {
            c.iter_mut().zip(line(0)).for_each(|(c, &x)| *c = a[0] * x);
            kk = 1;
        }
        while end - kk >= 4 {
            for q in 0..4 {
                let w = a[kk + q];
                c[..vector].iter_mut().zip(&line(kk + q)[..vector]).for_each(|(c, &x)| *c += w * x);
            }
            for (j, c) in c.iter_mut().enumerate().skip(vector) {
                let p = |q: usize| a[kk + q] * line(kk + q)[j];
                *c += ((p(0) + p(1)) + p(2)) + p(3);
            }
            kk += 4;
        }
        for (kk, &w) in a.iter().enumerate().take(end).skip(kk) {
            c.iter_mut().zip(line(kk)).for_each(|(c, &x)| *c += w * x);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::kernels::conv::PackedConv2d;

    fn shape(in_c: usize, hw: [usize; 2], out_c: usize, kernel: [usize; 2], stride: usize, pad: usize, group: usize) -> Conv2dShape {
        let out = |i: usize| (hw[i] + 2 * pad - kernel[i]) / stride + 1;
        Conv2dShape {
            in_c,
            in_h: hw[0],
            in_w: hw[1],
            out_c,
            out_h: out(0),
            out_w: out(1),
            kernel_h: kernel[0],
            kernel_w: kernel[1],
            stride_h: stride,
            stride_w: stride,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: pad,
            pad_left: pad,
            group,
        }
    }

    /// Values of very different magnitudes, so that every change of order shows in the bits.
    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let unit = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                unit * [1.0, 37.0, 1e-3, 4096.0][(state & 3) as usize]
            })
            .collect()
    }

    /// Output `(f, y)` of one image written per element from the module docs: the products of
    /// K in (channel, row, column) order, summed as `reduction` says.
    fn reference(s: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, reduction: Reduction, block: usize) -> Vec<f32> {
        let channels = s.in_c / s.group;
        let (k, n, filters) = (channels * s.kernel_h * s.kernel_w, s.out_h * s.out_w, s.out_c / s.group);
        let mut y = vec![0f32; s.out_c * n];
        for f in 0..s.out_c {
            let g = f / filters;
            for p in 0..n {
                let (oy, ox) = (p / s.out_w, p % s.out_w);
                let product = |kk: usize| {
                    let (c, i, j) = (kk / (s.kernel_h * s.kernel_w), kk / s.kernel_w % s.kernel_h, kk % s.kernel_w);
                    let iy = (oy * s.stride_h + i) as isize - s.pad_top as isize;
                    let ix = (ox * s.stride_w + j) as isize - s.pad_left as isize;
                    let inside = iy >= 0 && ix >= 0 && (iy as usize) < s.in_h && (ix as usize) < s.in_w;
                    let v = if inside { x[((g * channels + c) * s.in_h + iy as usize) * s.in_w + ix as usize] } else { 0.0 };
                    v * w[f * k + kk]
                };
                let tail = p >= n / 4 * 4;
                let mut total = 0f32;
                let (mut kk, mut first_block) = (0, true);
                while kk < k {
                    let end = (kk + if reduction == Reduction::GemvWhole { k } else { block }).min(k);
                    if reduction == Reduction::Gemm {
                        let mut sum = 0f32;
                        for q in kk..end {
                            sum += product(q);
                        }
                        total = if first_block { sum } else { sum + total };
                        kk = end;
                    } else {
                        if first_block {
                            total = product(kk);
                            kk += 1;
                        }
                        while end - kk >= 4 {
                            if tail {
                                total += ((product(kk) + product(kk + 1)) + product(kk + 2)) + product(kk + 3);
                            } else {
                                for q in kk..kk + 4 {
                                    total += product(q);
                                }
                            }
                            kk += 4;
                        }
                        while kk < end {
                            total += product(kk);
                            kk += 1;
                        }
                    }
                    first_block = false;
                }
                y[f * n + p] = total + bias.map_or(0.0, |b| b[f]);
            }
        }
        y
    }

    fn check(s: Conv2dShape, expected: Reduction, expected_block: usize, seed: u32) {
        let k = s.in_c / s.group * s.kernel_h * s.kernel_w;
        let x = data(s.in_c * s.in_h * s.in_w, seed);
        let w = data(s.out_c * k, seed + 1);
        let bias = data(s.out_c, seed + 2);
        let conv = MlasOrderConv2d::new(s, &w, Some(&bias), Activation::Identity);
        assert_eq!(conv.reduction, expected, "{s:?}");
        assert_eq!(stride_k(s.out_h * s.out_w, k), expected_block, "{s:?}");
        let mut y = vec![0f32; s.out_c * s.out_h * s.out_w];
        conv.run(&x, &mut y, &mut Vec::new());
        let want = reference(&s, &x, &w, Some(&bias), expected, expected_block);
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{s:?} output {i}: {a} != {b}");
        }
        // And it is a convolution: our own FP32 kernel agrees up to rounding.
        let mut ours = vec![0f32; y.len()];
        PackedConv2d::new(s, &w, Some(&bias), Activation::Identity).run(&x, &mut ours, &mut Vec::new());
        let scale = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in y.iter().zip(&ours) {
            assert!((a - b).abs() <= 1e-4 * scale, "{s:?}: {a} against {b}");
        }
    }

    #[test]
    fn stride_k_follows_mlas() {
        // N >= K: halved while half still covers K; N < K: doubled while N/2 still covers N.
        assert_eq!(stride_k(3136, 24), 32);
        assert_eq!(stride_k(3136, 128), 128);
        assert_eq!(stride_k(3136, 1152), 128);
        assert_eq!(stride_k(49, 1152), 256);
        assert_eq!(stride_k(7, 300), 1024);
        assert_eq!(stride_k(4096, 9), 16);
    }

    #[test]
    fn pointwise_blocks_k_in_the_gemm() {
        // K = 300 in blocks of 128 (N >= K), in one block of 1024 (N < K), and K = 24 in one of 32.
        check(shape(300, [19, 17], 5, [1, 1], 1, 0, 1), Reduction::Gemm, 128, 1);
        check(shape(300, [3, 5], 6, [1, 1], 1, 0, 1), Reduction::Gemm, 1024, 2);
        check(shape(24, [9, 9], 7, [1, 1], 1, 0, 1), Reduction::Gemm, 32, 3);
        // More columns than a tile (N = 667), six filters: a tile and a half, a group and a half.
        check(shape(20, [23, 29], 6, [1, 1], 1, 0, 1), Reduction::Gemm, 32, 16);
    }

    #[test]
    fn a_single_pointwise_filter_is_one_gemv_over_the_whole_k() {
        // A whole-K GEMV (a segmented one would block K = 300 at 512 as well, so the blocked
        // case is below); N = 23 leaves three tail columns.
        check(shape(300, [1, 23], 1, [1, 1], 1, 0, 1), Reduction::GemvWhole, 512, 4);
        // Grouped pointwise: one filter per group.
        check(shape(12, [5, 7], 4, [1, 1], 1, 0, 4), Reduction::GemvWhole, 4, 5);
    }

    #[test]
    fn depthwise_is_a_blocked_gemv_with_tail_columns() {
        // 3×3 and 5×5 depthwise, stride 1 and 2, padded: N mod 4 = 1, 2, 3 and 0.
        check(shape(6, [9, 9], 6, [3, 3], 1, 1, 6), Reduction::GemvBlocked, 16, 6);
        check(shape(5, [10, 11], 5, [3, 3], 2, 1, 5), Reduction::GemvBlocked, 16, 7);
        check(shape(3, [7, 13], 3, [5, 5], 1, 2, 3), Reduction::GemvBlocked, 32, 8);
        check(shape(4, [8, 8], 4, [3, 3], 1, 1, 4), Reduction::GemvBlocked, 16, 9);
        // A single-filter convolution deep enough for two blocks (K = 27 · 9 = 243 > 128).
        check(shape(27, [12, 12], 1, [3, 3], 1, 1, 1), Reduction::GemvBlocked, 128, 10);
    }

    #[test]
    fn dense_kxk_convolutions_block_k() {
        // BlazeFace's first layer (5×5 stride 2 on 3 channels) and a deep 3×3 (K = 576).
        check(shape(3, [32, 32], 24, [5, 5], 2, 2, 1), Reduction::Gemm, 128, 11);
        check(shape(64, [9, 9], 10, [3, 3], 1, 1, 1), Reduction::Gemm, 128, 12);
        // More filters than outputs (ExpandThenGemm): the GEMM's own blocks.
        check(shape(40, [2, 2], 9, [1, 1], 2, 0, 1), Reduction::Gemm, 1024, 13);
    }

    #[test]
    fn single_channel_kernels_spanning_the_input_are_direct_gemms() {
        // As wide as the input: B transposed, never the GEMV.
        check(shape(1, [9, 6], 1, [3, 6], 1, 0, 1), Reduction::Gemm, 1024, 14);
        // As tall as the input and one wide: the whole-K GEMV.
        check(shape(1, [7, 9], 1, [7, 1], 1, 0, 1), Reduction::GemvWhole, 8, 15);
    }

    #[test]
    fn empty_outputs_and_inputs_do_not_panic() {
        // No output positions: nothing to write.
        let s = Conv2dShape { out_h: 0, ..shape(2, [2, 2], 3, [3, 3], 1, 1, 1) };
        MlasOrderConv2d::new(s, &[0.5; 54], None, Activation::Identity).run(&[1.0; 8], &mut [], &mut Vec::new());
        // No input channels: the bias alone.
        let s = shape(0, [2, 2], 3, [1, 1], 1, 0, 1);
        let mut y = [9.0; 12];
        MlasOrderConv2d::new(s, &[], Some(&[1.0, -2.0, 3.0]), Activation::Relu).run(&[], &mut y, &mut Vec::new());
        assert_eq!(y, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]);
    }

    #[test]
    fn the_order_shows_in_the_bits() {
        // The reference differs from a plain sequential sum on these data, so the checks above
        // would catch a kernel that ignored the blocks or the tail columns.
        let s = shape(300, [19, 17], 5, [1, 1], 1, 0, 1);
        let x = data(300 * 19 * 17, 1);
        let w = data(5 * 300, 2);
        let blocked = reference(&s, &x, &w, None, Reduction::Gemm, 128);
        let sequential = reference(&s, &x, &w, None, Reduction::Gemm, 300);
        assert!(blocked.iter().zip(&sequential).any(|(a, b)| a != b));
        let s = shape(300, [1, 23], 1, [1, 1], 1, 0, 1);
        let x = data(300 * 23, 4);
        let w = data(300, 5);
        let gemv = reference(&s, &x, &w, None, Reduction::GemvWhole, 128);
        let gemm = reference(&s, &x, &w, None, Reduction::Gemm, 300);
        assert!(gemv[20..].iter().zip(&gemm[20..]).any(|(a, b)| a != b), "tail columns");
        assert!(gemv[..20].iter().zip(&gemm[..20]).all(|(a, b)| a == b), "vector columns are sequential");
    }
}
