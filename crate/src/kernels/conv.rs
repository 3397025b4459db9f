//! 2-D convolution and transposed convolution on one NCHW image, weights packed at load time.
//!
//! # Contract
//! - Input `[in_c][in_h][in_w]`, output `[out_c][out_h][out_w]`, weights in ONNX layout
//!   (`Conv`: `[out_c][in_c / group][kh][kw]`, `ConvTranspose`: `[in_c][out_c / group][kh][kw]`).
//! - The caller gives the output size and the begin pads; every read outside the input is a
//!   zero, which makes the end pads (and `ConvTranspose`'s output padding) implicit.
//! - Each output is `bias + Σ w·x` in f32, multiply then add, then the activation. The
//!   depthwise and im2col paths sum in the same order (bias, then kernel taps row by row), so
//!   they agree bit for bit; results are within 1e-5 (relative to Σ|w·x|) of an f64 reference.
//!
//! # Paths of `PackedConv2d`, chosen once at construction
//! - Depthwise (`group == in_c`, any channel multiplier): each input plane is copied into
//!   `scratch` with its zero border so the inner loops have no bounds checks, then a direct
//!   kernel computes each output plane. 3x3 and 5x5 with stride 1 or 2 use
//!   `f32_dwconv2d_chw_minmax_kxk` (simd128: four f32x4 accumulators along the output row, stride 2
//!   by an even-lane shuffle of two loads); other kernels use `f32_dwconv2d_chw_minmax_scalar`.
//!   Like the GEMM, they clamp for `Relu`/`Clip` before storing: `Activation::apply` is a
//!   separate pass, and a slow one on wasm32, where `f32::max` has no single instruction.
//! - Pointwise (1x1, stride 1, no padding): the input already is `B = [in_c][h*w]`; it is
//!   packed block by block and multiplied by the weights packed at load.
//! - Im2col (everything else, per group): the im2col matrix is written straight into the
//!   packed-B layout, block by block, then multiplied. A panel of 8 outputs on one row whose
//!   whole receptive field lies inside the input copies each row from its tap's offset, worked
//!   out once per call, without a test per row.
//!
//! Blocks of `B` hold about `B_BLOCK_FLOATS` floats, so the packed block is still in cache when
//! the GEMM reads it and `scratch` stays small.
//!
//! `PackedConvTranspose2d` computes `cols = Wᵀ·X` per group with the GEMM and scatters (col2im)
//! the columns into the output.

use std::ops::Range;

use super::gemm::{self, GemmBias, PackedA, NR};
use super::Activation;

/// Floats of packed `B` per GEMM block (128 KiB).
const B_BLOCK_FLOATS: usize = 32 * 1024;

/// The geometry of a convolution. `pad_bottom`/`pad_right` are implied by `out_h`/`out_w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub group: usize,
}

/// The geometry of a transposed convolution: the fields of `Conv2dShape`, with `in_*` the
/// (small) input and `out_*` the (large) output; the pads are the begin pads cropped from the
/// output, and the end pads and output padding are implied by `out_h`/`out_w`.
pub type ConvTranspose2dShape = Conv2dShape;

/// The output length of a convolution along one axis; 0 when the padded input is shorter than
/// the dilated kernel.
pub fn output_size(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
) -> usize {
    let span = dilation * (kernel - 1) + 1;
    (input + pad_begin + pad_end)
        .checked_sub(span)
        .map_or(0, |room| room / stride + 1)
}

/// The output length of a transposed convolution along one axis (the ONNX formula).
pub fn conv_transpose_output_size(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    output_padding: usize,
) -> usize {
    if input == 0 {
        return 0;
    }
    let full = stride * (input - 1) + output_padding + dilation * (kernel - 1) + 1;
    full.saturating_sub(pad_begin + pad_end)
}

/// Panics on a geometry no path can run.
fn check_geometry(
    in_c: usize,
    out_c: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    group: usize,
) {
    assert!(
        group > 0 && in_c % group == 0 && out_c % group == 0,
        "channels {in_c}->{out_c} not divisible into {group} groups"
    );
    assert!(
        kernel
            .iter()
            .chain(&stride)
            .chain(&dilation)
            .all(|&v| v > 0),
        "kernel {kernel:?}, stride {stride:?} and dilation {dilation:?} must be positive"
    );
}

/// A convolution with its weights packed for the path chosen for its shape.
#[derive(Clone, Debug)]
pub struct PackedConv2d {
    shape: Conv2dShape,
    /// `out_c` values; zeros when the model has none.
    bias: Vec<f32>,
    act: Activation,
    path: Path,
}

#[derive(Clone, Debug)]
enum Path {
    /// Weights `[out_c][kh * kw]` and the direct kernel for the shape.
    Depthwise { weight: Vec<f32>, kernel: DwKernel },
    /// Per group, weights `[out_c / group][in_c / group]`.
    Pointwise { a: Vec<PackedA> },
    /// Per group, weights `[out_c / group][in_c / group * kh * kw]`.
    Im2col { a: Vec<PackedA> },
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

impl PackedConv2d {
    /// Packs `weight` (`[out_c][in_c / group][kh][kw]`) and `bias` (`[out_c]`) for `shape`.
    pub fn new(
        shape: Conv2dShape,
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
    ) -> PackedConv2d {
        Self::with_path(shape, weight, bias, act, PathKind::choose(&shape))
    }

    fn with_path(
        s: Conv2dShape,
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
        kind: PathKind,
    ) -> PackedConv2d {
        check_geometry(
            s.in_c,
            s.out_c,
            [s.kernel_h, s.kernel_w],
            [s.stride_h, s.stride_w],
            [s.dilation_h, s.dilation_w],
            s.group,
        );
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let kdim = icg * s.kernel_h * s.kernel_w;
        assert_eq!(weight.len(), s.out_c * kdim, "conv weight size for {s:?}");
        let bias = bias.map_or_else(|| vec![0.0; s.out_c], <[f32]>::to_vec);
        assert_eq!(bias.len(), s.out_c, "conv bias size");
        let pack_groups = || -> Vec<PackedA> {
            (0..s.group)
                .map(|g| PackedA::pack(&weight[g * ocg * kdim..], ocg, kdim, kdim))
                .collect()
        };
        let path = match kind {
            PathKind::Depthwise => Path::Depthwise {
                weight: weight.to_vec(),
                kernel: dw_kernel_for(&s),
            },
            PathKind::Pointwise => Path::Pointwise { a: pack_groups() },
            PathKind::Im2col => Path::Im2col { a: pack_groups() },
        };
        PackedConv2d {
            shape: s,
            bias,
            act,
            path,
        }
    }

    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }

    /// Replaces the bias (`None`: zeros) without repacking the weights.
    pub fn set_bias(&mut self, bias: Option<&[f32]>) {
        set_bias(&mut self.bias, bias);
    }

    /// Convolves one image. `scratch` is grown as needed and reused across calls, so a warm call
    /// does not allocate; its contents on entry do not matter.
    pub fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
        let s = &self.shape;
        assert_eq!(
            input.len(),
            s.in_c * s.in_h * s.in_w,
            "conv input size for {s:?}"
        );
        assert_eq!(
            output.len(),
            s.out_c * s.out_h * s.out_w,
            "conv output size for {s:?}"
        );
        if output.is_empty() {
            return;
        }
        match &self.path {
            Path::Depthwise { weight, kernel } => {
                self.run_depthwise(weight, *kernel, input, output, scratch)
            }
            Path::Pointwise { a } => {
                let (icg, hw) = (s.in_c / s.group, s.in_h * s.in_w);
                self.run_gemm(a, input, output, scratch, |dst, x, n0, nc| {
                    gemm::pack_b_panels(dst, &x[n0..], icg, nc, hw)
                });
            }
            Path::Im2col { a } => {
                self.run_gemm(a, input, output, scratch, |dst, x, n0, nc| {
                    im2col_panels(dst, x, s, n0, nc)
                });
            }
        }
    }

    /// Per group and per block of output columns: `fill(dst, group_input, n0, nc)` packs
    /// columns `n0..n0 + nc` of `B` into `dst`, then the GEMM writes them to the output.
    fn run_gemm(
        &self,
        a: &[PackedA],
        input: &[f32],
        output: &mut [f32],
        scratch: &mut Vec<f32>,
        fill: impl Fn(&mut [f32], &[f32], usize, usize),
    ) {
        let s = &self.shape;
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let (in_len, n) = (icg * s.in_h * s.in_w, s.out_h * s.out_w);
        let k = icg * s.kernel_h * s.kernel_w;
        let block = (B_BLOCK_FLOATS / k.max(1) / NR * NR).clamp(NR, n.next_multiple_of(NR));
        let dst = grow(scratch, gemm::packed_b_len(k, block));
        for (g, a) in a.iter().enumerate() {
            let x = &input[g * in_len..][..in_len];
            let bias = GemmBias::PerRow(&self.bias[g * ocg..][..ocg]);
            for n0 in (0..n).step_by(block) {
                let nc = block.min(n - n0);
                let b = &mut dst[..gemm::packed_b_len(k, nc)];
                fill(b, x, n0, nc);
                gemm::gemm_panels(a, b, nc, &mut output[g * ocg * n + n0..], n, bias, self.act);
            }
        }
    }

    fn run_depthwise(
        &self,
        weight: &[f32],
        kernel: DwKernel,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let s = &self.shape;
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        // The padded plane covers every tap of every output, and at least the whole input.
        let ph = (s.pad_top + s.in_h).max((s.out_h - 1) * s.stride_h + (kh - 1) * s.dilation_h + 1);
        let pw =
            (s.pad_left + s.in_w).max((s.out_w - 1) * s.stride_w + (kw - 1) * s.dilation_w + 1);
        let plane = grow(scratch, ph * pw + PLANE_SLACK);
        let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let multiplier = s.out_c / s.in_c;
        let (clamp, epilogue) = gemm::split_activation(self.act);
        for ci in 0..s.in_c {
            pad_plane(plane, &input[ci * in_plane..][..in_plane], s, pw);
            for co in ci * multiplier..(ci + 1) * multiplier {
                let out = &mut output[co * out_plane..][..out_plane];
                kernel(&mut DwArgs {
                    input: plane,
                    pw,
                    weight: &weight[co * kh * kw..][..kh * kw],
                    bias: self.bias[co],
                    clamp,
                    output: out,
                    out_h: s.out_h,
                    out_w: s.out_w,
                    kernel: [kh, kw],
                    stride: [s.stride_h, s.stride_w],
                    dilation: [s.dilation_h, s.dilation_w],
                });
                if let Some(act) = epilogue {
                    act.apply(out);
                }
            }
        }
    }
}

/// `scratch[..len]`, growing `scratch` if it is shorter (never shrinking it).
fn grow(scratch: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if scratch.len() < len {
        scratch.resize(len, 0.0);
    }
    &mut scratch[..len]
}

/// Writes columns `n0..n0 + nc` of the im2col matrix of one group's input `x`
/// (`[in_c / group][in_h][in_w]`) into `dst` in the packed-B layout of the GEMM: row
/// `p = (ci * kh + ky) * kw + kx`, column `oy * out_w + ox`, value
/// `x[ci][oy * sh + ky * dh - pad_top][ox * sw + kx * dw - pad_left]`, zero outside `x`.
/// Every float of `dst` (`packed_b_len(k, nc)`) is written.
fn im2col_panels(dst: &mut [f32], x: &[f32], s: &Conv2dShape, n0: usize, nc: usize) {
    let icg = s.in_c / s.group;
    let k = icg * s.kernel_h * s.kernel_w;
    let (ih, iw) = (s.in_h as isize, s.in_w as isize);
    let (sw, dh, dw) = (
        s.stride_w as isize,
        s.dilation_h as isize,
        s.dilation_w as isize,
    );
    assert_eq!(dst.len(), gemm::packed_b_len(k, nc));
    assert!(x.len() >= icg * s.in_h * s.in_w);
    let at = |plane: &[f32], y: isize, xi: isize| {
        if (0..ih).contains(&y) && (0..iw).contains(&xi) {
            plane[(y * iw + xi) as usize]
        } else {
            0.0
        }
    };
    let plane_len = s.in_h * s.in_w;
    // Row p's tap as an offset from the receptive field's top-left corner in `x`, worked out
    // once, for the panels whose whole field lies inside the input; and that field's extent.
    let tap_at: Vec<usize> = (0..icg)
        .flat_map(|ci| {
            (0..s.kernel_h).flat_map(move |ky| {
                (0..s.kernel_w).map(move |kx| {
                    ci * plane_len + ky * s.dilation_h * s.in_w + kx * s.dilation_w
                })
            })
        })
        .collect();
    let (field_h, field_w) = (
        (s.kernel_h as isize - 1) * dh,
        (NR as isize - 1) * sw + (s.kernel_w as isize - 1) * dw,
    );
    for (j, panel) in dst.chunks_exact_mut(NR * k).enumerate() {
        let col = n0 + j * NR;
        let cols = NR.min(n0 + nc - col);
        // Top-left input position of each lane's receptive field; None for padding lanes.
        let mut origin = [None; NR];
        let (mut oy, mut ox) = (col / s.out_w, col % s.out_w);
        for o in origin.iter_mut().take(cols) {
            *o = Some((
                (oy * s.stride_h) as isize - s.pad_top as isize,
                (ox * s.stride_w) as isize - s.pad_left as isize,
            ));
            ox += 1;
            if ox == s.out_w {
                (oy, ox) = (oy + 1, 0);
            }
        }
        // All lanes on one output row: one row of input per tap, contiguous when sw == 1.
        let one_row = cols == NR && col % s.out_w + NR <= s.out_w;
        if let (true, Some((y0, x0))) = (one_row, origin[0]) {
            // Most panels: the whole field inside the input, every row a copy from its tap's
            // offset, with no test per row (at 3 input channels the tests cost as much as the
            // copies).
            if y0 >= 0 && x0 >= 0 && y0 + field_h < ih && x0 + field_w < iw {
                let corner = (y0 * iw + x0) as usize;
                for (row, &tap) in panel.chunks_exact_mut(NR).zip(&tap_at) {
                    let src = &x[corner + tap..][..(NR - 1) * sw as usize + 1];
                    if sw == 1 {
                        row.copy_from_slice(src);
                    } else {
                        for (c, v) in row.iter_mut().enumerate() {
                            *v = src[c * sw as usize];
                        }
                    }
                }
                continue;
            }
        }
        let mut rows = panel.chunks_exact_mut(NR);
        for ci in 0..icg {
            let plane = &x[ci * plane_len..][..plane_len];
            for ky in 0..s.kernel_h as isize {
                for kx in 0..s.kernel_w as isize {
                    let row = rows.next().expect("k rows per panel");
                    if let (true, Some((y0, x0))) = (one_row, origin[0]) {
                        let (y, xs) = (y0 + ky * dh, x0 + kx * dw);
                        if !(0..ih).contains(&y) {
                            row.fill(0.0);
                        } else if xs >= 0 && xs + (NR as isize - 1) * sw < iw {
                            let src = &plane[(y * iw + xs) as usize..];
                            if sw == 1 {
                                row.copy_from_slice(&src[..NR]);
                            } else {
                                row.iter_mut()
                                    .enumerate()
                                    .for_each(|(c, v)| *v = src[c * sw as usize]);
                            }
                        } else {
                            row.iter_mut()
                                .enumerate()
                                .for_each(|(c, v)| *v = at(plane, y, xs + c as isize * sw));
                        }
                    } else {
                        for (v, o) in row.iter_mut().zip(&origin) {
                            *v = o.map_or(0.0, |(y0, x0)| at(plane, y0 + ky * dh, x0 + kx * dw));
                        }
                    }
                }
            }
        }
    }
}

/// Floats after a padded plane: the stride-2 kernel loads 8 consecutive floats for 4 outputs,
/// one more than the last of them needs.
const PLANE_SLACK: usize = 1;

/// Copies input plane `x` into `dst` (`ph` rows of `pw`, then `PLANE_SLACK`) at
/// (`pad_top`, `pad_left`), zeroing everything else.
fn pad_plane(dst: &mut [f32], x: &[f32], s: &Conv2dShape, pw: usize) {
    let (top, left, w) = (s.pad_top, s.pad_left, s.in_w);
    for (y, row) in dst.chunks_mut(pw).enumerate() {
        match y.checked_sub(top).filter(|&iy| iy < s.in_h) {
            Some(iy) => {
                row[..left].fill(0.0);
                row[left..left + w].copy_from_slice(&x[iy * w..][..w]);
                row[left + w..].fill(0.0);
            }
            None => row.fill(0.0),
        }
    }
}

/// One depthwise output plane computed from one padded input plane.
struct DwArgs<'a> {
    /// The padded plane, rows of `pw` floats, followed by `PLANE_SLACK` floats.
    input: &'a [f32],
    pw: usize,
    /// `kh * kw` taps, row-major.
    weight: &'a [f32],
    bias: f32,
    /// As in the GEMM: `x.max(lo).min(hi)` on every output.
    clamp: Option<(f32, f32)>,
    /// `out_h * out_w`.
    output: &'a mut [f32],
    out_h: usize,
    out_w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
}

impl DwArgs<'_> {
    /// Panics unless every tap of every output lies in `input`, with `slack` floats to spare.
    fn check(&self, slack: usize) {
        let span = |o: usize, i: usize| {
            (o - 1) * self.stride[i] + (self.kernel[i] - 1) * self.dilation[i] + 1
        };
        assert_eq!(self.weight.len(), self.kernel[0] * self.kernel[1]);
        assert_eq!(self.output.len(), self.out_h * self.out_w);
        assert!(
            self.pw >= span(self.out_w, 1)
                && self.input.len() >= span(self.out_h, 0) * self.pw + slack
        );
    }
}

type DwKernel = fn(&mut DwArgs);

/// The depthwise kernel for a shape: specialised for the common 3x3 and 5x5 with stride 1 or
/// 2, generic otherwise.
/// `dst = bias` (`None`: zeros), the bias of a packed conv, which keeps its length.
fn set_bias(dst: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        Some(b) => {
            assert_eq!(b.len(), dst.len(), "conv bias size");
            dst.copy_from_slice(b);
        }
        None => dst.fill(0.0),
    }
}

fn dw_kernel_for(s: &Conv2dShape) -> DwKernel {
    match (
        s.kernel_h,
        s.kernel_w,
        s.stride_h,
        s.stride_w,
        s.dilation_h,
        s.dilation_w,
    ) {
        (3, 3, 1, 1, 1, 1) => f32_dwconv2d_chw_minmax_kxk::<3, 1>,
        (3, 3, 2, 2, 1, 1) => f32_dwconv2d_chw_minmax_kxk::<3, 2>,
        (5, 5, 1, 1, 1, 1) => f32_dwconv2d_chw_minmax_kxk::<5, 1>,
        (5, 5, 2, 2, 1, 1) => f32_dwconv2d_chw_minmax_kxk::<5, 2>,
        _ => f32_dwconv2d_chw_minmax_scalar,
    }
}

/// Any kernel, stride and dilation: `out[oy][ox] = bias + Σ_{ky, kx} w[ky][kx] ·
/// in[oy * sh + ky * dh][ox * sw + kx * dw]`, taps summed row by row.
fn f32_dwconv2d_chw_minmax_scalar(p: &mut DwArgs) {
    let (kernel, stride, dilation) = (p.kernel, p.stride, p.dilation);
    dwconv2d_chw_scalar(p, kernel, stride, dilation);
}

/// The body of the scalar kernels, with the geometry as arguments so that the constant ones
/// of `f32_dwconv2d_chw_minmax_kxk_scalar` unroll the tap loops.
#[inline(always)]
fn dwconv2d_chw_scalar(
    p: &mut DwArgs,
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
) {
    p.check(0);
    // Tap by tap over a whole output row: each output still sums bias then the taps row by
    // row, and the inner loop is a vectorisable axpy (contiguous when sw == 1).
    for (oy, out_row) in p.output.chunks_exact_mut(p.out_w).enumerate() {
        out_row.fill(p.bias);
        for ky in 0..kh {
            let x_row = &p.input[(oy * sh + ky * dh) * p.pw..][..p.pw];
            for kx in 0..kw {
                let w = p.weight[ky * kw + kx];
                let xs = x_row[kx * dw..].iter().step_by(sw);
                out_row.iter_mut().zip(xs).for_each(|(o, &x)| *o += w * x);
            }
        }
        if let Some((lo, hi)) = p.clamp {
            out_row.iter_mut().for_each(|v| *v = v.max(lo).min(hi));
        }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use f32_dwconv2d_chw_minmax_kxk_scalar as f32_dwconv2d_chw_minmax_kxk;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use f32_dwconv2d_chw_minmax_kxk_simd128 as f32_dwconv2d_chw_minmax_kxk;

/// `f32_dwconv2d_chw_minmax_scalar` with a constant `K x K` kernel, stride `S` and no
/// dilation, so the tap loops unroll.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn f32_dwconv2d_chw_minmax_kxk_scalar<const K: usize, const S: usize>(p: &mut DwArgs) {
    assert!(p.kernel == [K, K] && p.stride == [S, S] && p.dilation == [1, 1]);
    dwconv2d_chw_scalar(p, [K, K], [S, S], [1, 1])
}

/// The simd128 version of `f32_dwconv2d_chw_minmax_kxk_scalar`, bit for bit the same results: 16
/// outputs of a row at a time in four f32x4 accumulators, then 4 at a time, then one by one.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn f32_dwconv2d_chw_minmax_kxk_simd128<const K: usize, const S: usize>(p: &mut DwArgs) {
    use core::arch::wasm32::*;
    const { assert!(S == 1 || S == 2) };
    assert!(p.kernel == [K, K] && p.stride == [S, S] && p.dilation == [1, 1]);
    p.check(S - 1);
    let mut w = [[0.0f32; K]; K];
    for (w_row, src) in w.iter_mut().zip(p.weight.chunks_exact(K)) {
        w_row.copy_from_slice(src);
    }
    // Outputs ox..ox + 4 of a tap start at `x`: contiguous for stride 1; for stride 2 the even
    // lanes of the 8 floats from `x` (reading one float past the last used, see PLANE_SLACK).
    #[inline(always)]
    unsafe fn taps<const S: usize>(x: *const f32) -> v128 {
        if S == 1 {
            v128_load(x as *const v128)
        } else {
            i32x4_shuffle::<0, 2, 4, 6>(
                v128_load(x as *const v128),
                v128_load(x.add(4) as *const v128),
            )
        }
    }
    let (pw, ow) = (p.pw, p.out_w);
    let bias = f32x4_splat(p.bias);
    // pmax/pmin give exactly x.max(lo).min(hi), as in the GEMM microkernel.
    let clamp_lanes = p.clamp.map(|(lo, hi)| (f32x4_splat(lo), f32x4_splat(hi)));
    let clamp = |x: v128| match clamp_lanes {
        Some((lo, hi)) => f32x4_pmin(hi, f32x4_pmax(lo, x)),
        None => x,
    };
    for (oy, out_row) in p.output.chunks_exact_mut(ow).enumerate() {
        // SAFETY: `check` guarantees that the taps of outputs ox < ow lie in `input`, plus
        // `S - 1` floats for the stride-2 over-read; stores stay in `out_row` (ox + 4 <= ow).
        unsafe {
            let x = p.input.as_ptr().add(oy * S * pw);
            let out = out_row.as_mut_ptr();
            let mut ox = 0;
            while ox + 16 <= ow {
                let mut acc = [bias; 4];
                for (ky, w_row) in w.iter().enumerate() {
                    let row = x.add(ky * pw + ox * S);
                    for (kx, &wv) in w_row.iter().enumerate() {
                        let wv = f32x4_splat(wv);
                        for (v, a) in acc.iter_mut().enumerate() {
                            *a = f32x4_add(*a, f32x4_mul(wv, taps::<S>(row.add(v * 4 * S + kx))));
                        }
                    }
                }
                for (v, a) in acc.iter().enumerate() {
                    v128_store(out.add(ox + v * 4) as *mut v128, clamp(*a));
                }
                ox += 16;
            }
            while ox + 4 <= ow {
                let mut acc = bias;
                for (ky, w_row) in w.iter().enumerate() {
                    let row = x.add(ky * pw + ox * S);
                    for (kx, &wv) in w_row.iter().enumerate() {
                        acc = f32x4_add(acc, f32x4_mul(f32x4_splat(wv), taps::<S>(row.add(kx))));
                    }
                }
                v128_store(out.add(ox) as *mut v128, clamp(acc));
                ox += 4;
            }
            while ox < ow {
                let mut acc = p.bias;
                for (ky, w_row) in w.iter().enumerate() {
                    let row = x.add(ky * pw + ox * S);
                    for (kx, &wv) in w_row.iter().enumerate() {
                        acc += wv * *row.add(kx);
                    }
                }
                *out.add(ox) = match p.clamp {
                    Some((lo, hi)) => acc.max(lo).min(hi),
                    None => acc,
                };
                ox += 1;
            }
        }
    }
}

/// A transposed convolution with its weights packed for the GEMM.
#[derive(Clone, Debug)]
pub struct PackedConvTranspose2d {
    shape: ConvTranspose2dShape,
    /// `out_c` values; zeros when the model has none.
    bias: Vec<f32>,
    act: Activation,
    /// Per group, `Wᵀ` as `[out_c / group * kh * kw][in_c / group]`.
    a: Vec<PackedA>,
}

impl PackedConvTranspose2d {
    /// Replaces the bias (`None`: zeros) without repacking the weights.
    pub fn set_bias(&mut self, bias: Option<&[f32]>) {
        set_bias(&mut self.bias, bias);
    }

    /// Packs `weight` (`[in_c][out_c / group][kh][kw]`) and `bias` (`[out_c]`) for `shape`.
    pub fn new(
        shape: ConvTranspose2dShape,
        weight: &[f32],
        bias: Option<&[f32]>,
        act: Activation,
    ) -> PackedConvTranspose2d {
        let s = &shape;
        check_geometry(
            s.in_c,
            s.out_c,
            [s.kernel_h, s.kernel_w],
            [s.stride_h, s.stride_w],
            [s.dilation_h, s.dilation_w],
            s.group,
        );
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let rows = ocg * s.kernel_h * s.kernel_w;
        assert_eq!(
            weight.len(),
            s.in_c * rows,
            "conv transpose weight size for {s:?}"
        );
        let bias = bias.map_or_else(|| vec![0.0; s.out_c], <[f32]>::to_vec);
        assert_eq!(bias.len(), s.out_c, "conv transpose bias size");
        let a = (0..s.group)
            .map(|g| {
                let w = &weight[g * icg * rows..][..icg * rows];
                let wt: Vec<f32> = (0..rows)
                    .flat_map(|r| (0..icg).map(move |ci| w[ci * rows + r]))
                    .collect();
                PackedA::pack(&wt, rows, icg, icg)
            })
            .collect();
        PackedConvTranspose2d {
            shape,
            bias,
            act,
            a,
        }
    }

    pub fn shape(&self) -> &ConvTranspose2dShape {
        &self.shape
    }

    /// Runs on one image; `scratch` as in `PackedConv2d::run`.
    pub fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
        let s = &self.shape;
        assert_eq!(
            input.len(),
            s.in_c * s.in_h * s.in_w,
            "conv transpose input size for {s:?}"
        );
        assert_eq!(
            output.len(),
            s.out_c * s.out_h * s.out_w,
            "conv transpose output size for {s:?}"
        );
        if output.is_empty() {
            return;
        }
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let (n, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        for (plane, &b) in output.chunks_exact_mut(out_plane).zip(&self.bias) {
            plane.fill(b);
        }
        let b_len = gemm::packed_b_len(icg, n);
        let (b, cols) = grow(scratch, b_len + ocg * kh * kw * n).split_at_mut(b_len);
        for (g, a) in self.a.iter().enumerate() {
            gemm::pack_b_panels(b, &input[g * icg * n..], icg, n, n);
            gemm::gemm_panels(a, b, n, cols, n, GemmBias::None, Activation::Identity);
            // col2im: column (iy, ix) of row (co, ky, kx) lands on output
            // (iy * sh + ky * dh - pad_top, ix * sw + kx * dw - pad_left).
            for co in 0..ocg {
                let out = &mut output[(g * ocg + co) * out_plane..][..out_plane];
                for tap in 0..kh * kw {
                    let col_row = &cols[(co * kh * kw + tap) * n..][..n];
                    let (ky, kx) = (tap / kw, tap % kw);
                    let oy0 = (ky * s.dilation_h) as isize - s.pad_top as isize;
                    let ox0 = (kx * s.dilation_w) as isize - s.pad_left as isize;
                    let xs = valid_range(ox0, s.stride_w, s.in_w, s.out_w);
                    for iy in valid_range(oy0, s.stride_h, s.in_h, s.out_h) {
                        let oy = (oy0 + (iy * s.stride_h) as isize) as usize;
                        let src = &col_row[iy * s.in_w..][..s.in_w];
                        for ix in xs.clone() {
                            out[oy * s.out_w + (ox0 + (ix * s.stride_w) as isize) as usize] +=
                                src[ix];
                        }
                    }
                }
            }
        }
        self.act.apply(output);
    }
}

/// The `i < count` with `0 <= start + i * step < limit`.
fn valid_range(start: isize, step: usize, count: usize, limit: usize) -> Range<usize> {
    let step = step as isize;
    let lo = if start >= 0 {
        0
    } else {
        (-start + step - 1) / step
    };
    let hi = (limit as isize - start + step - 1).max(0) / step;
    let (lo, hi) = (lo as usize, (hi as usize).min(count));
    lo..hi.max(lo)
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

    const ACTIVATIONS: [Activation; 9] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Clip { min: 0.0, max: 6.0 },
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

    /// Checks `got` against f64 sums and sums of magnitudes: within 1e-5 of the magnitude.
    fn check(got: &[f32], want: &[(f64, f64)], act: Activation, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: output size");
        for (i, (&g, &(sum, mag))) in got.iter().zip(want).enumerate() {
            let w = act_f64(act, sum);
            let tol = 1e-5 * (mag + w.abs()) + 1e-30;
            assert!(
                (g as f64 - w).abs() <= tol,
                "{what}: output[{i}] = {g}, want {w} (tol {tol})"
            );
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

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

    fn conv_ref(s: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<(f64, f64)> {
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let mut out = Vec::new();
        for co in 0..s.out_c {
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    let b = bias.map_or(0.0, |b| b[co] as f64);
                    let (mut sum, mut mag) = (b, b.abs());
                    for cl in 0..icg {
                        let ci = co / ocg * icg + cl;
                        for ky in 0..s.kernel_h {
                            for kx in 0..s.kernel_w {
                                let iy = (oy * s.stride_h + ky * s.dilation_h) as isize
                                    - s.pad_top as isize;
                                let ix = (ox * s.stride_w + kx * s.dilation_w) as isize
                                    - s.pad_left as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.in_h as isize
                                    || ix >= s.in_w as isize
                                {
                                    continue;
                                }
                                let t = w[((co * icg + cl) * s.kernel_h + ky) * s.kernel_w + kx]
                                    as f64
                                    * x[(ci * s.in_h + iy as usize) * s.in_w + ix as usize] as f64;
                                sum += t;
                                mag += t.abs();
                            }
                        }
                    }
                    out.push((sum, mag));
                }
            }
        }
        out
    }

    /// (name, shape, expected path) covering groups, strides, dilations, pads and kernels.
    fn conv_cases() -> Vec<(&'static str, Conv2dShape, PathKind)> {
        use PathKind::*;
        vec![
            (
                "1x1",
                shape(16, (7, 9), 24, (1, 1), (1, 1), (1, 1), [0; 4], 1),
                Pointwise,
            ),
            (
                "1x1 odd channels",
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
                shape(3, (5, 47), 3, (3, 3), (2, 2), (1, 1), [1; 4], 3),
                Depthwise,
            ),
            (
                "dw 5x5",
                shape(3, (20, 23), 3, (5, 5), (1, 1), (1, 1), [2; 4], 3),
                Depthwise,
            ),
            (
                "dw 5x5 stride 2",
                shape(4, (17, 40), 4, (5, 5), (2, 2), (1, 1), [1, 1, 2, 2], 4),
                Depthwise,
            ),
            (
                "dw multiplier 2",
                shape(3, (9, 10), 6, (3, 3), (1, 1), (1, 1), [1; 4], 3),
                Depthwise,
            ),
            (
                "dw 7x7",
                shape(3, (9, 12), 3, (7, 7), (1, 1), (1, 1), [3; 4], 3),
                Depthwise,
            ),
            (
                "dw dilation 2",
                shape(2, (9, 9), 2, (3, 3), (1, 1), (2, 2), [2; 4], 2),
                Depthwise,
            ),
            (
                "dw stride 3 big pads",
                shape(3, (8, 10), 3, (3, 3), (3, 3), (1, 1), [3, 0, 0, 4], 3),
                Depthwise,
            ),
            (
                "dw 1x1",
                shape(4, (3, 5), 8, (1, 1), (1, 1), (1, 1), [0; 4], 4),
                Depthwise,
            ),
            (
                "tiny input",
                shape(2, (1, 1), 3, (3, 3), (1, 1), (1, 1), [1; 4], 1),
                Im2col,
            ),
        ]
    }

    #[test]
    fn conv_matches_reference_on_every_path() {
        let seed = 0xc0ffee;
        let mut rng = Rng(seed);
        let mut scratch = Vec::new();
        for (i, (name, s, path)) in conv_cases().into_iter().enumerate() {
            let act = ACTIVATIONS[i % ACTIVATIONS.len()];
            let x = rng.vec(s.in_c * s.in_h * s.in_w);
            let w = rng.vec(s.out_c * s.in_c / s.group * s.kernel_h * s.kernel_w);
            let b = rng.vec(s.out_c);
            let bias = (i % 3 != 0).then_some(&b[..]);
            let what = format!(
                "seed {seed:#x} case {name:?} {s:?} {act:?} bias {}",
                bias.is_some()
            );
            let conv = PackedConv2d::new(s, &w, bias, act);
            assert_eq!(PathKind::choose(&s), path, "{what}");
            assert_eq!(conv.shape(), &s);
            let mut y = vec![f32::NAN; s.out_c * s.out_h * s.out_w];
            conv.run(&x, &mut y, &mut scratch);
            check(&y, &conv_ref(&s, &x, &w, bias), act, &what);
            // The im2col path is the general one: every shape runs on it too, and the fast
            // paths sum in its order, so they agree bit for bit.
            let general = PackedConv2d::with_path(s, &w, bias, act, PathKind::Im2col);
            let mut y2 = vec![f32::NAN; y.len()];
            general.run(&x, &mut y2, &mut scratch);
            assert_eq!(bits(&y2), bits(&y), "{what}: im2col path disagrees");
        }
    }

    #[test]
    fn output_sizes() {
        assert_eq!(output_size(224, 3, 2, 1, 0, 1), 112);
        assert_eq!(output_size(224, 3, 2, 1, 1, 1), 112);
        assert_eq!(output_size(7, 7, 1, 1, 0, 0), 1);
        assert_eq!(output_size(5, 3, 1, 3, 0, 0), 0);
        assert_eq!(output_size(10, 3, 3, 2, 1, 1), 3);
        assert_eq!(conv_transpose_output_size(5, 3, 2, 1, 1, 1, 1), 10);
        assert_eq!(conv_transpose_output_size(4, 2, 2, 1, 0, 0, 0), 8);
        assert_eq!(conv_transpose_output_size(3, 3, 1, 2, 0, 0, 0), 7);
    }

    #[test]
    fn valid_ranges() {
        for start in -7isize..7 {
            for step in 1..4 {
                for count in 0..6 {
                    for limit in 0..9 {
                        let want: Vec<usize> = (0..count)
                            .filter(|&i| {
                                (0..limit as isize).contains(&(start + (i * step) as isize))
                            })
                            .collect();
                        let got: Vec<usize> = valid_range(start, step, count, limit).collect();
                        assert_eq!(
                            got, want,
                            "start {start} step {step} count {count} limit {limit}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "not divisible")]
    fn bad_group_panics() {
        PackedConv2d::new(
            shape(3, (4, 4), 4, (1, 1), (1, 1), (1, 1), [0; 4], 2),
            &[0.0; 8],
            None,
            Activation::Identity,
        );
    }

    fn conv_transpose_ref(
        s: &ConvTranspose2dShape,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<(f64, f64)> {
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let mut out: Vec<(f64, f64)> = (0..s.out_c * s.out_h * s.out_w)
            .map(|i| {
                bias.map_or((0.0, 0.0), |b| {
                    (
                        b[i / (s.out_h * s.out_w)] as f64,
                        b[i / (s.out_h * s.out_w)].abs() as f64,
                    )
                })
            })
            .collect();
        for ci in 0..s.in_c {
            for cl in 0..ocg {
                let co = ci / icg * ocg + cl;
                for iy in 0..s.in_h {
                    for ix in 0..s.in_w {
                        for ky in 0..s.kernel_h {
                            for kx in 0..s.kernel_w {
                                let oy = (iy * s.stride_h + ky * s.dilation_h) as isize
                                    - s.pad_top as isize;
                                let ox = (ix * s.stride_w + kx * s.dilation_w) as isize
                                    - s.pad_left as isize;
                                if oy < 0
                                    || ox < 0
                                    || oy >= s.out_h as isize
                                    || ox >= s.out_w as isize
                                {
                                    continue;
                                }
                                let t = w[((ci * ocg + cl) * s.kernel_h + ky) * s.kernel_w + kx]
                                    as f64
                                    * x[(ci * s.in_h + iy) * s.in_w + ix] as f64;
                                let o =
                                    &mut out[(co * s.out_h + oy as usize) * s.out_w + ox as usize];
                                o.0 += t;
                                o.1 += t.abs();
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv_transpose_matches_reference() {
        let seed = 0xdecaf;
        let mut rng = Rng(seed);
        let mut scratch = Vec::new();
        // (name, in_c, in (h, w), out_c, kernel, stride, dilation, pads [t, l, b, r],
        //  output padding, group)
        #[allow(clippy::type_complexity)]
        let cases: [(
            &str,
            usize,
            (usize, usize),
            usize,
            (usize, usize),
            (usize, usize),
            (usize, usize),
            [usize; 4],
            (usize, usize),
            usize,
        ); 7] = [
            (
                "2x2 stride 2",
                3,
                (4, 5),
                4,
                (2, 2),
                (2, 2),
                (1, 1),
                [0; 4],
                (0, 0),
                1,
            ),
            (
                "3x3 stride 2 output padding",
                4,
                (5, 6),
                3,
                (3, 3),
                (2, 2),
                (1, 1),
                [1; 4],
                (1, 1),
                1,
            ),
            (
                "4x4 stride 2 group 2",
                4,
                (3, 7),
                6,
                (4, 4),
                (2, 2),
                (1, 1),
                [1; 4],
                (0, 0),
                2,
            ),
            (
                "3x3 dilation 2",
                2,
                (5, 4),
                3,
                (3, 3),
                (1, 1),
                (2, 2),
                [0; 4],
                (0, 0),
                1,
            ),
            (
                "3x3 stride 3 asymmetric",
                3,
                (4, 3),
                2,
                (3, 3),
                (3, 3),
                (1, 1),
                [2, 0, 1, 3],
                (2, 1),
                1,
            ),
            (
                "1x1",
                5,
                (3, 3),
                7,
                (1, 1),
                (1, 1),
                (1, 1),
                [0; 4],
                (0, 0),
                1,
            ),
            (
                "depthwise 3x2 stride (2, 1)",
                3,
                (6, 5),
                3,
                (3, 2),
                (2, 1),
                (1, 1),
                [1, 0, 0, 1],
                (1, 0),
                3,
            ),
        ];
        for (
            i,
            (
                name,
                in_c,
                (in_h, in_w),
                out_c,
                (kh, kw),
                (sh, sw),
                (dh, dw),
                pads,
                (oph, opw),
                group,
            ),
        ) in cases.into_iter().enumerate()
        {
            let s = ConvTranspose2dShape {
                in_c,
                in_h,
                in_w,
                out_c,
                out_h: conv_transpose_output_size(in_h, kh, sh, dh, pads[0], pads[2], oph),
                out_w: conv_transpose_output_size(in_w, kw, sw, dw, pads[1], pads[3], opw),
                kernel_h: kh,
                kernel_w: kw,
                stride_h: sh,
                stride_w: sw,
                dilation_h: dh,
                dilation_w: dw,
                pad_top: pads[0],
                pad_left: pads[1],
                group,
            };
            let act = ACTIVATIONS[(i * 4) % ACTIVATIONS.len()];
            let x = rng.vec(in_c * in_h * in_w);
            let w = rng.vec(in_c * out_c / group * kh * kw);
            let b = rng.vec(out_c);
            let bias = (i % 2 == 0).then_some(&b[..]);
            let what = format!(
                "seed {seed:#x} case {name:?} {s:?} {act:?} bias {}",
                bias.is_some()
            );
            let conv = PackedConvTranspose2d::new(s, &w, bias, act);
            assert_eq!(conv.shape(), &s);
            let mut y = vec![f32::NAN; out_c * s.out_h * s.out_w];
            conv.run(&x, &mut y, &mut scratch);
            check(&y, &conv_transpose_ref(&s, &x, &w, bias), act, &what);
        }
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
    fn simd128_dwconv_matches_scalar_bit_for_bit() {
        fn case<const K: usize, const S: usize>(
            rng: &mut Rng,
            out_h: usize,
            out_w: usize,
            clamp: Option<(f32, f32)>,
        ) {
            let pw = (out_w - 1) * S + K + 2;
            let input = rng.vec(((out_h - 1) * S + K) * pw + PLANE_SLACK);
            let weight = rng.vec(K * K);
            let mut outs = [vec![0.0; out_h * out_w], vec![0.0; out_h * out_w]];
            for (out, kernel) in outs.iter_mut().zip([
                f32_dwconv2d_chw_minmax_kxk_scalar::<K, S> as DwKernel,
                f32_dwconv2d_chw_minmax_kxk_simd128::<K, S>,
            ]) {
                kernel(&mut DwArgs {
                    input: &input,
                    pw,
                    weight: &weight,
                    bias: 0.25,
                    clamp,
                    output: out,
                    out_h,
                    out_w,
                    kernel: [K, K],
                    stride: [S, S],
                    dilation: [1, 1],
                });
            }
            assert_eq!(
                bits(&outs[1]),
                bits(&outs[0]),
                "{K}x{K} stride {S} out {out_h}x{out_w} clamp {clamp:?}"
            );
        }
        let mut rng = Rng(9);
        for (out_h, out_w) in [(1, 1), (2, 3), (3, 4), (2, 16), (3, 23), (2, 37)] {
            for clamp in [None, Some((0.0, f32::INFINITY)), Some((-0.3, 0.4))] {
                case::<3, 1>(&mut rng, out_h, out_w, clamp);
                case::<3, 2>(&mut rng, out_h, out_w, clamp);
                case::<5, 1>(&mut rng, out_h, out_w, clamp);
                case::<5, 2>(&mut rng, out_h, out_w, clamp);
            }
        }
    }

    /// `cargo test --release -- --ignored --nocapture dwconv_gflops`
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore]
    fn dwconv_gflops() {
        let mut rng = Rng(1);
        let mut scratch = Vec::new();
        // EfficientNet-Lite0's depthwise layers at their largest resolution.
        for (c, hw, k, stride) in [
            (32, 112, 3, 1),
            (96, 112, 3, 2),
            (144, 56, 5, 2),
            (240, 28, 3, 1),
            (672, 14, 5, 1),
        ] {
            let pad = (k - 1) / 2;
            let s = shape(
                c,
                (hw, hw),
                c,
                (k, k),
                (stride, stride),
                (1, 1),
                [pad; 4],
                c,
            );
            let conv = PackedConv2d::new(
                s,
                &rng.vec(c * k * k),
                Some(&rng.vec(c)),
                Activation::Clip { min: 0.0, max: 6.0 },
            );
            let x = rng.vec(c * hw * hw);
            let mut y = vec![0.0; c * s.out_h * s.out_w];
            let flops = 2.0 * (c * s.out_h * s.out_w * k * k) as f64;
            let reps = (1e9 / flops).ceil() as usize;
            let start = std::time::Instant::now();
            (0..reps).for_each(|_| conv.run(&x, &mut y, &mut scratch));
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "dw {k}x{k}/{stride} c={c:3} {hw:3}x{hw:3}: {:6.3} ms, {:5.1} GFLOP/s",
                secs * 1e3,
                flops / secs / 1e9
            );
        }
    }
}
