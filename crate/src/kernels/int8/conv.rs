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
//! - Depthwise (`group == in_c`, any channel multiplier): on wasm32 with simd128, 3x3 and 5x5
//!   kernels with stride 1 or 2 take `dw_simd`: each input plane becomes a *pair plane* of i16
//!   (stride 1: element `x` is `(v[x], v[x + 1])`; stride 2: the row widened), so the inputs of
//!   two horizontally adjacent taps for 4 outputs are one 16-byte load, multiplied by the
//!   weight pair with `i32x4.dot_i16x8_s`; blocks of 8 outputs, requantized with the
//!   channel's `PreparedRequant` (its exact f64 formula, as the accumulators of at most 25
//!   products allow, without its half where no accumulator is a tie; see `dw_simd` for the
//!   layout and costs). Elsewhere (other kernels, dilations, and every shape natively) each
//!   input plane is copied into `scratch` with a border of the input zero point and
//!   `qs8_dwconv2d_chw_minmax_kxk_scalar` (3x3, 5x5) or `qs8_dwconv2d_chw_minmax_scalar`
//!   computes each output plane.
//! - Pointwise (1x1, stride 1, no padding): the input already is `X = [in_c][h*w]`; it is
//!   packed block by block and multiplied by the weights packed at load (`gemm`).
//! - Im2col (everything else, per group): the im2col matrix is written straight into the packed
//!   `X` layout, block by block, then multiplied. On wasm32 with simd128, a panel of 8 outputs
//!   on one row with stride 1 or 2 is written 16 bytes at a time (one load per k row, an
//!   even-byte shuffle for stride 2, one interleave per k pair); when the panel's whole
//!   receptive field lies inside the input, each row is loaded from its tap's offset, worked
//!   out once per call, without a test per row.
//!
//! Blocks of `X` hold about `X_BLOCK_BYTES`, so a packed block is still in cache when the GEMM
//! reads it and `scratch` stays small.
//!
//! Every path also gives its exact i32 accumulators instead of int8 outputs
//! ([`PackedQs8Conv2d::run_accumulators`]: QAT's simulation keeps the values before rounding),
//! from the same accumulation code: the GEMM's `Accumulate` tiles, the pair-plane block walker
//! (`dw_simd::Output::Sums`), the scalar loops' `dw_sum`.
//!
//! # Tests
//! Every path (depthwise 3x3/5x5 at stride 1 and 2, multiplier 2, generic depthwise, pointwise,
//! grouped, dilated, strided, asymmetric pads) with non-zero and extreme zero points, against an
//! exact i64 convolution and the same requantizers; natively and on wasm32 with simd128, where
//! the pair-plane depthwise path is also compared bit for bit with the scalar kernels on every
//! output width from 1 to 19 and more, all pads, multipliers 1 and 2, and requantizers that
//! take each of its formulas, outputs and accumulators alike.

use super::super::conv::Conv2dShape;
use super::gemm::{self, PackedWeightsQs8, NR};
use super::requant::{requantize, OutputParams, PreparedRequant, Requantizer};

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
        /// Per output channel, prepared with the channel's accumulator bound.
        prepared: Vec<PreparedRequant>,
        kernel: DwKernel,
    },
    /// Per group, weights `[out_c / group][in_c / group]` and the prepared requantizers.
    Pointwise {
        w: Vec<(PackedWeightsQs8, Vec<PreparedRequant>)>,
    },
    /// Per group, weights `[out_c / group][in_c / group * kh * kw]` and the prepared
    /// requantizers.
    Im2col {
        w: Vec<(PackedWeightsQs8, Vec<PreparedRequant>)>,
    },
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
        let pack_groups = || -> Vec<(PackedWeightsQs8, Vec<PreparedRequant>)> {
            (0..s.group)
                .map(|g| {
                    let w = PackedWeightsQs8::new(
                        &weight_q[g * ocg * kdim..][..ocg * kdim],
                        ocg,
                        kdim,
                        bias_q.map(|b| &b[g * ocg..][..ocg]),
                        input_zero_point,
                    );
                    let prepared = w.prepare(&requant[g * ocg..][..ocg]);
                    (w, prepared)
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
                    prepared: packed.prepare(&requant),
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
        self.check_sizes(input.len(), output.len());
        if output.is_empty() {
            return;
        }
        match &self.path {
            Path::Depthwise {
                weight,
                bias,
                prepared,
                kernel,
            } => {
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                {
                    let o = dw_simd::OutputLanes::new(&self.params);
                    let out = dw_simd::Output::Requantized { prepared, o, output: &mut *output };
                    if dw_simd::run(&self.shape, self.input_zero_point, weight, bias, input, scratch, out) {
                        return;
                    }
                }
                let _ = prepared;
                self.run_depthwise(weight, bias, *kernel, input, output, scratch)
            }
            Path::Pointwise { w } | Path::Im2col { w } => {
                self.run_gemm(w, input, output, scratch, |prepared| gemm::Requantize {
                    requant: gemm::ChannelRequant::Prepared(prepared),
                    params: &self.params,
                })
            }
        }
    }

    /// The exact accumulators `bias[c] + Σ (x - zx) · w` of every output, in i32 and in the
    /// output's layout, before requantization: what [`run`](Self::run) requantizes, from the
    /// same kernels (QAT's simulation takes them to keep the values before rounding). Every
    /// path has them; on the depthwise shapes without a pair-plane kernel (and natively) they
    /// come from the scalar loop.
    pub fn run_accumulators(&self, input: &[i8], output: &mut [i32], scratch: &mut Vec<i8>) {
        self.check_sizes(input.len(), output.len());
        match &self.path {
            Path::Depthwise { weight, bias, .. } => {
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                if dw_simd::run(&self.shape, self.input_zero_point, weight, bias, input, scratch, dw_simd::Output::Sums(&mut *output)) {
                    return;
                }
                self.run_depthwise_sums(weight, bias, input, output, scratch)
            }
            Path::Pointwise { w } | Path::Im2col { w } => {
                self.run_gemm(w, input, output, scratch, |_| gemm::Accumulate)
            }
        }
    }

    /// Panics unless the input and output sizes are one image's of the shape.
    fn check_sizes(&self, input: usize, output: usize) {
        let s = &self.shape;
        assert_eq!(
            input,
            s.in_c * s.in_h * s.in_w,
            "qs8 conv input size for {s:?}"
        );
        assert_eq!(
            output,
            s.out_c * s.out_h * s.out_w,
            "qs8 conv output size for {s:?}"
        );
    }

    /// Per group and per block of output pixels: packs columns `n0..n0 + nc` of `X` (the
    /// input itself for a pointwise convolution, its im2col matrix otherwise), then the GEMM
    /// writes them to the output through the group's `tiles`.
    fn run_gemm<'a, O: gemm::TileOutput>(
        &self,
        w: &'a [(PackedWeightsQs8, Vec<PreparedRequant>)],
        input: &[i8],
        output: &mut [O::T],
        scratch: &mut Vec<i8>,
        tiles: impl Fn(&'a [PreparedRequant]) -> O,
    ) {
        let s = &self.shape;
        let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
        let (in_len, n) = (icg * s.in_h * s.in_w, s.out_h * s.out_w);
        let kc = (icg * s.kernel_h * s.kernel_w).next_multiple_of(2);
        let block = (X_BLOCK_BYTES / kc.max(1) / NR * NR).clamp(NR, n.next_multiple_of(NR));
        let dst = gemm::grow(scratch, gemm::packed_x_len(kc, block));
        let pointwise = matches!(self.path, Path::Pointwise { .. });
        for (g, (w, prepared)) in w.iter().enumerate() {
            let x = &input[g * in_len..][..in_len];
            let tiles = tiles(prepared);
            for n0 in (0..n).step_by(block) {
                let nc = block.min(n - n0);
                let packed = &mut dst[..gemm::packed_x_len(w.k(), nc)];
                if pointwise {
                    gemm::pack_x(packed, &x[n0..], icg, nc, s.in_h * s.in_w);
                } else {
                    im2col_packed(packed, x, s, self.input_zero_point, n0, nc);
                }
                let out = &mut output[g * ocg * n + n0..];
                gemm::gemm_packed(w, packed, nc, &tiles, out, [n, 1]);
            }
        }
    }

    /// Per output channel `co`, `f(co, plane, pw)` with the padded plane of its input channel
    /// (rows of `pw` bytes, the input zero point around the input), which covers every tap of
    /// every output.
    fn depthwise_planes(&self, input: &[i8], scratch: &mut Vec<i8>, mut f: impl FnMut(usize, &[i8], usize)) {
        let s = &self.shape;
        let (kh, kw) = (s.kernel_h, s.kernel_w);
        // The padded plane covers every tap of every output, and at least the whole input.
        let ph = (s.pad_top + s.in_h).max((s.out_h - 1) * s.stride_h + (kh - 1) * s.dilation_h + 1);
        let pw =
            (s.pad_left + s.in_w).max((s.out_w - 1) * s.stride_w + (kw - 1) * s.dilation_w + 1);
        let plane = gemm::grow(scratch, ph * pw);
        let in_plane = s.in_h * s.in_w;
        let multiplier = s.out_c / s.in_c;
        for ci in 0..s.in_c {
            pad_plane(plane, &input[ci * in_plane..][..in_plane], s, pw, self.input_zero_point);
            for co in ci * multiplier..(ci + 1) * multiplier {
                f(co, plane, pw);
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
        let (kh, kw, out_plane) = (s.kernel_h, s.kernel_w, s.out_h * s.out_w);
        self.depthwise_planes(input, scratch, |co, plane, pw| {
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
            })
        });
    }

    /// The accumulators of [`run_depthwise`](Self::run_depthwise): the same padded planes and
    /// sums, stored instead of requantized.
    fn run_depthwise_sums(
        &self,
        weight: &[i8],
        bias: &[i32],
        input: &[i8],
        output: &mut [i32],
        scratch: &mut Vec<i8>,
    ) {
        let s = &self.shape;
        let (kh, kw, out_plane) = (s.kernel_h, s.kernel_w, s.out_h * s.out_w);
        self.depthwise_planes(input, scratch, |co, plane, pw| {
            let w = &weight[co * kh * kw..][..kh * kw];
            let out = &mut output[co * out_plane..][..out_plane];
            for (oy, row) in out.chunks_exact_mut(s.out_w).enumerate() {
                for (ox, acc) in row.iter_mut().enumerate() {
                    let at = [oy, ox];
                    *acc = dw_sum(plane, pw, w, bias[co], at, [kh, kw], [s.stride_h, s.stride_w], [s.dilation_h, s.dilation_w]);
                }
            }
        });
    }
}

/// The simd128 depthwise path for 3x3 and 5x5 kernels with stride 1 or 2 (no dilation).
///
/// Per input channel, the padded plane is first written as a **pair plane** of i16 values,
/// so that the two inputs of a pair of horizontally adjacent taps `(kx, kx + 1)` for four
/// consecutive outputs are 16 contiguous bytes, ready for `i32x4.dot_i16x8_s` with the
/// splatted weight pair:
/// - stride 1: element `x` of a row is the i16 pair `(v[x], v[x + 1])` (4 bytes), and the
///   pair of taps at `kx` for output `ox` is element `ox + kx`;
/// - stride 2: a row is just `v` widened to i16, and the pair at `kx` for output `ox` is
///   `(v[2 ox + kx], v[2 ox + kx + 1])`, i16 elements `2 ox + kx` and `2 ox + kx + 1`.
///
/// Either way its byte offset is `4 ox + kx · 4 / S`. A row of `K` taps is `ceil(K / 2)`
/// pairs, the last one with a zero second weight; 8 outputs (two i32x4 accumulators) cost
/// `2 K ceil(K / 2)` loads, dots and adds, then the requantization of `PreparedRequant`.
/// `v` is the input row with the zero point around it, `zx` also past the padded width, so
/// the last block of a row may compute (and discard) outputs past `out_w`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod dw_simd {
    use super::super::super::conv::Conv2dShape;
    use super::super::requant::simd::{
        f64_lanes, fp32_lanes, prepared_lanes, requantize, requantize_f64, requantize_f64_no_ties, requantize_fp32,
        requantize_fast, Lanes,
    };
    pub(super) use super::super::requant::simd::OutputLanes;
    use super::super::requant::PreparedRequant;
    use super::gemm;
    use core::arch::wasm32::*;

    /// Outputs of a row per block (two i32x4 accumulators).
    const BLOCK: usize = 8;

    /// What becomes of the accumulators: requantized to int8 with each channel's
    /// [`PreparedRequant`] (the engine), or stored in i32 (QAT's simulation).
    pub(super) enum Output<'a> {
        Requantized {
            prepared: &'a [PreparedRequant],
            o: OutputLanes,
            output: &'a mut [i8],
        },
        Sums(&'a mut [i32]),
    }

    /// Runs the depthwise convolution into `out` if its shape has a pair-plane kernel; false
    /// otherwise (nothing written).
    pub(super) fn run(
        s: &Conv2dShape,
        zx: i8,
        weight: &[i8],
        bias: &[i32],
        input: &[i8],
        scratch: &mut Vec<i8>,
        out: Output,
    ) -> bool {
        if (s.dilation_h, s.dilation_w) != (1, 1)
            || s.stride_h != s.stride_w
            || s.kernel_h != s.kernel_w
        {
            return false;
        }
        match (s.kernel_h, s.stride_h) {
            (3, 1) => run_k::<3, 1>(s, zx, weight, bias, input, scratch, out),
            (3, 2) => run_k::<3, 2>(s, zx, weight, bias, input, scratch, out),
            (5, 1) => run_k::<5, 1>(s, zx, weight, bias, input, scratch, out),
            (5, 2) => run_k::<5, 2>(s, zx, weight, bias, input, scratch, out),
            _ => return false,
        }
        true
    }

    /// Elements (i32 pairs for stride 1, i16 for stride 2) per pair-plane row, a multiple of 8.
    fn row_elems<const K: usize, const S: usize>(out_w: usize) -> usize {
        let blocks = out_w.next_multiple_of(BLOCK);
        if S == 1 {
            blocks + K - 1
        } else {
            2 * blocks + K
        }
        .next_multiple_of(8)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_k<const K: usize, const S: usize>(
        s: &Conv2dShape,
        zx: i8,
        weight: &[i8],
        bias: &[i32],
        input: &[i8],
        scratch: &mut Vec<i8>,
        mut out: Output,
    ) {
        let ph = (s.out_h - 1) * S + K;
        let elems = row_elems::<K, S>(s.out_w);
        let pitch = elems * 4 / S;
        // The padded input row: elements 0..elems (+1 for stride 1), and 8 bytes of slack
        // for the widening loads.
        let rowbuf_len = elems + 32;
        let buf = gemm::grow(scratch, ph * pitch + rowbuf_len);
        let (plane, rowbuf) = buf.split_at_mut(ph * pitch);
        let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let multiplier = s.out_c / s.in_c;
        rowbuf.fill(zx);
        for ci in 0..s.in_c {
            build_plane::<S>(
                plane,
                pitch,
                elems,
                rowbuf,
                &input[ci * in_plane..][..in_plane],
                s,
                zx,
            );
            for co in ci * multiplier..(ci + 1) * multiplier {
                let (w, b) = (&weight[co * K * K..][..K * K], bias[co]);
                let (oh, ow) = (s.out_h, s.out_w);
                match &mut out {
                    Output::Requantized { prepared, o, output } => {
                        let y = &mut output[co * out_plane..][..out_plane];
                        qs8_dwconv2d_chw_pairs_minmax_simd128::<K, S>(
                            plane,
                            pitch,
                            w,
                            b,
                            &prepared[co],
                            o,
                            y,
                            oh,
                            ow,
                        );
                    }
                    Output::Sums(output) => {
                        let y = &mut output[co * out_plane..][..out_plane];
                        qs8_dwconv2d_chw_pairs_sums_simd128::<K, S>(plane, pitch, w, b, y, oh, ow);
                    }
                }
            }
        }
    }

    /// Writes the pair plane of one input plane `x` (see the module docs): `ph` rows of
    /// `pitch` bytes, padded row `y` being input row `y - pad_top` or the zero point.
    /// `rowbuf` (`elems + 32` bytes) holds the padded row; it must be all `zx` on entry and is
    /// left so. No `memory.copy`/`memory.fill` (V8 calls out of line for them): 16-byte
    /// vector copies, the overshoot past the row repaired with one store of `zx`.
    fn build_plane<const S: usize>(
        plane: &mut [i8],
        pitch: usize,
        elems: usize,
        rowbuf: &mut [i8],
        x: &[i8],
        s: &Conv2dShape,
        zx: i8,
    ) {
        let (top, in_w) = (s.pad_top, s.in_w);
        // Input columns past the padded row are never read (a shape may ask for fewer outputs
        // than its input allows).
        let left = s.pad_left.min(elems);
        let w = in_w.min(elems - left);
        assert!(rowbuf.len() >= elems + 32 && left + w + 16 <= rowbuf.len());
        let zx8 = i8x16_splat(zx);
        let zx16 = i16x8_splat(zx as i16);
        let rb = rowbuf.as_mut_ptr();
        for (y, row) in plane.chunks_exact_mut(pitch).enumerate() {
            let rp = row.as_mut_ptr();
            let Some(iy) = y.checked_sub(top).filter(|&iy| iy < s.in_h) else {
                // SAFETY: `pitch` is a multiple of 16 bytes (`elems` is a multiple of 8).
                unsafe {
                    for i in (0..pitch).step_by(16) {
                        v128_store(rp.add(i) as *mut v128, zx16);
                    }
                }
                continue;
            };
            let src = &x[iy * in_w..][..w];
            // SAFETY: 16-byte copies of src[i..i + 16] to rb[left + i..] while they fit in
            // `x` (the plane may end right after this row), then bytes one by one;
            // `rowbuf` has room for left + w + 16. Then reads of 8 bytes at rb + e and
            // rb + e + 1 for e < elems, within elems + 32; stores of 32 bytes (stride 1) or
            // 16 (stride 2) at element e, within `pitch`.
            unsafe {
                let sp = src.as_ptr();
                let room = x.len() - iy * in_w;
                let mut i = 0;
                while i < w && i + 16 <= room {
                    v128_store(
                        rb.add(left + i) as *mut v128,
                        v128_load(sp.add(i) as *const v128),
                    );
                    i += 16;
                }
                while i < w {
                    *rb.add(left + i) = *sp.add(i);
                    i += 1;
                }
                v128_store(rb.add(left + w) as *mut v128, zx8);
                for e in (0..elems).step_by(8) {
                    let a = i16x8_load_extend_i8x8(rb.add(e));
                    if S == 1 {
                        let b = i16x8_load_extend_i8x8(rb.add(e + 1));
                        let lo = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(a, b);
                        let hi = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(a, b);
                        v128_store(rp.add(4 * e) as *mut v128, lo);
                        v128_store(rp.add(4 * e + 16) as *mut v128, hi);
                    } else {
                        v128_store(rp.add(2 * e) as *mut v128, a);
                    }
                }
            }
        }
    }

    /// The weight pairs `(w[ky][2j], w[ky][2j + 1] or 0)` of a `K x K` kernel, as i32 lanes of
    /// two i16.
    fn weight_pairs<const K: usize>(weight: &[i8]) -> [[u32; 3]; 5] {
        assert!(weight.len() == K * K);
        let mut wp = [[0u32; 3]; 5];
        for ky in 0..K {
            for j in 0..K.div_ceil(2) {
                let w0 = weight[ky * K + 2 * j];
                let w1 = if 2 * j + 1 < K {
                    weight[ky * K + 2 * j + 1]
                } else {
                    0
                };
                wp[ky][j] = (w0 as i16 as u16 as u32) | ((w1 as i16 as u16 as u32) << 16);
            }
        }
        wp
    }

    /// Calls `f(at, acc0, acc1)` with the accumulators of each block of 8 outputs of an
    /// `out_h x out_w` plane, in order (`at = oy * out_w + ox`): per block, `K` rows of
    /// `ceil(K / 2)` tap pairs (see the module docs). The last block of a row covers outputs
    /// past `out_w`, which `f` may store into the next row (computed later) but, in the last
    /// row, not past `out_h * out_w`.
    #[inline(always)]
    fn pair_plane_blocks<const K: usize, const S: usize>(
        plane: &[i8],
        pitch: usize,
        weight: &[i8],
        bias: i32,
        out_h: usize,
        out_w: usize,
        mut f: impl FnMut(usize, v128, v128),
    ) {
        const { assert!((K == 3 || K == 5) && (S == 1 || S == 2)) };
        assert!(plane.len() >= ((out_h - 1) * S + K) * pitch);
        assert!(pitch >= row_elems::<K, S>(out_w) * 4 / S);
        let wp = weight_pairs::<K>(weight);
        let bias = i32x4_splat(bias);
        // SAFETY: block (oy, ox) with ox < out_w reads 32 bytes at byte
        // (oy * S + ky) * pitch + 4 * ox + 2 j * 4 / S for ky < K, j < pairs, which ends
        // within the row (`pitch` covers `row_elems`, see its derivation) and the plane
        // (checked above).
        unsafe {
            let pp = plane.as_ptr();
            for oy in 0..out_h {
                let base = pp.add(oy * S * pitch);
                for ox in (0..out_w).step_by(BLOCK) {
                    let mut acc0 = bias;
                    let mut acc1 = bias;
                    for (ky, wrow) in wp.iter().enumerate().take(K) {
                        let row = base.add(ky * pitch + 4 * ox);
                        for (j, w) in wrow.iter().enumerate().take(K.div_ceil(2)) {
                            let w = v128_load32_splat(w);
                            let p = row.add(2 * j * 4 / S);
                            acc0 = i32x4_add(acc0, i32x4_dot_i16x8(v128_load(p as *const v128), w));
                            acc1 = i32x4_add(
                                acc1,
                                i32x4_dot_i16x8(v128_load(p.add(16) as *const v128), w),
                            );
                        }
                    }
                    f(oy * out_w + ox, acc0, acc1);
                }
            }
        }
    }

    /// One output plane from a pair plane ([`pair_plane_blocks`]), requantized and stored as
    /// 8 bytes a block; the last row's tail goes through a buffer.
    #[allow(clippy::too_many_arguments)]
    fn qs8_dwconv2d_chw_pairs_minmax_simd128<const K: usize, const S: usize>(
        plane: &[i8],
        pitch: usize,
        weight: &[i8],
        bias: i32,
        rq: &PreparedRequant,
        o: &OutputLanes,
        out: &mut [i8],
        out_h: usize,
        out_w: usize,
    ) {
        assert!(out.len() == out_h * out_w);
        // A depthwise accumulator is at most K² products: the f64 formula always applies in
        // practice (checked per channel all the same).
        let (fp32, no_ties, exact_f64, fast) = (rq.fp32, rq.no_ties, rq.exact_f64, rq.fast);
        let lanes = Lanes::new(&rq.rq);
        pair_plane_blocks::<K, S>(plane, pitch, weight, bias, out_h, out_w, |at, acc0, acc1| {
            let (v0, v1) = if fp32 {
                let scale = fp32_lanes(rq);
                (requantize_fp32(acc0, scale), requantize_fp32(acc1, scale))
            } else if no_ties {
                let (scale, _) = f64_lanes(rq);
                (requantize_f64_no_ties(acc0, scale), requantize_f64_no_ties(acc1, scale))
            } else if exact_f64 {
                let (scale, half) = f64_lanes(rq);
                (requantize_f64(acc0, scale, half), requantize_f64(acc1, scale, half))
            } else if fast {
                let (m, nudge) = prepared_lanes(rq);
                (requantize_fast(acc0, m, nudge, rq.right), requantize_fast(acc1, m, nudge, rq.right))
            } else {
                (requantize(acc0, &lanes), requantize(acc1, &lanes))
            };
            let v = o.narrow_clamp8(v0, v1);
            if at + BLOCK <= out.len() {
                // SAFETY: 8 bytes at `at`, within `out`.
                unsafe { v128_store64_lane::<0>(v, out.as_mut_ptr().add(at) as *mut u64) };
            } else {
                let mut last = [0i8; 16];
                // SAFETY: 16 bytes into `last`.
                unsafe { v128_store(last.as_mut_ptr() as *mut v128, v) };
                let n = out.len() - at;
                out[at..].copy_from_slice(&last[..n]);
            }
        });
    }

    /// [`qs8_dwconv2d_chw_pairs_minmax_simd128`]'s accumulators, stored as they are: 8 i32 a
    /// block; the last row's tail goes through a buffer.
    fn qs8_dwconv2d_chw_pairs_sums_simd128<const K: usize, const S: usize>(
        plane: &[i8],
        pitch: usize,
        weight: &[i8],
        bias: i32,
        out: &mut [i32],
        out_h: usize,
        out_w: usize,
    ) {
        assert!(out.len() == out_h * out_w);
        pair_plane_blocks::<K, S>(plane, pitch, weight, bias, out_h, out_w, |at, acc0, acc1| {
            if at + BLOCK <= out.len() {
                // SAFETY: 32 bytes at `at`, within `out`.
                unsafe {
                    let p = out.as_mut_ptr().add(at);
                    v128_store(p as *mut v128, acc0);
                    v128_store(p.add(4) as *mut v128, acc1);
                }
            } else {
                let mut last = [0i32; BLOCK];
                // SAFETY: 32 bytes into `last`.
                unsafe {
                    v128_store(last.as_mut_ptr() as *mut v128, acc0);
                    v128_store(last.as_mut_ptr().add(4) as *mut v128, acc1);
                }
                let n = out.len() - at;
                out[at..].copy_from_slice(&last[..n]);
            }
        });
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
    // Per row p of the im2col matrix: its input plane's offset and its tap's offset from the
    // receptive field's top-left corner. Worked out once: the divisions by run-time sizes
    // cost more than the copies they index.
    let rows: Vec<(usize, isize, isize)> = (0..k)
        .map(|p| {
            let (ci, tap) = (p / taps, p % taps);
            (
                ci * plane_len,
                (tap / s.kernel_w) as isize * dh,
                (tap % s.kernel_w) as isize * dw,
            )
        })
        .collect();
    // Row p's tap as an offset from the receptive field's top-left corner in `x`, and the
    // largest (the last row's), for panels whose whole field lies inside the input.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let tap_at: Vec<usize> = rows
        .iter()
        .map(|&(offset, dy, dx)| offset + dy as usize * s.in_w + dx as usize)
        .collect();
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (last_tap, field_h, field_w) = (
        tap_at.iter().copied().max().unwrap_or(0),
        (s.kernel_h as isize - 1) * dh,
        (NR as isize - 1) * sw + (s.kernel_w as isize - 1) * dw,
    );
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
        // All lanes on one output row: one input row per tap, lanes `sw` apart.
        let one_row = cols == NR && col % s.out_w + NR <= s.out_w;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if let (true, Some((y0, x0)), 1 | 2) = (one_row, origin[0], sw) {
            use core::arch::wasm32::*;
            // Most panels of a layer: the 8 lanes' whole receptive field inside the input, so
            // each row is one 16-byte load at its tap's offset, with no test per row (the
            // per-row tests and slicing below cost as much as the copies at 3 channels).
            let corner = y0 * iw + x0;
            if y0 >= 0
                && x0 >= 0
                && y0 + field_h < ih
                && x0 + field_w < iw
                && corner as usize + last_tap + 16 <= x.len()
            {
                let base = x.as_ptr().wrapping_add(corner as usize);
                let row = |p: usize| -> v128 {
                    if p >= k {
                        return i8x16_splat(0);
                    }
                    // SAFETY: 16 bytes at corner + tap_at[p] <= corner + last_tap, inside `x`
                    // (checked above).
                    let a = unsafe { v128_load(base.add(tap_at[p]) as *const v128) };
                    if sw == 1 {
                        a
                    } else {
                        i8x16_shuffle::<0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14>(a, a)
                    }
                };
                for (st, step) in panel.chunks_exact_mut(2 * NR).enumerate() {
                    let v = interleave_low(row(2 * st), row(2 * st + 1));
                    // SAFETY: a 16-byte store into a 16-byte chunk.
                    unsafe { v128_store(step.as_mut_ptr() as *mut v128, v) };
                }
                continue;
            }
            // The 8 lanes of row p in the low 8 bytes: one 16-byte load (and an even-byte
            // shuffle for stride 2) when the row of taps lies inside the plane, else lane by
            // lane; rows p >= k are zero.
            let lanes8 = |p: usize| -> v128 {
                if p >= k {
                    return i8x16_splat(0);
                }
                let (offset, dy, dx) = rows[p];
                let plane = &x[offset..][..plane_len];
                let (y, xs) = (y0 + dy, x0 + dx);
                let start = y * iw + xs;
                if (0..ih).contains(&y)
                    && xs >= 0
                    && xs + (NR as isize - 1) * sw < iw
                    && start as usize + 16 <= plane.len()
                {
                    // SAFETY: 16 bytes at `start`, inside `plane` (checked above).
                    let a = unsafe { v128_load(plane.as_ptr().add(start as usize) as *const v128) };
                    if sw == 1 {
                        a
                    } else {
                        i8x16_shuffle::<0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14>(a, a)
                    }
                } else {
                    let mut v = [0i8; 16];
                    for (c, l) in v.iter_mut().enumerate().take(NR) {
                        *l = at(plane, y, xs + c as isize * sw);
                    }
                    // SAFETY: a 16-byte load of a 16-byte array.
                    unsafe { v128_load(v.as_ptr() as *const v128) }
                }
            };
            for (st, step) in panel.chunks_exact_mut(2 * NR).enumerate() {
                let v = interleave_low(lanes8(2 * st), lanes8(2 * st + 1));
                // SAFETY: a 16-byte store into a 16-byte chunk.
                unsafe { v128_store(step.as_mut_ptr() as *mut v128, v) };
            }
            continue;
        }
        if k % 2 == 1 {
            // The second half of the last pair multiplies zero weights; keep it deterministic.
            let last = &mut panel[(kc / 2 - 1) * 2 * NR..];
            last.iter_mut().skip(1).step_by(2).for_each(|v| *v = 0);
        }
        for (p, &(offset, dy, dx)) in rows.iter().enumerate() {
            let plane = &x[offset..][..plane_len];
            // Lane c of row p is at step[2 * c + p % 2] of its k pair.
            let step = &mut panel[p / 2 * 2 * NR..][p % 2..2 * NR];
            let lanes = step.iter_mut().step_by(2);
            match (one_row, origin[0]) {
                (true, Some((y0, x0))) => {
                    let (y, xs) = (y0 + dy, x0 + dx);
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
                        *v = o.map_or(0, |(y0, x0)| at(plane, y0 + dy, x0 + dx));
                    }
                }
            }
        }
    }
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
        (3, 3, 1, 1, 1, 1) => qs8_dwconv2d_chw_minmax_kxk_scalar::<3, 1>,
        (3, 3, 2, 2, 1, 1) => qs8_dwconv2d_chw_minmax_kxk_scalar::<3, 2>,
        (5, 5, 1, 1, 1, 1) => qs8_dwconv2d_chw_minmax_kxk_scalar::<5, 1>,
        (5, 5, 2, 2, 1, 1) => qs8_dwconv2d_chw_minmax_kxk_scalar::<5, 2>,
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
            let acc = dw_sum(p.input, p.pw, p.weight, p.bias, [oy, ox], [kh, kw], [sh, sw], [dh, dw]);
            *out = requantize(acc, p.requant, p.params);
        }
    }
}

/// `bias + Σ_{ky, kx} w[ky][kx] · in[oy * sh + ky * dh][ox * sw + kx * dw]`: one output's
/// accumulator on a padded plane of rows of `pw`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_sum(
    input: &[i8],
    pw: usize,
    weight: &[i8],
    bias: i32,
    [oy, ox]: [usize; 2],
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
) -> i32 {
    let mut acc = bias;
    for ky in 0..kh {
        let x_row = &input[(oy * sh + ky * dh) * pw + ox * sw..];
        for kx in 0..kw {
            acc += weight[ky * kw + kx] as i32 * x_row[kx * dw] as i32;
        }
    }
    acc
}

/// `qs8_dwconv2d_chw_minmax_scalar` with a constant `K x K` kernel, stride `S` and no
/// dilation, so the tap loops unroll. (On wasm32 with simd128 these shapes take `dw_simd`.)
fn qs8_dwconv2d_chw_minmax_kxk_scalar<const K: usize, const S: usize>(p: &mut DwArgs) {
    assert!(p.kernel == [K, K] && p.stride == [S, S] && p.dilation == [1, 1]);
    dwconv2d_chw_scalar(p, [K, K], [S, S], [1, 1])
}

/// Bytes 0..8 of `a` and `b`, interleaved: `[a0, b0, a1, b1, ..]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[rustfmt::skip]
#[inline(always)]
fn interleave_low(a: core::arch::wasm32::v128, b: core::arch::wasm32::v128) -> core::arch::wasm32::v128 {
    core::arch::wasm32::i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(a, b)
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
            // Wide enough for panels whose whole receptive field is inside the input (one
            // load per im2col row), at dilation 2 and stride 2, the last rows near the end.
            (
                "3x3 dilation 2 stride 2 wide",
                shape(3, (12, 40), 4, (3, 3), (2, 2), (2, 2), [1; 4], 1),
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
        // The accumulators themselves, from the same kernels.
        let mut sums = vec![i32::MIN; acc.len()];
        conv.run_accumulators(x, &mut sums, &mut scratch);
        let sums: Vec<i64> = sums.iter().map(|&v| v as i64).collect();
        assert_eq!(sums, acc, "{what}: accumulators");
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

    /// The pair-plane depthwise path (`dw_simd`) against the scalar kernels, bit for bit: every
    /// output width from 1 to 19 and a few wider ones (blocks of 8, the last one partial), one to
    /// five rows, every pad combination, channel multipliers 1 and 2, zero points at both ends,
    /// requantizers that take the f64 formula without ties, with its half (powers of two) and
    /// neither (multipliers of 1 and more), and a clamp.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_depthwise_matches_scalar_bit_for_bit() {
        let seed = 0xd3;
        let mut rng = Rng(seed);
        let mut cases = 0;
        for (k, st, mult) in [
            (3usize, 1usize, 1usize),
            (3, 1, 2),
            (3, 2, 1),
            (3, 2, 2),
            (5, 1, 1),
            (5, 1, 2),
            (5, 2, 1),
            (5, 2, 2),
        ] {
            for out_w in (1..=19usize).chain([23, 31, 32, 33, 40]) {
                // Up to 5 rows: odd and even counts.
                let out_h = 1 + (out_w + mult) % 5;
                let pads = [
                    rng.int(0, k as i64 / 2) as usize,
                    rng.int(0, k as i64 / 2) as usize,
                ];
                let in_h = ((out_h - 1) * st + k)
                    .saturating_sub(pads[0] + rng.int(0, 1) as usize)
                    .max(1);
                let in_w = ((out_w - 1) * st + k)
                    .saturating_sub(pads[1] + rng.int(0, 1) as usize)
                    .max(1);
                let c = 2;
                let mut sh = shape(
                    c,
                    (in_h, in_w),
                    c * mult,
                    (k, k),
                    (st, st),
                    (1, 1),
                    [pads[0], pads[1], 0, 0],
                    c,
                );
                (sh.out_h, sh.out_w) = (out_h, out_w);
                let x = rng.i8s(c * in_h * in_w, -128, 127);
                let w = rng.i8s(c * mult * k * k, -128, 127);
                let bias: Vec<i32> = (0..c * mult)
                    .map(|_| rng.int(-30000, 30000) as i32)
                    .collect();
                let rq: Vec<Requantizer> = (0..c * mult)
                    .map(|i| match (cases + i) % 4 {
                        0 => Requantizer::from_real(0.5 + rng.unit()),
                        // A power of two: ties within the bound, the f64 formula with its half.
                        1 => Requantizer::from_real(2f64.powi(-(rng.int(4, 12) as i32))),
                        _ => Requantizer::from_real(2f64.powf(-14.0 + 10.0 * rng.unit())),
                    })
                    .collect();
                let (zx, zy) = match cases % 3 {
                    0 => (-128, 127),
                    1 => (127, -128),
                    _ => (rng.int(-128, 127) as i32, rng.int(-128, 127) as i32),
                };
                let (qmin, qmax) = if cases % 5 == 0 {
                    (-100, 90)
                } else {
                    (-128, 127)
                };
                let conv = PackedQs8Conv2d::new(sh, &w, Some(&bias), zx, rq, zy, qmin, qmax);
                let Path::Depthwise {
                    weight,
                    bias,
                    prepared,
                    kernel,
                } = &conv.path
                else {
                    panic!("not depthwise")
                };
                let n = c * mult * out_h * out_w;
                let (mut simd, mut scalar) = (vec![0x11i8; n], vec![0x22i8; n]);
                let mut scratch = Vec::new();
                assert!(dw_simd::run(
                    &sh,
                    zx as i8,
                    weight,
                    bias,
                    &x,
                    &mut scratch,
                    dw_simd::Output::Requantized {
                        prepared,
                        o: dw_simd::OutputLanes::new(&conv.params),
                        output: &mut simd,
                    },
                ));
                conv.run_depthwise(weight, bias, *kernel, &x, &mut scalar, &mut scratch);
                assert_eq!(
                    simd, scalar,
                    "seed {seed:#x} {k}x{k} s{st} {sh:?} zx={zx} zy={zy}"
                );
                // The accumulators, every row's tail included.
                let (mut simd, mut scalar) = (vec![0x1111i32; n], vec![0x2222i32; n]);
                assert!(dw_simd::run(
                    &sh,
                    zx as i8,
                    weight,
                    bias,
                    &x,
                    &mut scratch,
                    dw_simd::Output::Sums(&mut simd),
                ));
                conv.run_depthwise_sums(weight, bias, &x, &mut scalar, &mut scratch);
                assert_eq!(simd, scalar, "seed {seed:#x} {k}x{k} s{st} {sh:?} zx={zx}: accumulators");
                cases += 1;
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
