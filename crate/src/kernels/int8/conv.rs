//! Int8 2-D convolution on one NCHW image, weights packed at load time.
//!
//! # Contract
//! - Input `[in_c][in_h][in_w]` and output `[out_c][out_h][out_w]` in int8; weights in ONNX
//!   layout `[out_c][in_c / group][kh][kw]`, symmetric per output channel; bias in i32 at scale
//!   `sx · sw[c]`. The geometry is the f32 [`Conv2dShape`]: the caller gives the output size and
//!   the begin pads, which makes the end pads implicit.
//! - Every read outside the input is the **input zero point** (a real 0), on every path.
//! - Each output is `clamp(zy + requant[c](bias[c] + Σ (x - zx) · w), qmin, qmax)` with the
//!   exact i32 sum (see `int8`'s numerics); all paths therefore agree bit for bit with each
//!   other and with the scalar reference of the tests.
//!
//! # Paths of `PackedQs8Conv2d`, chosen once at construction
//! - Depthwise (`group == in_c`, any channel multiplier): each input plane is copied into
//!   `scratch` with a border of the input zero point, then a direct kernel computes each output
//!   plane. 3x3 and 5x5 with stride 1 or 2 use `qs8_dwconv2d_chw_minmax_kxk` (simd128: pairs of
//!   taps interleaved byte by byte and multiplied by the weight pair with `i32x4.dot_i16x8_s`,
//!   16 outputs of a row at a time for stride 1 and 8 for stride 2); other kernels use
//!   `qs8_dwconv2d_chw_minmax_scalar`.
//! - Pointwise (1x1, stride 1, no padding): the input already is `X = [in_c][h*w]`; it is
//!   packed block by block and multiplied by the weights packed at load (`gemm`).
//! - Im2col (everything else, per group): the im2col matrix is written straight into the packed
//!   `X` layout, block by block, then multiplied.
//!
//! Blocks of `X` hold about `X_BLOCK_BYTES`, so a packed block is still in cache when the GEMM
//! reads it and `scratch` stays small.
//!
//! # Tests
//! Every path (depthwise 3x3/5x5 at stride 1 and 2, multiplier 2, generic depthwise, pointwise,
//! grouped, dilated, strided, asymmetric pads) with non-zero and extreme zero points, against an
//! exact i64 convolution and the same requantizers; natively and on wasm32 with simd128.

use super::super::conv::Conv2dShape;
use super::gemm::{self, PackedWeightsQs8, NR};
use super::requant::{requantize, OutputParams, Requantizer};

/// Bytes of packed `X` per GEMM block.
const X_BLOCK_BYTES: usize = 32 * 1024;

/// A convolution with its weights packed for the path chosen for its shape.
#[derive(Clone, Debug)]
pub struct PackedQs8Conv2d {
    shape: Conv2dShape,
    input_zero_point: i8,
    requant: Vec<Requantizer>,
    params: OutputParams,
    path: Path,
}

#[derive(Clone, Debug)]
enum Path {
    /// Weights `[out_c][kh * kw]`, zero-point-corrected bias per channel, and the direct
    /// kernel for the shape.
    Depthwise {
        weight: Vec<i8>,
        bias: Vec<i32>,
        kernel: DwKernel,
    },
    /// Per group, weights `[out_c / group][in_c / group]`.
    Pointwise { w: Vec<PackedWeightsQs8> },
    /// Per group, weights `[out_c / group][in_c / group * kh * kw]`.
    Im2col { w: Vec<PackedWeightsQs8> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Depthwise,
    Pointwise,
    Im2col,
}

impl PathKind {
    fn choose(s: &Conv2dShape) -> PathKind {
        if s.group == s.in_c {
            PathKind::Depthwise
        } else if (
            s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_top, s.pad_left,
        ) == (1, 1, 1, 1, 0, 0)
            && (s.out_h, s.out_w) == (s.in_h, s.in_w)
        {
            PathKind::Pointwise
        } else {
            PathKind::Im2col
        }
    }
}

impl PackedQs8Conv2d {
    /// Packs `weight_q` (`[out_c][in_c / group][kh][kw]`) and `bias_q` (`[out_c]`, zeros if
    /// `None`) for `shape`, folding in the input zero point. `requant` has one requantizer per
    /// output channel (see `channel_requantizers`); `qmin`/`qmax` carry a fused ReLU/Clip.
    ///
    /// Panics on an impossible geometry, mismatched sizes, zero points outside int8, an empty
    /// clamp, or accumulators that could overflow i32.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: Conv2dShape,
        weight_q: &[i8],
        bias_q: Option<&[i32]>,
        input_zero_point: i32,
        requant: Vec<Requantizer>,
        output_zero_point: i32,
        qmin: i8,
        qmax: i8,
    ) -> PackedQs8Conv2d {
        let s = shape;
        assert!(
            s.group > 0 && s.in_c % s.group == 0 && s.out_c % s.group == 0,
            "channels {}->{} not divisible into {} groups",
            s.in_c,
            s.out_c,
            s.group
        );
        assert!(
            [
                s.kernel_h,
                s.kernel_w,
                s.stride_h,
                s.stride_w,
                s.dilation_h,
                s.dilation_w
            ]
            .iter()
            .all(|&v| v > 0),
            "kernel, stride and dilation must be positive: {s:?}"
        );
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let kdim = icg * s.kernel_h * s.kernel_w;
        assert_eq!(
            weight_q.len(),
            s.out_c * kdim,
            "qs8 conv weight size for {s:?}"
        );
        assert_eq!(
            requant.len(),
            s.out_c,
            "qs8 conv: one requantizer per output channel"
        );
        let params = OutputParams::new(output_zero_point, qmin, qmax);
        let pack_groups = || -> Vec<PackedWeightsQs8> {
            (0..s.group)
                .map(|g| {
                    PackedWeightsQs8::new(
                        &weight_q[g * ocg * kdim..][..ocg * kdim],
                        ocg,
                        kdim,
                        bias_q.map(|b| &b[g * ocg..][..ocg]),
                        input_zero_point,
                    )
                })
                .collect()
        };
        let path = match PathKind::choose(&s) {
            PathKind::Depthwise => {
                // The GEMM packer computes the same corrected bias (and its overflow check);
                // the depthwise kernels then read the weights unpacked.
                let packed =
                    PackedWeightsQs8::new(weight_q, s.out_c, kdim, bias_q, input_zero_point);
                Path::Depthwise {
                    weight: weight_q.to_vec(),
                    bias: (0..s.out_c).map(|c| packed.corrected_bias(c)).collect(),
                    kernel: dw_kernel_for(&s),
                }
            }
            PathKind::Pointwise => Path::Pointwise { w: pack_groups() },
            PathKind::Im2col => Path::Im2col { w: pack_groups() },
        };
        PackedQs8Conv2d {
            shape,
            input_zero_point: input_zero_point as i8,
            requant,
            params,
            path,
        }
    }

    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }

    /// Convolves one image. `scratch` is grown as needed and reused across calls, so a warm call
    /// does not allocate; its contents on entry do not matter.
    pub fn run(&self, input: &[i8], output: &mut [i8], scratch: &mut Vec<i8>) {
        let s = &self.shape;
        assert_eq!(
            input.len(),
            s.in_c * s.in_h * s.in_w,
            "qs8 conv input size for {s:?}"
        );
        assert_eq!(
            output.len(),
            s.out_c * s.out_h * s.out_w,
            "qs8 conv output size for {s:?}"
        );
        if output.is_empty() {
            return;
        }
        match &self.path {
            Path::Depthwise {
                weight,
                bias,
                kernel,
            } => self.run_depthwise(weight, bias, *kernel, input, output, scratch),
            Path::Pointwise { w } => {
                let (icg, hw) = (s.in_c / s.group, s.in_h * s.in_w);
                self.run_gemm(w, input, output, scratch, |dst, x, n0, nc| {
                    gemm::pack_x(dst, &x[n0..], icg, nc, hw)
                });
            }
            Path::Im2col { w } => {
                let zx = self.input_zero_point;
                self.run_gemm(w, input, output, scratch, |dst, x, n0, nc| {
                    im2col_packed(dst, x, s, zx, n0, nc)
                });
            }
        }
    }

    /// Per group and per block of output pixels: `fill(dst, group_input, n0, nc)` packs
    /// columns `n0..n0 + nc` of `X` into `dst`, then the GEMM writes them to the output.
    fn run_gemm(
        &self,
        w: &[PackedWeightsQs8],
        input: &[i8],
        output: &mut [i8],
        scratch: &mut Vec<i8>,
        fill: impl Fn(&mut [i8], &[i8], usize, usize),
    ) {
        let s = &self.shape;
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let (in_len, n) = (icg * s.in_h * s.in_w, s.out_h * s.out_w);
        let kc = (icg * s.kernel_h * s.kernel_w).next_multiple_of(2);
        let block = (X_BLOCK_BYTES / kc.max(1) / NR * NR).clamp(NR, n.next_multiple_of(NR));
        let dst = gemm::grow(scratch, gemm::packed_x_len(kc, block));
        for (g, w) in w.iter().enumerate() {
            let x = &input[g * in_len..][..in_len];
            let requant = &self.requant[g * ocg..][..ocg];
            for n0 in (0..n).step_by(block) {
                let nc = block.min(n - n0);
                let packed = &mut dst[..gemm::packed_x_len(w.k(), nc)];
                fill(packed, x, n0, nc);
                let out = &mut output[g * ocg * n + n0..];
                gemm::gemm_packed(w, packed, nc, requant, &self.params, out, [n, 1]);
            }
        }
    }

    fn run_depthwise(
        &self,
        weight: &[i8],
        bias: &[i32],
        kernel: DwKernel,
        input: &[i8],
        output: &mut [i8],
        scratch: &mut Vec<i8>,
    ) {
        let s = &self.shape;
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        // The padded plane covers every tap of every output, and at least the whole input; its
        // rows are long enough for the simd128 kernels' last block.
        let ph = (s.pad_top + s.in_h).max((s.out_h - 1) * s.stride_h + (kh - 1) * s.dilation_h + 1);
        let pw = (s.pad_left + s.in_w)
            .max((s.out_w - 1) * s.stride_w + (kw - 1) * s.dilation_w + 1)
            .max(dw_row_len(s.out_w, s.stride_w, kw));
        let plane = gemm::grow(scratch, ph * pw);
        let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let multiplier = s.out_c / s.in_c;
        for ci in 0..s.in_c {
            pad_plane(
                plane,
                &input[ci * in_plane..][..in_plane],
                s,
                pw,
                self.input_zero_point,
            );
            for co in ci * multiplier..(ci + 1) * multiplier {
                kernel(&mut DwArgs {
                    input: plane,
                    pw,
                    weight: &weight[co * kh * kw..][..kh * kw],
                    bias: bias[co],
                    requant: &self.requant[co],
                    params: &self.params,
                    output: &mut output[co * out_plane..][..out_plane],
                    out_h: s.out_h,
                    out_w: s.out_w,
                    kernel: [kh, kw],
                    stride: [s.stride_h, s.stride_w],
                    dilation: [s.dilation_h, s.dilation_w],
                });
            }
        }
    }
}

/// Writes columns `n0..n0 + nc` of the im2col matrix of one group's input `x`
/// (`[in_c / group][in_h][in_w]`) into `dst` in the packed `X` layout of the GEMM: row
/// `p = (ci * kh + ky) * kw + kx`, column `oy * out_w + ox`, value
/// `x[ci][oy * sh + ky * dh - pad_top][ox * sw + kx * dw - pad_left]`, `zx` outside `x`.
/// Every byte of `dst` (`packed_x_len(k, nc)`) is written.
fn im2col_packed(dst: &mut [i8], x: &[i8], s: &Conv2dShape, zx: i8, n0: usize, nc: usize) {
    let icg = s.in_c / s.group;
    let taps = s.kernel_h * s.kernel_w;
    let k = icg * taps;
    let kc = k.next_multiple_of(2);
    let (ih, iw) = (s.in_h as isize, s.in_w as isize);
    let (sw, dh, dw) = (
        s.stride_w as isize,
        s.dilation_h as isize,
        s.dilation_w as isize,
    );
    assert_eq!(dst.len(), gemm::packed_x_len(k, nc));
    assert!(x.len() >= icg * s.in_h * s.in_w);
    let plane_len = s.in_h * s.in_w;
    let at = |plane: &[i8], y: isize, xi: isize| {
        if (0..ih).contains(&y) && (0..iw).contains(&xi) {
            plane[(y * iw + xi) as usize]
        } else {
            zx
        }
    };
    for (j, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let col = n0 + j * NR;
        let cols = NR.min(n0 + nc - col);
        // Top-left input position of each lane's receptive field; None for padding lanes.
        let mut origin = [None; NR];
        for (c, o) in origin.iter_mut().enumerate().take(cols) {
            let (oy, ox) = ((col + c) / s.out_w, (col + c) % s.out_w);
            *o = Some((
                (oy * s.stride_h) as isize - s.pad_top as isize,
                (ox * s.stride_w) as isize - s.pad_left as isize,
            ));
        }
        // All lanes on one output row: one input row per tap, lanes `sw` apart.
        let one_row = cols == NR && col % s.out_w + NR <= s.out_w;
        if k % 2 == 1 {
            // The second half of the last pair multiplies zero weights; keep it deterministic.
            let last = &mut panel[(kc / 2 - 1) * 2 * NR..];
            last.iter_mut().skip(1).step_by(2).for_each(|v| *v = 0);
        }
        for p in 0..k {
            let (ci, tap) = (p / taps, p % taps);
            let (ky, kx) = ((tap / s.kernel_w) as isize, (tap % s.kernel_w) as isize);
            let plane = &x[ci * plane_len..][..plane_len];
            // Lane c of row p is at step[2 * c + p % 2] of its k pair.
            let step = &mut panel[p / 2 * 2 * NR..][p % 2..2 * NR];
            let lanes = step.iter_mut().step_by(2);
            match (one_row, origin[0]) {
                (true, Some((y0, x0))) => {
                    let (y, xs) = (y0 + ky * dh, x0 + kx * dw);
                    if (0..ih).contains(&y) && xs >= 0 && xs + (NR as isize - 1) * sw < iw {
                        let src = &plane[(y * iw + xs) as usize..];
                        let src = src.iter().step_by(sw as usize);
                        lanes.zip(src).for_each(|(v, &s)| *v = s);
                    } else {
                        lanes
                            .enumerate()
                            .for_each(|(c, v)| *v = at(plane, y, xs + c as isize * sw));
                    }
                }
                _ => {
                    for (v, o) in lanes.zip(&origin) {
                        *v = o.map_or(0, |(y0, x0)| at(plane, y0 + ky * dh, x0 + kx * dw));
                    }
                }
            }
        }
    }
}

/// The row length of a padded plane that the simd128 depthwise kernels need: their last
/// block of 16 outputs (stride 1) or 8 (stride 2) reads 16 bytes per tap from its first output
/// position, which may run past the last output of the row.
fn dw_row_len(out_w: usize, stride: usize, kernel: usize) -> usize {
    out_w.next_multiple_of(16) * stride + kernel
}

/// Copies input plane `x` into `dst` (rows of `pw`) at
/// (`pad_top`, `pad_left`), filling everything else with the zero point `zx`.
fn pad_plane(dst: &mut [i8], x: &[i8], s: &Conv2dShape, pw: usize, zx: i8) {
    let (top, left, w) = (s.pad_top, s.pad_left, s.in_w);
    for (y, row) in dst.chunks_exact_mut(pw).enumerate() {
        match y.checked_sub(top).filter(|&iy| iy < s.in_h) {
            Some(iy) => {
                row[..left].fill(zx);
                row[left..left + w].copy_from_slice(&x[iy * w..][..w]);
                row[left + w..].fill(zx);
            }
            None => row.fill(zx),
        }
    }
}

/// One depthwise output plane computed from one padded input plane.
struct DwArgs<'a> {
    /// The padded plane, rows of `pw` bytes.
    input: &'a [i8],
    pw: usize,
    /// `kh * kw` taps, row-major.
    weight: &'a [i8],
    /// The zero-point-corrected bias `bias - zx · Σ w`.
    bias: i32,
    requant: &'a Requantizer,
    params: &'a OutputParams,
    /// `out_h * out_w`.
    output: &'a mut [i8],
    out_h: usize,
    out_w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
}

impl DwArgs<'_> {
    /// Panics unless every tap of every output lies in `input`.
    fn check(&self) {
        let span = |o: usize, i: usize| {
            (o - 1) * self.stride[i] + (self.kernel[i] - 1) * self.dilation[i] + 1
        };
        assert_eq!(self.weight.len(), self.kernel[0] * self.kernel[1]);
        assert_eq!(self.output.len(), self.out_h * self.out_w);
        assert!(
            self.pw >= span(self.out_w, 1) && self.input.len() >= span(self.out_h, 0) * self.pw
        );
    }
}

type DwKernel = fn(&mut DwArgs);

/// The depthwise kernel for a shape: specialised for the common 3x3 and 5x5 with stride 1 or
/// 2, generic otherwise.
fn dw_kernel_for(s: &Conv2dShape) -> DwKernel {
    match (
        s.kernel_h,
        s.kernel_w,
        s.stride_h,
        s.stride_w,
        s.dilation_h,
        s.dilation_w,
    ) {
        (3, 3, 1, 1, 1, 1) => qs8_dwconv2d_chw_minmax_kxk::<3, 1>,
        (3, 3, 2, 2, 1, 1) => qs8_dwconv2d_chw_minmax_kxk::<3, 2>,
        (5, 5, 1, 1, 1, 1) => qs8_dwconv2d_chw_minmax_kxk::<5, 1>,
        (5, 5, 2, 2, 1, 1) => qs8_dwconv2d_chw_minmax_kxk::<5, 2>,
        _ => qs8_dwconv2d_chw_minmax_scalar,
    }
}

/// Any kernel, stride and dilation: `out[oy][ox] = requantize(bias + Σ_{ky, kx} w[ky][kx] ·
/// in[oy * sh + ky * dh][ox * sw + kx * dw])`.
fn qs8_dwconv2d_chw_minmax_scalar(p: &mut DwArgs) {
    let (kernel, stride, dilation) = (p.kernel, p.stride, p.dilation);
    dwconv2d_chw_scalar(p, kernel, stride, dilation);
}

/// The body of the scalar kernels, with the geometry as arguments so that the constant ones
/// of `qs8_dwconv2d_chw_minmax_kxk_scalar` unroll the tap loops.
#[inline(always)]
fn dwconv2d_chw_scalar(
    p: &mut DwArgs,
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
) {
    p.check();
    for (oy, out_row) in p.output.chunks_exact_mut(p.out_w).enumerate() {
        for (ox, out) in out_row.iter_mut().enumerate() {
            let mut acc = p.bias;
            for ky in 0..kh {
                let x_row = &p.input[(oy * sh + ky * dh) * p.pw + ox * sw..];
                for kx in 0..kw {
                    acc += p.weight[ky * kw + kx] as i32 * x_row[kx * dw] as i32;
                }
            }
            *out = requantize(acc, p.requant, p.params);
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use qs8_dwconv2d_chw_minmax_kxk_scalar as qs8_dwconv2d_chw_minmax_kxk;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use qs8_dwconv2d_chw_minmax_kxk_simd128 as qs8_dwconv2d_chw_minmax_kxk;

/// `qs8_dwconv2d_chw_minmax_scalar` with a constant `K x K` kernel, stride `S` and no
/// dilation, so the tap loops unroll.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn qs8_dwconv2d_chw_minmax_kxk_scalar<const K: usize, const S: usize>(p: &mut DwArgs) {
    assert!(p.kernel == [K, K] && p.stride == [S, S] && p.dilation == [1, 1]);
    dwconv2d_chw_scalar(p, [K, K], [S, S], [1, 1])
}

/// The simd128 version of `qs8_dwconv2d_chw_minmax_kxk_scalar`, bit for bit the same results.
/// Taps are taken in pairs: the input bytes of the two taps are interleaved, widened to i16,
/// and `i32x4.dot_i16x8_s` with the splatted weight pair adds both products to each output
/// lane; an odd last tap is paired with itself and a zero weight. A row is computed in blocks
/// of 16 outputs (stride 1) or 8 (stride 2); the plane's rows are long enough
/// (`dw_row_len`) for the last block to read past the row's end, and only its valid outputs
/// are stored, so there is no scalar tail.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn qs8_dwconv2d_chw_minmax_kxk_simd128<const K: usize, const S: usize>(p: &mut DwArgs) {
    use super::requant::simd::{narrow_clamp, requantize, Lanes, OutputLanes};
    use core::arch::wasm32::*;
    const { assert!((K == 3 || K == 5) && (S == 1 || S == 2)) };
    assert!(p.kernel == [K, K] && p.stride == [S, S] && p.dilation == [1, 1]);
    p.check();
    let (pw, ow) = (p.pw, p.out_w);
    assert!(
        pw >= dw_row_len(ow, S, K),
        "depthwise plane rows too short for simd128"
    );
    // Offsets of the taps from an output's top-left input byte, and the i16 weight pairs.
    let offset = |t: usize| t / K * pw + t % K;
    let pairs = (K * K).div_ceil(2);
    let mut pair_offsets = [(0usize, 0usize); 13];
    let mut pair_weights = [0i32; 13];
    for i in 0..pairs {
        let (t0, t1) = (2 * i, 2 * i + 1);
        let (t1, w1) = if t1 < K * K {
            (t1, p.weight[t1])
        } else {
            (t0, 0)
        };
        pair_offsets[i] = (offset(t0), offset(t1));
        pair_weights[i] = (p.weight[t0] as i16 as u16 as i32) | ((w1 as i16 as i32) << 16);
    }
    let (pair_offsets, pair_weights) = (&pair_offsets[..pairs], &pair_weights[..pairs]);
    let lanes = Lanes::new(p.requant);
    let out_lanes = OutputLanes::new(p.params);
    let bias = i32x4_splat(p.bias);
    let block = 16 / S;
    for (oy, out_row) in p.output.chunks_exact_mut(ow).enumerate() {
        // SAFETY: a block at ox < ow reads, per tap pair, 16 bytes from
        // `oy * S * pw + offset + ox * S`, which ends before `(oy * S + K - 1) * pw +
        // dw_row_len(ow, S, K)`, inside `input` per `check` and the row length assert.
        // Stores write `out_row[ox..ox + block]` only when it fits.
        unsafe {
            let x = p.input.as_ptr().add(oy * S * pw);
            for ox in (0..ow).step_by(block) {
                let v = if S == 1 {
                    let mut acc = [bias; 4];
                    for (&(o0, o1), &wp) in pair_offsets.iter().zip(pair_weights) {
                        let w = i32x4_splat(wp);
                        let a = v128_load(x.add(o0 + ox) as *const v128);
                        let b = v128_load(x.add(o1 + ox) as *const v128);
                        let (lo, hi) = (interleave_low(a, b), interleave_high(a, b));
                        let dot = |v, a| i32x4_add(a, i32x4_dot_i16x8(v, w));
                        acc[0] = dot(i16x8_extend_low_i8x16(lo), acc[0]);
                        acc[1] = dot(i16x8_extend_high_i8x16(lo), acc[1]);
                        acc[2] = dot(i16x8_extend_low_i8x16(hi), acc[2]);
                        acc[3] = dot(i16x8_extend_high_i8x16(hi), acc[3]);
                    }
                    let [a0, a1, a2, a3] = acc.map(|a| requantize(a, &lanes));
                    narrow_clamp(a0, a1, a2, a3, &out_lanes)
                } else {
                    let mut acc = [bias; 2];
                    for (&(o0, o1), &wp) in pair_offsets.iter().zip(pair_weights) {
                        let w = i32x4_splat(wp);
                        let a = v128_load(x.add(o0 + 2 * ox) as *const v128);
                        let b = v128_load(x.add(o1 + 2 * ox) as *const v128);
                        let v = interleave_even(a, b);
                        acc[0] = i32x4_add(acc[0], i32x4_dot_i16x8(i16x8_extend_low_i8x16(v), w));
                        acc[1] = i32x4_add(acc[1], i32x4_dot_i16x8(i16x8_extend_high_i8x16(v), w));
                    }
                    let [a0, a1] = acc.map(|a| requantize(a, &lanes));
                    narrow_clamp(a0, a1, a0, a1, &out_lanes)
                };
                if ox + block <= ow {
                    if S == 1 {
                        v128_store(out_row.as_mut_ptr().add(ox) as *mut v128, v);
                    } else {
                        v128_store64_lane::<0>(v, out_row.as_mut_ptr().add(ox) as *mut u64);
                    }
                } else {
                    let mut last = [0i8; 16];
                    v128_store(last.as_mut_ptr() as *mut v128, v);
                    out_row[ox..].copy_from_slice(&last[..ow - ox]);
                }
            }
        }
    }
}

/// Bytes 0..8 of `a` and `b`, interleaved: `[a0, b0, a1, b1, ..]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[rustfmt::skip]
#[inline(always)]
fn interleave_low(a: core::arch::wasm32::v128, b: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    core::arch::wasm32::i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(a, b)
}

/// Bytes 8..16 of `a` and `b`, interleaved.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[rustfmt::skip]
#[inline(always)]
fn interleave_high(a: core::arch::wasm32::v128, b: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    core::arch::wasm32::i8x16_shuffle::<8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31>(a, b)
}

/// The even bytes of `a` and `b`, interleaved: `[a0, b0, a2, b2, ..]` (stride 2).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[rustfmt::skip]
#[inline(always)]
fn interleave_even(a: core::arch::wasm32::v128, b: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    core::arch::wasm32::i8x16_shuffle::<0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30>(a, b)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::super::conv::output_size;
    use super::super::test_util::{range_requantizers, reference_output, Rng};
    use super::*;

    /// A shape from input size, pads `[top, left, bottom, right]` and the rest.
    #[allow(clippy::too_many_arguments)]
    fn shape(
        in_c: usize,
        in_hw: (usize, usize),
        out_c: usize,
        k: (usize, usize),
        stride: (usize, usize),
        dil: (usize, usize),
        pads: [usize; 4],
        group: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            in_c,
            in_h: in_hw.0,
            in_w: in_hw.1,
            out_c,
            out_h: output_size(in_hw.0, k.0, stride.0, dil.0, pads[0], pads[2]),
            out_w: output_size(in_hw.1, k.1, stride.1, dil.1, pads[1], pads[3]),
            kernel_h: k.0,
            kernel_w: k.1,
            stride_h: stride.0,
            stride_w: stride.1,
            dilation_h: dil.0,
            dilation_w: dil.1,
            pad_top: pads[0],
            pad_left: pads[1],
            group,
        }
    }

    /// Exact accumulators `bias + Σ (x - zx) · w` of every output, `[out_c][out_h][out_w]`;
    /// taps outside the input read the zero point, so they add nothing.
    fn conv_ref(s: &Conv2dShape, x: &[i8], w: &[i8], bias: Option<&[i32]>, zx: i32) -> Vec<i64> {
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let mut out = Vec::new();
        for co in 0..s.out_c {
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    let mut sum = bias.map_or(0, |b| b[co] as i64);
                    for cl in 0..icg {
                        let ci = co / ocg * icg + cl;
                        for ky in 0..s.kernel_h {
                            for kx in 0..s.kernel_w {
                                let iy = (oy * s.stride_h + ky * s.dilation_h) as isize
                                    - s.pad_top as isize;
                                let ix = (ox * s.stride_w + kx * s.dilation_w) as isize
                                    - s.pad_left as isize;
                                let inside = (0..s.in_h as isize).contains(&iy)
                                    && (0..s.in_w as isize).contains(&ix);
                                let xv = if inside {
                                    x[(ci * s.in_h + iy as usize) * s.in_w + ix as usize] as i64
                                } else {
                                    zx as i64
                                };
                                let wv = w[((co * icg + cl) * s.kernel_h + ky) * s.kernel_w + kx];
                                sum += (xv - zx as i64) * wv as i64;
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
        out
    }

    /// (name, shape, expected path) covering every path, groups, strides, dilations and pads.
    fn conv_cases() -> Vec<(&'static str, Conv2dShape, PathKind)> {
        use PathKind::*;
        vec![
            (
                "1x1",
                shape(16, (7, 9), 24, (1, 1), (1, 1), (1, 1), [0; 4], 1),
                Pointwise,
            ),
            (
                "1x1 odd k",
                shape(3, (5, 5), 5, (1, 1), (1, 1), (1, 1), [0; 4], 1),
                Pointwise,
            ),
            (
                "1x1 group 2",
                shape(6, (4, 5), 4, (1, 1), (1, 1), (1, 1), [0; 4], 2),
                Pointwise,
            ),
            (
                "1x1 several blocks",
                shape(9, (61, 83), 13, (1, 1), (1, 1), (1, 1), [0; 4], 1),
                Pointwise,
            ),
            (
                "1x1 stride 2",
                shape(5, (9, 8), 7, (1, 1), (2, 2), (1, 1), [0; 4], 1),
                Im2col,
            ),
            (
                "1x1 padded",
                shape(5, (4, 6), 3, (1, 1), (1, 1), (1, 1), [1, 0, 0, 2], 1),
                Im2col,
            ),
            (
                "3x3 pad 1",
                shape(3, (11, 13), 8, (3, 3), (1, 1), (1, 1), [1; 4], 1),
                Im2col,
            ),
            (
                "3x3 stride 2 same-upper",
                shape(4, (12, 12), 6, (3, 3), (2, 2), (1, 1), [0, 0, 1, 1], 1),
                Im2col,
            ),
            (
                "3x3 several blocks",
                shape(4, (60, 71), 5, (3, 3), (1, 1), (1, 1), [1; 4], 1),
                Im2col,
            ),
            (
                "5x5 group 2",
                shape(6, (9, 10), 4, (5, 5), (1, 1), (1, 1), [2; 4], 2),
                Im2col,
            ),
            (
                "7x7 stride 2",
                shape(3, (15, 17), 5, (7, 7), (2, 2), (1, 1), [3; 4], 1),
                Im2col,
            ),
            (
                "3x3 dilation 2",
                shape(5, (10, 9), 3, (3, 3), (1, 1), (2, 2), [2; 4], 1),
                Im2col,
            ),
            (
                "3x3 stride 3 asymmetric",
                shape(2, (13, 11), 3, (3, 3), (3, 3), (1, 1), [1, 2, 0, 1], 1),
                Im2col,
            ),
            (
                "2x3 mixed",
                shape(3, (8, 11), 2, (2, 3), (1, 2), (2, 1), [1, 0, 2, 1], 1),
                Im2col,
            ),
            (
                "group 3 of 2 channels",
                shape(6, (7, 7), 9, (3, 3), (2, 1), (1, 1), [1, 1, 1, 1], 3),
                Im2col,
            ),
            (
                "dw 3x3",
                shape(7, (13, 19), 7, (3, 3), (1, 1), (1, 1), [1; 4], 7),
                Depthwise,
            ),
            (
                "dw 3x3 wide",
                shape(2, (6, 45), 2, (3, 3), (1, 1), (1, 1), [1; 4], 2),
                Depthwise,
            ),
            (
                "dw 3x3 stride 2",
                shape(5, (14, 15), 5, (3, 3), (2, 2), (1, 1), [0, 0, 1, 1], 5),
                Depthwise,
            ),
            (
                "dw 3x3 stride 2 wide",
                shape(3, (9, 53), 3, (3, 3), (2, 2), (1, 1), [1; 4], 3),
                Depthwise,
            ),
            (
                "dw 5x5",
                shape(4, (11, 37), 4, (5, 5), (1, 1), (1, 1), [2; 4], 4),
                Depthwise,
            ),
            (
                "dw 5x5 stride 2",
                shape(3, (17, 40), 3, (5, 5), (2, 2), (1, 1), [1, 2, 2, 1], 3),
                Depthwise,
            ),
            (
                "dw 3x3 multiplier 2",
                shape(3, (9, 20), 6, (3, 3), (1, 1), (1, 1), [1; 4], 3),
                Depthwise,
            ),
            (
                "dw 3x3 asymmetric pads",
                shape(2, (10, 18), 2, (3, 3), (1, 1), (1, 1), [0, 2, 2, 0], 2),
                Depthwise,
            ),
            (
                "dw 3x3 dilation 2 (generic)",
                shape(3, (12, 12), 3, (3, 3), (1, 1), (2, 2), [2; 4], 3),
                Depthwise,
            ),
            (
                "dw 7x7 (generic)",
                shape(2, (12, 13), 2, (7, 7), (1, 1), (1, 1), [3; 4], 2),
                Depthwise,
            ),
            (
                "dw 3x3 stride 3 (generic)",
                shape(2, (13, 14), 2, (3, 3), (3, 3), (1, 1), [1; 4], 2),
                Depthwise,
            ),
            (
                "dw 1x1 in 1 channel",
                shape(1, (5, 6), 3, (1, 1), (1, 1), (1, 1), [0; 4], 1),
                Depthwise,
            ),
        ]
    }

    /// Runs `conv` twice (the second time on a warm scratch that must not grow) and checks
    /// every output against the exact reference.
    #[allow(clippy::too_many_arguments)]
    fn check_case(
        s: &Conv2dShape,
        x: &[i8],
        w: &[i8],
        bias: Option<&[i32]>,
        zx: i32,
        zy: i32,
        clamp: (i8, i8),
        what: &str,
    ) {
        let acc = conv_ref(s, x, w, bias, zx);
        let plane = s.out_h * s.out_w;
        let ranges: Vec<(i64, i64)> = acc
            .chunks_exact(plane)
            .map(|c| (*c.iter().min().unwrap(), *c.iter().max().unwrap()))
            .collect();
        let rq = range_requantizers(&ranges, zy);
        let conv = PackedQs8Conv2d::new(*s, w, bias, zx, rq.clone(), zy, clamp.0, clamp.1);
        let mut scratch = Vec::new();
        let mut out = vec![0i8; s.out_c * plane];
        conv.run(x, &mut out, &mut scratch);
        let capacity = scratch.capacity();
        out.fill(0x33);
        conv.run(x, &mut out, &mut scratch);
        assert_eq!(
            scratch.capacity(),
            capacity,
            "{what}: warm run grew the scratch"
        );
        for (i, (&got, &a)) in out.iter().zip(&acc).enumerate() {
            let want = reference_output(a, &rq[i / plane], zy, clamp.0, clamp.1);
            assert_eq!(got, want, "{what}: output[{i}] (c {}, acc {a})", i / plane);
        }
    }

    #[test]
    fn every_path_matches_the_reference() {
        let seed = 0x51_7cc1_b727_220a;
        let mut rng = Rng(seed);
        for (name, s, kind) in conv_cases() {
            assert_eq!(PathKind::choose(&s), kind, "{name}: path");
            let k = s.in_c / s.group * s.kernel_h * s.kernel_w;
            for (zx, zy, clamp) in [
                (
                    rng.int(-100, 100) as i32,
                    rng.int(-128, 127) as i32,
                    (-128, 127),
                ),
                (-128, 127, (-128, 127)),
                (127, -128, (-128, 127)),
                (37, -20, (-20, 90)),
            ] {
                let x = rng.i8s(s.in_c * s.in_h * s.in_w, -128, 127);
                let w = rng.i8s(s.out_c * k, -127, 127);
                let bias: Vec<i32> = (0..s.out_c)
                    .map(|_| rng.int(-20000, 20000) as i32)
                    .collect();
                let bias = (zx != 127).then_some(&bias[..]);
                let what = format!("seed {seed:#x} {name} zx={zx} zy={zy} clamp={clamp:?}");
                check_case(&s, &x, &w, bias, zx, zy, clamp, &what);
            }
        }
    }

    /// The quantized EfficientNet-Lite0 layer types at real sizes (small enough for debug).
    #[test]
    fn efficientnet_like_layers() {
        let seed = 0xe0;
        let mut rng = Rng(seed);
        for (name, s) in [
            (
                "stem 3x3 s2",
                shape(3, (32, 32), 32, (3, 3), (2, 2), (1, 1), [0, 0, 1, 1], 1),
            ),
            (
                "dw 5x5 s2",
                shape(24, (16, 16), 24, (5, 5), (2, 2), (1, 1), [1, 1, 2, 2], 24),
            ),
            (
                "project 1x1",
                shape(144, (14, 14), 24, (1, 1), (1, 1), (1, 1), [0; 4], 1),
            ),
        ] {
            let k = s.in_c / s.group * s.kernel_h * s.kernel_w;
            let x = rng.i8s(s.in_c * s.in_h * s.in_w, -128, 127);
            let w = rng.i8s(s.out_c * k, -127, 127);
            let bias: Vec<i32> = (0..s.out_c)
                .map(|_| rng.int(-50000, 50000) as i32)
                .collect();
            let what = format!("seed {seed:#x} {name}");
            check_case(&s, &x, &w, Some(&bias), -128, -5, (-128, 127), &what);
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_depthwise_matches_scalar_bit_for_bit() {
        let seed = 0xd3;
        let mut rng = Rng(seed);
        type Pair = (DwKernel, DwKernel, usize, usize);
        let kernels: [Pair; 4] = [
            (
                qs8_dwconv2d_chw_minmax_kxk_scalar::<3, 1>,
                qs8_dwconv2d_chw_minmax_kxk_simd128::<3, 1>,
                3,
                1,
            ),
            (
                qs8_dwconv2d_chw_minmax_kxk_scalar::<3, 2>,
                qs8_dwconv2d_chw_minmax_kxk_simd128::<3, 2>,
                3,
                2,
            ),
            (
                qs8_dwconv2d_chw_minmax_kxk_scalar::<5, 1>,
                qs8_dwconv2d_chw_minmax_kxk_simd128::<5, 1>,
                5,
                1,
            ),
            (
                qs8_dwconv2d_chw_minmax_kxk_scalar::<5, 2>,
                qs8_dwconv2d_chw_minmax_kxk_simd128::<5, 2>,
                5,
                2,
            ),
        ];
        for (scalar, simd, k, st) in kernels {
            for out_w in [1, 7, 8, 9, 15, 16, 17, 31, 40] {
                let out_h = 3;
                let pw = dw_row_len(out_w, st, k);
                let input = rng.i8s(((out_h - 1) * st + k) * pw, -128, 127);
                let weight = rng.i8s(k * k, -128, 127);
                let rq = Requantizer::from_real(2f64.powf(-12.0 + 8.0 * rng.unit()));
                let params = OutputParams::new(rng.int(-128, 127) as i32, -120, 110);
                let bias = rng.int(-3000, 3000) as i32;
                let mut outs = [vec![0i8; out_h * out_w], vec![1i8; out_h * out_w]];
                for (kernel, out) in [scalar, simd].iter().zip(outs.iter_mut()) {
                    kernel(&mut DwArgs {
                        input: &input,
                        pw,
                        weight: &weight,
                        bias,
                        requant: &rq,
                        params: &params,
                        output: out,
                        out_h,
                        out_w,
                        kernel: [k, k],
                        stride: [st, st],
                        dilation: [1, 1],
                    });
                }
                assert_eq!(
                    outs[0], outs[1],
                    "seed {seed:#x} {k}x{k} s{st} out_w={out_w}"
                );
            }
        }
    }

    /// `cargo test --release -- --ignored --nocapture qs8_conv_gmacs`
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore]
    fn qs8_conv_gmacs() {
        let mut rng = Rng(1);
        // EfficientNet-Lite0 1x1 convolutions (in -> out channels at h x w).
        for (ci, co, hw) in [
            (96, 24, 56),
            (24, 144, 56),
            (144, 24, 56),
            (672, 112, 14),
            (1152, 192, 7),
        ] {
            let s = shape(ci, (hw, hw), co, (1, 1), (1, 1), (1, 1), [0; 4], 1);
            let x = rng.i8s(ci * hw * hw, -128, 127);
            let w = rng.i8s(co * ci, -127, 127);
            let rq = vec![Requantizer::from_real(0.0005); co];
            let conv = PackedQs8Conv2d::new(s, &w, None, -3, rq, 5, -128, 127);
            let mut out = vec![0i8; co * hw * hw];
            let mut scratch = Vec::new();
            let macs = (ci * co * hw * hw) as f64;
            let reps = (2e9 / macs).ceil() as usize;
            conv.run(&x, &mut out, &mut scratch);
            let start = std::time::Instant::now();
            for _ in 0..reps {
                conv.run(&x, &mut out, &mut scratch);
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "1x1 {ci:4} -> {co:4} at {hw:3}x{hw:<3}: {:7.3} ms/call, {:5.1} GMAC/s",
                secs * 1e3,
                macs / secs / 1e9
            );
        }
    }
}
