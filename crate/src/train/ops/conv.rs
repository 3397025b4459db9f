//! Conv and ConvTranspose: forward with the packed FP32 kernels, backward by im2col and the
//! same GEMM, or direct loops for depthwise.
//!
//! With `z = conv(x, W) + b` and `y = act(z)`, per image and group `g`
//! (`X_g` the group's input, `Col(X_g)` its im2col matrix `[icg·kh·kw][out_h·out_w]`):
//! - `dz = dy · act'(z)` (read from `y` for the clamps, else from `z`, which then is kept);
//! - `db[c] = Σ_pixels dz[c]`;
//! - `dW_g = dz_g · Col(X_g)ᵀ` and `dX_g = col2im(W_gᵀ · dz_g)`.
//!
//! Paths, chosen as the forward kernel chooses:
//! - depthwise (`group == in_c`, any channel multiplier): polyphase planes of the zero-padded
//!   input, in which at any stride each tap is one contiguous run over the whole plane; one
//!   pass of [`f32_dwconv2d_grad`] serves a group of taps, both gradients (see
//!   `depthwise_backward`);
//! - pointwise (1x1, stride 1, no padding): no im2col; `dX_g = W_gᵀ · dz_g` written into the
//!   gradient in column blocks (as the forward kernel blocks its packed B), `dW_g = dz_g · X_gᵀ`
//!   on planes of 2048 pixels and more as dot products of their rows with SIMD128
//!   ([`f32_gemm_nt_acc`]: no packing), through the packed GEMM in blocks of 256 pixels
//!   otherwise;
//! - everything else through im2col in column blocks, so scratch stays bounded; col2im adds
//!   each tap's columns row by row as strided runs, bounds found once per run; with SIMD128
//!   `dW_g` reads the im2col matrix written in rows by the same runs, through the dot tile.
//!
//! `W_gᵀ` is packed in [`prepare`](super::TrainOp::prepare)
//! when the weights changed; a step that changed only the bias (scales mode) replaces the bias
//! and keeps the packing. Masks are selected on bits ([`super::keep_if`]): a branch per element
//! mispredicts on half of a ReLU's inputs. The activation mask and the bias gradient run plane
//! by plane, the sum reading what the mask just wrote while it is in cache.
//!
//! Measured on EfficientNet-Lite0 (native, one core): each conv's backward costs 1.9-2.2 times
//! its forward, the sum of `dX` and `dW` (`train::ops::conv::bench`).
//!
//! ConvTranspose is the adjoint of a Conv with the same weights: its `dX` is that Conv applied
//! to `dz` (the packed FP32 conv), its `dW` the Conv's weight gradient with the roles of input
//! and output swapped.

use std::cell::OnceCell;

use super::{activation_backward, buf, derivable_from_output, sum, zeroed, Bwd, Fwd, Scratch, TrainOp};
use crate::ir::{Activation, Graph, Node, Op};
use crate::kernels::conv::{Conv2dShape, PackedConv2d, PackedConvTranspose2d};
use crate::kernels::dwconv_grad::{f32_dwconv2d_grad, DwGradArgs, PhaseTap};
use crate::kernels::gemm::{gemm, GemmBias, PackedA};
use crate::kernels::gemm_nt::f32_gemm_nt_acc;
use crate::engine::conv_shape;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Depthwise,
    Pointwise,
    Im2col,
}

/// The path of `PackedConv2d` for the same shape.
fn kind(s: &Conv2dShape) -> Kind {
    if s.group == s.in_c {
        Kind::Depthwise
    } else if (s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_top, s.pad_left) == (1, 1, 1, 1, 0, 0) && (s.out_h, s.out_w) == (s.in_h, s.in_w) {
        Kind::Pointwise
    } else {
        Kind::Im2col
    }
}

fn constant_weight(g: &Graph, node: &Node) -> Result<()> {
    if g.values[node.inputs[1]].is_const() {
        Ok(())
    } else {
        Err(Error::node(&node.name, node.op.name(), "training needs constant weights"))
    }
}

/// Packs `W_gᵀ` (`[icg·kh·kw][ocg]`) of each group of a Conv weight `[out_c][icg][kh][kw]`.
fn pack_transposed_groups(s: &Conv2dShape, w: &[f32], out: &mut Vec<PackedA>, t: &mut Vec<f32>) {
    let (ocg, k) = (s.out_c / s.group, s.in_c / s.group * s.kernel_h * s.kernel_w);
    out.resize_with(s.group, PackedA::default);
    for (g, a) in out.iter_mut().enumerate() {
        let wt = buf(t, k * ocg);
        super::transpose2d(&w[g * ocg * k..], ocg, k, wt);
        a.repack_from(wt, k, ocg, ocg);
    }
}

/// `db[c] += Σ dz[c, :]` over the `channels` planes of one image.
fn bias_backward(dz: &[f32], channels: usize, db: &mut [f32]) {
    let plane = dz.len() / channels.max(1);
    for (d, p) in db.iter_mut().zip(dz.chunks_exact(plane.max(1))) {
        *d += sum(p);
    }
}

/// Columns of `dz` per block of the pointwise `dX` GEMM: packed B of about 128 KiB, as the
/// forward kernel blocks it, so the block is still in cache when the GEMM reads it.
fn pointwise_block(ocg: usize, hw: usize) -> usize {
    ((32 * 1024) / ocg.max(1) / 8 * 8).max(8).min(hw.max(1))
}

/// `dX_g = W_gᵀ · dz_g` of a pointwise conv for one image and group, in column blocks, written
/// straight into `dx_g` (the node's own buffer, each element written once).
fn pointwise_dx(wt: &PackedA, dz_g: &[f32], ocg: usize, hw: usize, dx_g: &mut [f32], sc: &mut Scratch) {
    let block = pointwise_block(ocg, hw);
    for n0 in (0..hw).step_by(block) {
        let nc = block.min(hw - n0);
        sc.b.repack_from(&dz_g[n0..], ocg, nc, hw);
        gemm(wt, &sc.b, &mut dx_g[n0..], hw, GemmBias::None, Activation::Identity);
    }
}

/// Pixels from which the SIMD128 build computes a pointwise weight gradient as dot products of
/// rows ([`pointwise_dw_rows`]) rather than through the packed GEMM ([`pointwise_dw_packed`]).
/// Measured per EfficientNet-Lite0 layer in Chromium (`node bench/run.mjs int8-kernels`, the
/// "QAT pointwise" rows): the rows win at 56x56 and 112x112 (up to 1.3x, few channels, long
/// rows), the packed GEMM from 28x28 down (up to 1.8x at 7x7, where a row is 49 products and
/// the dot tiles' final sums dominate).
const DW_ROWS_MIN_PIXELS: usize = 2048;

/// `dW_g += dz_g · X_gᵀ` of a pointwise conv (`dz_g` is `ocg x hw`, `x_g` is `icg x hw`), whose
/// reduction runs over the pixels: by rows with SIMD128 on large planes, through the packed
/// GEMM otherwise (see [`DW_ROWS_MIN_PIXELS`]; the portable build's scalar dot tile does not
/// vectorise as well and measured 1.3-3x slower, `pointwise_pieces` below).
fn pointwise_dw(dz_g: &[f32], x_g: &[f32], ocg: usize, icg: usize, hw: usize, dw_g: &mut [f32], sc: &mut Scratch) {
    if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) && hw >= DW_ROWS_MIN_PIXELS {
        pointwise_dw_rows(dz_g, x_g, ocg, icg, hw, dw_g, sc);
    } else {
        pointwise_dw_packed(dz_g, x_g, ocg, icg, hw, dw_g, sc);
    }
}

/// [`pointwise_dw`] as dot products of the rows as they lie ([`f32_gemm_nt_acc`]: no packing).
/// The operand with fewer rows is the dot tiles' `B`, whose block of the reduction stays in L1
/// while the other streams: when `icg > ocg` this computes `dW_gᵀ = X_g · dz_gᵀ` and adds its
/// transpose.
fn pointwise_dw_rows(dz_g: &[f32], x_g: &[f32], ocg: usize, icg: usize, hw: usize, dw_g: &mut [f32], sc: &mut Scratch) {
    if icg > ocg {
        let t = zeroed(&mut sc.t4, icg * ocg);
        f32_gemm_nt_acc(x_g, hw, dz_g, hw, icg, ocg, hw, t, ocg);
        add_transposed(dw_g, t, ocg, icg);
    } else {
        f32_gemm_nt_acc(dz_g, hw, x_g, hw, ocg, icg, hw, dw_g, icg);
    }
}

/// [`pointwise_dw`] through the packed GEMM: the contraction is cut into blocks of 256 pixels so
/// that the GEMM's panels stay in L1, and the smaller of the two operands is the one transposed
/// (computing `dW_gᵀ = X_g · dz_gᵀ` when `icg > ocg`).
fn pointwise_dw_packed(dz_g: &[f32], x_g: &[f32], ocg: usize, icg: usize, hw: usize, dw_g: &mut [f32], sc: &mut Scratch) {
    const KC: usize = 256;
    if hw == 0 {
        return;
    }
    let transposed = icg > ocg;
    let (m, n) = if transposed { (icg, ocg) } else { (ocg, icg) };
    let (a_src, b_src) = if transposed { (x_g, dz_g) } else { (dz_g, x_g) };
    // The first block's product is the sum so far (the same bits as adding it to zeros);
    // later blocks add theirs. On small planes (one block) that saves two passes over a
    // product that can be larger than the block (1280 x 320 at 7x7).
    let acc = buf(&mut sc.t4, m * n);
    for c0 in (0..hw).step_by(KC) {
        let kc = KC.min(hw - c0);
        sc.a.repack_from(&a_src[c0..], m, kc, hw);
        sc.b.repack_transposed_from(&b_src[c0..], kc, n, hw);
        if c0 == 0 {
            gemm(&sc.a, &sc.b, acc, n, GemmBias::None, Activation::Identity);
        } else {
            let t = buf(&mut sc.t2, m * n);
            gemm(&sc.a, &sc.b, t, n, GemmBias::None, Activation::Identity);
            super::add_into(acc, t);
        }
    }
    if transposed {
        // acc is dW_gᵀ (icg x ocg).
        add_transposed(dw_g, acc, ocg, icg);
    } else {
        super::add_into(dw_g, acc);
    }
}

/// `dw += tᵀ` for `dw` of `rows x cols` and `t` of `cols x rows`, both row-major.
fn add_transposed(dw: &mut [f32], t: &[f32], rows: usize, cols: usize) {
    for (o, row) in dw[..rows * cols].chunks_exact_mut(cols.max(1)).enumerate() {
        for (i, d) in row.iter_mut().enumerate() {
            *d += t[i * rows + o];
        }
    }
}

/// Column blocks of the im2col paths: about a megabyte of scratch, at least 64 columns.
fn block_columns(k: usize, n: usize) -> usize {
    ((1 << 18) / k.max(1)).max(64).min(n.max(1))
}

/// `dX += col2im(W_gᵀ · dz_g)` for one image of a conv of shape `s` (any geometry), `wt` the
/// packed `W_gᵀ` per group.
fn im2col_dx(s: &Conv2dShape, wt: &[PackedA], dz: &[f32], dx: &mut [f32], sc: &mut Scratch) {
    let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
    let (n, k) = (s.out_h * s.out_w, icg * s.kernel_h * s.kernel_w);
    let in_len = icg * s.in_h * s.in_w;
    let block = block_columns(k, n);
    for (g, a) in wt.iter().enumerate() {
        let dz_g = &dz[g * ocg * n..][..ocg * n];
        let dx_g = &mut dx[g * in_len..][..in_len];
        for n0 in (0..n).step_by(block) {
            let nc = block.min(n - n0);
            sc.b.repack_from(&dz_g[n0..], ocg, nc, n);
            let cols = buf(&mut sc.t0, k * nc);
            gemm(a, &sc.b, cols, nc, GemmBias::None, Activation::Identity);
            col2im_add(s, cols, n0, nc, dx_g);
        }
    }
}

/// The strided runs linking columns `n0..n0 + nc` of an im2col matrix (`[icg·kh·kw][nc]`,
/// see `kernels::conv::im2col_panels`) with one group's input: `f(row, j, len, start)` for each
/// run of `len` columns from column `j` of `row` whose inputs are `start, start + stride_w, ...`
/// (offsets into the group's input). Per tap and output row, the columns whose input lies
/// inside the plane are one run: the bounds are found once per run, not tested per element;
/// columns outside the input are in no run.
fn im2col_runs(s: &Conv2dShape, n0: usize, nc: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let icg = s.in_c / s.group;
    let (ih, iw) = (s.in_h as isize, s.in_w);
    let (ow, sw) = (s.out_w, s.stride_w);
    let plane = s.in_h * s.in_w;
    // Output columns `ox` of tap column `kx` that land inside the input: `ix = ox·sw + off`.
    let valid = |kx: usize| -> (std::ops::Range<usize>, isize) {
        let off = (kx * s.dilation_w) as isize - s.pad_left as isize;
        let lo = if off >= 0 { 0 } else { (-off) as usize }.div_ceil(sw);
        let hi = if off >= iw as isize { 0 } else { (iw as isize - off) as usize }.div_ceil(sw).min(ow);
        (lo..hi.max(lo), off)
    };
    let mut row = 0;
    for ci in 0..icg {
        for ky in 0..s.kernel_h {
            for kx in 0..s.kernel_w {
                let (xs, off) = valid(kx);
                let mut j = 0;
                while j < nc {
                    let (oy, ox0) = ((n0 + j) / ow, (n0 + j) % ow);
                    let len = (ow - ox0).min(nc - j);
                    let iy = (oy * s.stride_h + ky * s.dilation_h) as isize - s.pad_top as isize;
                    let (a, b) = (ox0.max(xs.start), (ox0 + len).min(xs.end));
                    if iy >= 0 && iy < ih && a < b {
                        let start = (ci * plane) as isize + (iy as usize * iw) as isize + off + (a * sw) as isize;
                        f(row, j + a - ox0, b - a, start as usize);
                    }
                    j += len;
                }
                row += 1;
            }
        }
    }
}

/// Adds columns `n0..n0 + nc` of an im2col-shaped matrix (`[icg·kh·kw][nc]`) back onto the
/// input positions they were read from ([`im2col_runs`]).
fn col2im_add(s: &Conv2dShape, cols: &[f32], n0: usize, nc: usize, dx: &mut [f32]) {
    im2col_runs(s, n0, nc, |row, j, len, start| {
        let src = &cols[row * nc + j..][..len];
        for (d, &v) in dx[start..].iter_mut().step_by(s.stride_w).zip(src) {
            *d += v;
        }
    });
}

/// `dW_g += dz_g · Col(X_g)ᵀ` for one image of a conv of shape `s` (any geometry); `dw` in the
/// Conv weight layout `[out_c][icg][kh][kw]`. A reduction over the output pixels into a small
/// matrix, as the pointwise one ([`pointwise_dw`]): with SIMD128 as dot products of the rows of
/// `dz` and of the im2col matrix as they lie (EfficientNet-Lite0's and BlazeFace's stems:
/// 3.03 -> 1.66 and 2.69 -> 1.13 ms a frame in Chromium, `node bench/run.mjs qat-profile`),
/// through the packed GEMM on the im2col matrix transposed otherwise.
fn im2col_dw(s: &Conv2dShape, x: &[f32], dz: &[f32], dw: &mut [f32], sc: &mut Scratch) {
    im2col_dw_by(s, x, dz, dw, sc, cfg!(all(target_arch = "wasm32", target_feature = "simd128")));
}

/// [`im2col_dw`] by dot products of rows ([`f32_gemm_nt_acc`], accumulating straight into
/// `dw`), or through the packed GEMM.
fn im2col_dw_by(s: &Conv2dShape, x: &[f32], dz: &[f32], dw: &mut [f32], sc: &mut Scratch, rows: bool) {
    let (icg, ocg) = (s.in_c / s.group, s.out_c / s.group);
    let (n, k) = (s.out_h * s.out_w, icg * s.kernel_h * s.kernel_w);
    let in_len = icg * s.in_h * s.in_w;
    let block = block_columns(k, n);
    for g in 0..s.group {
        let dz_g = &dz[g * ocg * n..][..ocg * n];
        let x_g = &x[g * in_len..][..in_len];
        let dw_g = &mut dw[g * ocg * k..][..ocg * k];
        for n0 in (0..n).step_by(block) {
            let nc = block.min(n - n0);
            let cols = buf(&mut sc.t0, k * nc);
            if rows {
                im2col_rows(s, x_g, n0, nc, cols);
                f32_gemm_nt_acc(&dz_g[n0..], n, cols, nc, ocg, k, nc, dw_g, k);
            } else {
                im2col_transposed(s, x_g, n0, nc, cols);
                sc.a.repack_from(&dz_g[n0..], ocg, nc, n);
                sc.b.repack_from(cols, nc, k, k);
                let t = buf(&mut sc.t2, ocg * k);
                gemm(&sc.a, &sc.b, t, k, GemmBias::None, Activation::Identity);
                super::add_into(dw_g, t);
            }
        }
    }
}

/// Columns `n0..n0 + nc` of the im2col matrix of one group's input (`[icg·kh·kw][nc]`, zero
/// outside the input): what [`col2im_add`] adds back, read by the same runs.
fn im2col_rows(s: &Conv2dShape, x: &[f32], n0: usize, nc: usize, cols: &mut [f32]) {
    let k = s.in_c / s.group * s.kernel_h * s.kernel_w;
    cols[..k * nc].fill(0.0);
    im2col_runs(s, n0, nc, |row, j, len, start| {
        for (d, &v) in cols[row * nc + j..][..len].iter_mut().zip(x[start..].iter().step_by(s.stride_w)) {
            *d = v;
        }
    });
}

/// Columns `n0..n0 + nc` of the im2col matrix of one group's input, transposed: row `j` holds
/// the `icg·kh·kw` taps of output position `n0 + j` (zero outside the input).
fn im2col_transposed(s: &Conv2dShape, x: &[f32], n0: usize, nc: usize, out: &mut [f32]) {
    let icg = s.in_c / s.group;
    let k = icg * s.kernel_h * s.kernel_w;
    let (ih, iw) = (s.in_h as isize, s.in_w as isize);
    let plane = s.in_h * s.in_w;
    let (mut oy, mut ox) = (n0 / s.out_w, n0 % s.out_w);
    for row in out[..nc * k].chunks_exact_mut(k) {
        let (y0, x0) = ((oy * s.stride_h) as isize - s.pad_top as isize, (ox * s.stride_w) as isize - s.pad_left as isize);
        let mut p = 0;
        for ci in 0..icg {
            let xp = &x[ci * plane..][..plane];
            for ky in 0..s.kernel_h {
                let iy = y0 + (ky * s.dilation_h) as isize;
                for kx in 0..s.kernel_w {
                    let ix = x0 + (kx * s.dilation_w) as isize;
                    row[p] = if iy >= 0 && iy < ih && ix >= 0 && ix < iw { xp[(iy * iw + ix) as usize] } else { 0.0 };
                    p += 1;
                }
            }
        }
        ox += 1;
        if ox == s.out_w {
            ox = 0;
            oy += 1;
        }
    }
}

/// The phase planes of a depthwise backward (see [`depthwise_backward`]): `sh · sw` planes of
/// `plane` floats (`rows` rows of `pitch`, rounded up to whole vectors), the kernel's taps in
/// them, and the input pixels in phase-plane order: runs of `count` pixels from input offset
/// `src` (step `sw`) to plane offset `dst` (contiguous). Pixel (iy, ix) is padded pixel
/// (y, x) = (iy + pad_top, ix + pad_left), in phase `(y % sh) · sw + x % sw` at
/// `(y / sh, x / sw)`; pixels past the planes are never read by a tap.
struct Phases {
    pitch: usize,
    plane: usize,
    runs: Vec<(usize, usize, usize)>,
    /// Tap `(ky, kx)` reads phase `(ky·dh mod sh, kx·dw mod sw)` at the stride-1 offset
    /// `(ky·dh / sh, kx·dw / sw)`; sorted by phase.
    taps: Vec<PhaseTap>,
    /// The largest tap offset: the zeros before the output gradient.
    margin: usize,
}

impl Phases {
    fn new(s: &Conv2dShape) -> Phases {
        let (sh, sw) = (s.stride_h, s.stride_w);
        let rows = s.out_h + (s.kernel_h - 1) * s.dilation_h / sh + 1;
        let pitch = s.out_w + (s.kernel_w - 1) * s.dilation_w / sw + 1;
        let plane = (rows * pitch).next_multiple_of(4);
        let mut runs = Vec::new();
        for iy in 0..s.in_h {
            let y = iy + s.pad_top;
            if y / sh >= rows {
                continue;
            }
            for px in 0..sw {
                let ix0 = (px + sw - s.pad_left % sw) % sw;
                let j0 = (ix0 + s.pad_left) / sw;
                if ix0 >= s.in_w || j0 >= pitch {
                    continue;
                }
                let count = (s.in_w - ix0).div_ceil(sw).min(pitch - j0);
                runs.push((iy * s.in_w + ix0, ((y % sh) * sw + px) * plane + (y / sh) * pitch + j0, count));
            }
        }
        let mut taps: Vec<PhaseTap> = (0..s.kernel_h * s.kernel_w)
            .map(|index| {
                let (y, x) = (index / s.kernel_w * s.dilation_h, index % s.kernel_w * s.dilation_w);
                PhaseTap { phase: (y % sh) * sw + x % sw, offset: (y / sh) * pitch + x / sw, index }
            })
            .collect();
        taps.sort_by_key(|t| t.phase);
        let margin = taps.iter().map(|t| t.offset).max().unwrap_or(0);
        Phases { pitch, plane, runs, taps, margin }
    }
}

/// Depthwise backward for one image: `dW[co][tap] += Σ dz[co] · x_shifted` and
/// `dX[ci] += Σ_taps w · dz_shifted`.
///
/// Polyphase, so that at any stride every tap is one contiguous run over a whole plane (see
/// [`f32_dwconv2d_grad`]): the zero-padded input plane is split into `sh · sw` phase planes,
/// and the output gradient is laid out with the phase planes' row pitch (zeros in the extra
/// columns and around it, which make the extra products vanish), so a tap is a single run
/// instead of one short run per output row (rows are 7 to 112 wide). `dX` accumulates in phase
/// planes and is scattered back. Padding never moves, so the planes are zeroed once.
fn depthwise_backward(s: &Conv2dShape, p: &Phases, x: &[f32], w: &[f32], dz: &[f32], mut dx: Option<&mut [f32]>, mut dw: Option<&mut [f32]>, sc: &mut Scratch) {
    let (kk, ow) = (s.kernel_h * s.kernel_w, s.out_w);
    let (pitch, plane, margin, runs) = (p.pitch, p.plane, p.margin, &p.runs);
    let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * ow);
    let multiplier = s.out_c / s.in_c;
    let phases = s.stride_h * s.stride_w;
    let xp = zeroed(&mut sc.t0, if dw.is_some() { phases * plane } else { 0 });
    let dxp = buf(&mut sc.t1, phases * plane);
    let dzm = zeroed(&mut sc.t2, margin + plane);
    for ci in 0..s.in_c {
        if dw.is_some() {
            let xc = &x[ci * in_plane..][..in_plane];
            for &(src, dst, count) in runs {
                xp[dst..dst + count].iter_mut().zip(xc[src..].iter().step_by(s.stride_w)).for_each(|(d, &v)| *d = v);
            }
        }
        if dx.is_some() {
            dxp.fill(0.0);
        }
        for co in ci * multiplier..(ci + 1) * multiplier {
            for (oy, row) in dz[co * out_plane..][..out_plane].chunks_exact(ow).enumerate() {
                dzm[margin + oy * pitch..][..ow].copy_from_slice(row);
            }
            f32_dwconv2d_grad(DwGradArgs {
                x: xp,
                dz: dzm,
                margin,
                plane,
                taps: &p.taps,
                weight: &w[co * kk..][..kk],
                dx: dx.is_some().then_some(&mut dxp[..]),
                dw: dw.as_deref_mut().map(|d| &mut d[co * kk..][..kk]),
            });
        }
        if let Some(dx) = dx.as_deref_mut() {
            let dxc = &mut dx[ci * in_plane..][..in_plane];
            for &(src, dst, count) in runs {
                dxc[src..].iter_mut().step_by(s.stride_w).zip(&dxp[dst..dst + count]).for_each(|(d, &v)| *d += v);
            }
        }
    }
}

/// `dz = dy · act'(z)` and `db[c] += Σ dz[c, :]` for the `channels` planes of one image, plane
/// by plane, so that the sum reads what the mask just wrote while it is still in cache.
fn activation_and_bias_backward(act: Activation, z: Option<&[f32]>, y: &[f32], dy: &[f32], dz: &mut [f32], channels: usize, mut db: Option<&mut [f32]>) {
    let plane = (dz.len() / channels.max(1)).max(1);
    for (c, d) in dz.chunks_exact_mut(plane).enumerate() {
        let r = c * plane..(c + 1) * plane;
        activation_backward(act, z.map(|z| &z[r.clone()]), &y[r.clone()], &dy[r], d);
        if let Some(db) = db.as_deref_mut() {
            db[c] += sum(d);
        }
    }
}

pub struct ConvOp {
    s: Conv2dShape,
    batch: usize,
    act: Activation,
    /// The activation needs its input in the backward: the forward keeps `z` in `aux`.
    keep_z: bool,
    kind: Kind,
    need_dx: bool,
    /// The forward's packed weights, packed by the first forward after they change: in QAT
    /// the simulation gives a Conv's values (the integer plan), and its float forward runs
    /// only once, to learn that the backward needs nothing from it (`Tape::forward`).
    packed: OnceCell<PackedConv2d>,
    /// Per group `W_gᵀ`, for `dX` on the GEMM paths.
    wt: Vec<PackedA>,
    t: Vec<f32>,
    /// The depthwise path's phase planes.
    phases: Option<Phases>,
}

impl ConvOp {
    pub fn new(g: &Graph, node: &Node, needs: &[bool]) -> Result<ConvOp> {
        let Op::Conv(c) = &node.op else { unreachable!("built for Conv nodes") };
        constant_weight(g, node)?;
        let s = conv_shape(g, node, &c.window, c.group);
        Ok(ConvOp {
            s,
            batch: g.values[node.inputs[0]].shape[0],
            act: c.activation,
            keep_z: !derivable_from_output(c.activation),
            kind: kind(&s),
            need_dx: needs.first().copied().unwrap_or(false),
            packed: OnceCell::new(),
            wt: Vec::new(),
            t: Vec::new(),
            phases: (kind(&s) == Kind::Depthwise).then(|| Phases::new(&s)),
        })
    }
}

impl TrainOp for ConvOp {
    fn prepare(&mut self, consts: &[Option<&[f32]>], changed: &[bool]) {
        let w = consts[1].expect("checked: constant weights");
        if !changed[1] {
            // Only the bias changed (scales mode): the packed weights stay.
            if let Some(packed) = self.packed.get_mut() {
                packed.set_bias(consts.get(2).copied().flatten());
            }
            return;
        }
        self.packed = OnceCell::new();
        if self.need_dx && self.kind != Kind::Depthwise {
            pack_transposed_groups(&self.s, w, &mut self.wt, &mut self.t);
        }
    }

    fn overwrites_dx(&self, i: usize) -> bool {
        // The pointwise GEMM writes each element of dX once.
        i == 0 && self.kind == Kind::Pointwise
    }

    fn forward(&self, f: &mut Fwd) {
        let act = if self.keep_z { Activation::Identity } else { self.act };
        let packed = self.packed.get_or_init(|| PackedConv2d::new(self.s, f.x[1], f.x.get(2).copied(), act));
        let s = &self.s;
        let (px, py) = (s.in_c * s.in_h * s.in_w, s.out_c * s.out_h * s.out_w);
        let out: &mut [f32] = if self.keep_z { buf(f.aux, py * self.batch) } else { &mut f.y[0] };
        for n in 0..self.batch {
            packed.run(&f.x[0][n * px..][..px], &mut out[n * py..][..py], &mut f.scratch.conv);
        }
        if self.keep_z {
            self.act.apply_to(&f.aux[..py * self.batch], &mut f.y[0]);
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let s = &self.s;
        let (px, py) = (s.in_c * s.in_h * s.in_w, s.out_c * s.out_h * s.out_w);
        let mut dzbuf = std::mem::take(&mut b.scratch.t3);
        let mut db = b.dx.get_mut(2).and_then(|d| d.take());
        let dz: &[f32] = if self.act == Activation::Identity {
            if let Some(db) = db.as_deref_mut() {
                for n in 0..self.batch {
                    bias_backward(&b.dy[0][n * py..][..py], s.out_c, db);
                }
            }
            b.dy[0]
        } else {
            let d = buf(&mut dzbuf, b.dy[0].len());
            let z = self.keep_z.then_some(b.aux);
            for n in 0..self.batch {
                let r = n * py..(n + 1) * py;
                activation_and_bias_backward(self.act, z.map(|z| &z[r.clone()]), &b.y[0][r.clone()], &b.dy[0][r.clone()], &mut d[r], s.out_c, db.as_deref_mut());
            }
            d
        };
        if db.is_some() {
            b.dx[2] = db;
        }
        let (x, w) = (b.x[0], b.x[1]);
        let mut dx = b.dx[0].take();
        let mut dw = b.dx[1].take();
        let sc = &mut *b.scratch;
        for n in 0..self.batch {
            let (xn, dzn) = (&x[n * px..][..px], &dz[n * py..][..py]);
            let dxn = dx.as_deref_mut().map(|d| &mut d[n * px..][..px]);
            match self.kind {
                Kind::Depthwise => depthwise_backward(s, self.phases.as_ref().expect("depthwise"), xn, w, dzn, dxn, dw.as_deref_mut(), sc),
                Kind::Pointwise => {
                    let (icg, ocg, hw) = (s.in_c / s.group, s.out_c / s.group, s.in_h * s.in_w);
                    if let Some(dxn) = dxn {
                        for (g, a) in self.wt.iter().enumerate() {
                            pointwise_dx(a, &dzn[g * ocg * hw..][..ocg * hw], ocg, hw, &mut dxn[g * icg * hw..][..icg * hw], sc);
                        }
                    }
                    if let Some(dw) = dw.as_deref_mut() {
                        for g in 0..s.group {
                            let (dz_g, x_g) = (&dzn[g * ocg * hw..][..ocg * hw], &xn[g * icg * hw..][..icg * hw]);
                            pointwise_dw(dz_g, x_g, ocg, icg, hw, &mut dw[g * ocg * icg..][..ocg * icg], sc);
                        }
                    }
                }
                Kind::Im2col => {
                    if let Some(dxn) = dxn {
                        im2col_dx(s, &self.wt, dzn, dxn, sc);
                    }
                    if let Some(dw) = dw.as_deref_mut() {
                        im2col_dw(s, xn, dzn, dw, sc);
                    }
                }
            }
        }
        b.dx[0] = dx;
        b.dx[1] = dw;
        b.scratch.t3 = dzbuf;
    }
}

pub struct ConvTransposeOp {
    s: Conv2dShape,
    /// The Conv whose adjoint this is: input `dz` (`out_c` channels of the large plane), output
    /// `dX` (`in_c` channels of the small plane), the same weights, pads and groups.
    adj: Conv2dShape,
    batch: usize,
    act: Activation,
    keep_z: bool,
    need_dx: bool,
    packed: Option<PackedConvTranspose2d>,
    adjoint: Option<PackedConv2d>,
}

impl ConvTransposeOp {
    pub fn new(g: &Graph, node: &Node, needs: &[bool]) -> Result<ConvTransposeOp> {
        let Op::ConvTranspose(c) = &node.op else { unreachable!("built for ConvTranspose nodes") };
        constant_weight(g, node)?;
        let s = conv_shape(g, node, &c.window, c.group);
        let adj = Conv2dShape { in_c: s.out_c, in_h: s.out_h, in_w: s.out_w, out_c: s.in_c, out_h: s.in_h, out_w: s.in_w, ..s };
        Ok(ConvTransposeOp {
            s,
            adj,
            batch: g.values[node.inputs[0]].shape[0],
            act: c.activation,
            keep_z: !derivable_from_output(c.activation),
            need_dx: needs.first().copied().unwrap_or(false),
            packed: None,
            adjoint: None,
        })
    }
}

impl TrainOp for ConvTransposeOp {
    fn prepare(&mut self, consts: &[Option<&[f32]>], changed: &[bool]) {
        let w = consts[1].expect("checked: constant weights");
        let b = consts.get(2).copied().flatten();
        if let (false, Some(packed)) = (changed[1], self.packed.as_mut()) {
            packed.set_bias(b);
            return;
        }
        let act = if self.keep_z { Activation::Identity } else { self.act };
        self.packed = Some(PackedConvTranspose2d::new(self.s, w, b, act));
        if self.need_dx {
            self.adjoint = Some(PackedConv2d::new(self.adj, w, None, Activation::Identity));
        }
    }

    fn forward(&self, f: &mut Fwd) {
        let packed = self.packed.as_ref().expect("prepared before the forward");
        let s = &self.s;
        let (px, py) = (s.in_c * s.in_h * s.in_w, s.out_c * s.out_h * s.out_w);
        let out: &mut [f32] = if self.keep_z { buf(f.aux, py * self.batch) } else { &mut f.y[0] };
        for n in 0..self.batch {
            packed.run(&f.x[0][n * px..][..px], &mut out[n * py..][..py], &mut f.scratch.conv);
        }
        if self.keep_z {
            f.y[0].copy_from_slice(&f.aux[..py * self.batch]);
            self.act.apply(&mut f.y[0]);
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let s = &self.s;
        let (px, py) = (s.in_c * s.in_h * s.in_w, s.out_c * s.out_h * s.out_w);
        let mut dzbuf = std::mem::take(&mut b.scratch.t3);
        let dz: &[f32] = if self.act == Activation::Identity {
            b.dy[0]
        } else {
            let d = buf(&mut dzbuf, b.dy[0].len());
            activation_backward(self.act, self.keep_z.then_some(b.aux), b.y[0], b.dy[0], d);
            d
        };
        let x = b.x[0];
        let mut dx = b.dx[0].take();
        let mut dw = b.dx[1].take();
        if let Some(db) = b.dx(2) {
            for n in 0..self.batch {
                bias_backward(&dz[n * py..][..py], s.out_c, db);
            }
        }
        let sc = &mut *b.scratch;
        for n in 0..self.batch {
            let (xn, dzn) = (&x[n * px..][..px], &dz[n * py..][..py]);
            if let Some(d) = dx.as_deref_mut() {
                let t = zeroed(&mut sc.t2, px);
                self.adjoint.as_ref().expect("prepared").run(dzn, t, &mut sc.conv);
                super::add_into(&mut d[n * px..][..px], t);
            }
            if let Some(dw) = dw.as_deref_mut() {
                // dW[ci][co][ky][kx] = Σ x[ci][p] · dz[co][p·s + k·d - pad]: the adjoint conv's
                // weight gradient with its input (dz) and output gradient (x).
                im2col_dw(&self.adj, dzn, xn, dw, sc);
            }
        }
        b.dx[0] = dx;
        b.dx[1] = dw;
        b.scratch.t3 = dzbuf;
    }
}

/// The pieces of a pointwise convolution's training step on one `[ic][hw]` image with `oc`
/// outputs, for the browser's kernel benchmark (`bench_api::bench_pointwise_training`):
/// `"forward"` (the FP32 conv), `"dx"` (`W^T dz`) or `"dw"` (`dz X^T`, as training computes it;
/// `"dw_rows"` and `"dw_packed"` are its two paths), as a closure that runs the piece once.
/// Deterministic pseudo-random data.
#[cfg(target_arch = "wasm32")]
pub(crate) fn pointwise_training_piece(part: &str, ic: usize, oc: usize, hw: usize) -> Option<Box<dyn FnMut()>> {
    let mut rng = crate::rng::Rng::seeded((ic * 31 + oc * 7 + hw) as u64);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    let (w, x, dz) = (random(ic * oc), random(ic * hw), random(oc * hw));
    let s = Conv2dShape { in_c: ic, in_h: 1, in_w: hw, out_c: oc, out_h: 1, out_w: hw, kernel_h: 1, kernel_w: 1, stride_h: 1, stride_w: 1, dilation_h: 1, dilation_w: 1, pad_top: 0, pad_left: 0, group: 1 };
    let mut sc = Scratch::default();
    Some(match part {
        "forward" => {
            let packed = PackedConv2d::new(s, &w, None, Activation::Clip { min: 0.0, max: 6.0 });
            let mut y = vec![0f32; oc * hw];
            Box::new(move || packed.run(&x, &mut y, &mut sc.conv))
        }
        "dx" => {
            let (mut wt, mut t) = (Vec::new(), Vec::new());
            pack_transposed_groups(&s, &w, &mut wt, &mut t);
            let mut dx = vec![0f32; ic * hw];
            Box::new(move || pointwise_dx(&wt[0], &dz, oc, hw, &mut dx, &mut sc))
        }
        "dw" | "dw_rows" | "dw_packed" => {
            let f = match part {
                "dw" => pointwise_dw,
                "dw_rows" => pointwise_dw_rows,
                _ => pointwise_dw_packed,
            };
            let mut dw = vec![0f32; ic * oc];
            Box::new(move || f(&dz, &x, oc, ic, hw, &mut dw, &mut sc))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::super::gradcheck::{check_graph, Builder};
    use crate::ir::{Activation, ConvTranspose, Op, Window2d};

    #[allow(clippy::too_many_arguments)]
    fn conv_case(seed: u64, x: [usize; 4], out_c: usize, kernel: [usize; 2], stride: usize, pads: [usize; 4], dilation: usize, group: usize, bias: bool, act: Activation) {
        let mut b = Builder::new(seed);
        let xi = b.input("x", &x);
        let w = b.konst("w", &[out_c, x[1] / group, kernel[0], kernel[1]]);
        let bi = bias.then(|| b.konst("b", &[out_c]));
        let y = b.conv("conv", xi, w, bi, kernel, stride, pads, dilation, group, act);
        let (g, inputs) = b.finish(&[y]);
        check_graph(&g, &inputs, 1e-2, 3e-3, 0);
    }

    #[test]
    fn im2col_conv_with_strides_dilations_and_uneven_pads() {
        conv_case(1, [1, 3, 7, 6], 5, [3, 2], 2, [1, 0, 2, 1], 1, 1, true, Activation::Identity);
        conv_case(2, [2, 3, 6, 7], 4, [3, 3], 1, [2, 1, 0, 2], 2, 1, false, Activation::Identity);
        // The stem of EfficientNet: 3x3, stride 2, pad 1, with a bias.
        conv_case(3, [1, 3, 9, 9], 4, [3, 3], 2, [1, 1, 1, 1], 1, 1, true, Activation::Identity);
    }

    #[test]
    fn grouped_and_pointwise_convs() {
        conv_case(4, [1, 4, 5, 6], 6, [3, 3], 1, [1, 1, 1, 1], 1, 2, true, Activation::Identity);
        conv_case(5, [1, 5, 4, 3], 7, [1, 1], 1, [0; 4], 1, 1, true, Activation::Identity);
        conv_case(6, [2, 6, 3, 5], 4, [1, 1], 1, [0; 4], 1, 2, false, Activation::Identity);
        // Enough pixels for several blocks of the weight-gradient contraction (256 pixels) and
        // of the input-gradient GEMM's columns, both ways of transposing.
        conv_case(16, [1, 5, 23, 29], 70, [1, 1], 1, [0; 4], 1, 1, true, Activation::Identity);
        conv_case(17, [1, 9, 23, 29], 3, [1, 1], 1, [0; 4], 1, 1, false, Activation::Identity);
        // 1x1 with a stride goes through im2col.
        conv_case(7, [1, 3, 7, 5], 2, [1, 1], 2, [0; 4], 1, 1, true, Activation::Identity);
    }

    #[test]
    fn depthwise_convs_with_multipliers_strides_and_dilations() {
        conv_case(8, [1, 3, 9, 8], 3, [5, 5], 1, [2, 2, 2, 2], 1, 3, true, Activation::Identity);
        conv_case(9, [1, 3, 9, 8], 6, [3, 3], 2, [1, 1, 1, 1], 1, 3, true, Activation::Identity);
        conv_case(10, [2, 2, 7, 9], 2, [3, 2], 1, [0, 1, 2, 0], 2, 2, false, Activation::Identity);
        conv_case(11, [1, 4, 11, 10], 4, [5, 5], 2, [1, 2, 2, 1], 1, 4, true, Activation::Identity);
    }

    #[test]
    fn fused_activations_kept_or_read_from_the_output() {
        // Smooth activations keep their input z; HardSwish's kinks at ±3 are far from these
        // values.
        conv_case(12, [1, 3, 6, 5], 4, [3, 3], 1, [1, 1, 1, 1], 1, 1, true, Activation::Sigmoid);
        conv_case(13, [1, 4, 6, 5], 4, [3, 3], 1, [1, 1, 1, 1], 1, 4, true, Activation::HardSwish);
        conv_case(14, [1, 3, 5, 5], 4, [1, 1], 1, [0; 4], 1, 1, true, Activation::Silu);
        // A fused Relu6 reads its derivative from the output; a difference may cross a kink.
        let mut b = Builder::new(15);
        let x = b.input("x", &[1, 4, 6, 5]);
        let w = b.konst("w", &[4, 1, 3, 3]);
        let bias = b.konst("b", &[4]);
        let y = b.conv("conv", x, w, Some(bias), [3, 3], 1, [1, 1, 1, 1], 1, 4, Activation::Clip { min: 0.0, max: 0.6 });
        let (g, inputs) = b.finish(&[y]);
        check_graph(&g, &inputs, 1e-3, 5e-3, 3);
    }

    #[test]
    fn col2im_and_im2col_runs_match_the_per_element_definition() {
        // Column blocks starting and ending mid-row, strides, dilations, uneven pads, taps that
        // fall outside on either side.
        use super::{col2im_add, im2col_rows, Conv2dShape};
        use crate::rng::Rng;
        let mut rng = Rng::seeded(12);
        for (ic, (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow)) in
            [(2, (7, 9), (3, 2), (2, 1), (1, 2), (1, 0), (4, 7)), (1, (5, 6), (5, 5), (2, 2), (1, 1), (2, 2), (3, 3)), (3, (4, 4), (1, 3), (1, 3), (1, 1), (0, 4), (4, 3))]
        {
            let s = Conv2dShape { in_c: ic, in_h: ih, in_w: iw, out_c: 2, out_h: oh, out_w: ow, kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, dilation_h: dh, dilation_w: dw, pad_top: pt, pad_left: pl, group: 1 };
            let n = oh * ow;
            for (n0, nc) in [(0, n), (3, n - 5), (ow + 1, ow)] {
                let cols: Vec<f32> = (0..ic * kh * kw * nc).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
                let mut ours = vec![0.5f32; ic * ih * iw];
                let mut naive = ours.clone();
                col2im_add(&s, &cols, n0, nc, &mut ours);
                // The gather reads what the scatter adds to: its rows over a stale buffer.
                let input: Vec<f32> = (0..ic * ih * iw).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
                let mut gathered = vec![f32::NAN; cols.len()];
                let mut gathered_naive = vec![0.0f32; cols.len()];
                im2col_rows(&s, &input, n0, nc, &mut gathered);
                for ci in 0..ic {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let p = (ci * kh + ky) * kw + kx;
                            for j in 0..nc {
                                let (oy, ox) = ((n0 + j) / ow, (n0 + j) % ow);
                                let (y, x) = ((oy * sh + ky * dh) as isize - pt as isize, (ox * sw + kx * dw) as isize - pl as isize);
                                if y >= 0 && y < ih as isize && x >= 0 && x < iw as isize {
                                    naive[ci * ih * iw + y as usize * iw + x as usize] += cols[p * nc + j];
                                    gathered_naive[p * nc + j] = input[ci * ih * iw + y as usize * iw + x as usize];
                                }
                            }
                        }
                    }
                }
                assert_eq!(ours, naive, "{s:?} columns {n0}..{}", n0 + nc);
                assert_eq!(gathered, gathered_naive, "{s:?} columns {n0}..{}", n0 + nc);
            }
        }
    }

    /// The weight gradient's two formulations (rows and dot products; packed GEMM) agree on
    /// groups, strides, dilations and pads.
    #[test]
    fn im2col_weight_gradients_by_rows_equal_the_packed_gemm() {
        use super::{im2col_dw_by, Conv2dShape, Scratch};
        use crate::rng::Rng;
        let mut rng = Rng::seeded(13);
        for (ic, oc, group, (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow)) in [
            (3, 5, 1, (9, 11), (3, 3), (2, 2), (1, 1), (1, 1), (5, 6)),
            (4, 6, 2, (7, 9), (3, 2), (2, 1), (1, 2), (1, 0), (4, 7)),
            (3, 24, 1, (16, 16), (5, 5), (2, 2), (1, 1), (1, 1), (8, 8)),
        ] {
            let s = Conv2dShape { in_c: ic, in_h: ih, in_w: iw, out_c: oc, out_h: oh, out_w: ow, kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, dilation_h: dh, dilation_w: dw, pad_top: pt, pad_left: pl, group };
            let x: Vec<f32> = (0..ic * ih * iw).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let dz: Vec<f32> = (0..oc * oh * ow).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let start: Vec<f32> = (0..oc * (ic / group) * kh * kw).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let (mut rows, mut packed) = (start.clone(), start.clone());
            im2col_dw_by(&s, &x, &dz, &mut rows, &mut Scratch::default(), true);
            im2col_dw_by(&s, &x, &dz, &mut packed, &mut Scratch::default(), false);
            for (i, (a, b)) in rows.iter().zip(&packed).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{s:?} dW[{i}]: {a} against {b}");
            }
            assert_ne!(rows, start, "{s:?}: the gradient was added");
        }
    }

    /// Both paths of the pointwise weight gradient (rows, in either orientation, and the packed
    /// GEMM across its 256-pixel blocks) add `dz · Xᵀ` to what the gradient holds, against an
    /// f64 reference, on odd sizes around the tiles.
    #[test]
    fn pointwise_weight_gradients_by_rows_and_packed_add_dz_xt() {
        use super::{pointwise_dw, pointwise_dw_packed, pointwise_dw_rows, Scratch};
        use crate::rng::Rng;
        let mut rng = Rng::seeded(17);
        for (ocg, icg, hw) in [(1, 1, 1), (5, 3, 67), (3, 7, 130), (4, 4, 9), (9, 2, 257), (2, 9, 513), (6, 5, 2051), (3, 2, 0)] {
            let x: Vec<f32> = (0..icg * hw).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let dz: Vec<f32> = (0..ocg * hw).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let start: Vec<f32> = (0..ocg * icg).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let want: Vec<f64> = (0..ocg * icg)
                .map(|j| {
                    let (o, i) = (j / icg, j % icg);
                    start[j] as f64 + (0..hw).map(|p| dz[o * hw + p] as f64 * x[i * hw + p] as f64).sum::<f64>()
                })
                .collect();
            type Path = fn(&[f32], &[f32], usize, usize, usize, &mut [f32], &mut Scratch);
            let paths: [(&str, Path); 3] = [("rows", pointwise_dw_rows), ("packed", pointwise_dw_packed), ("chosen", pointwise_dw)];
            for (name, f) in paths {
                let mut dw = start.clone();
                f(&dz, &x, ocg, icg, hw, &mut dw, &mut Scratch::default());
                for (j, (got, want)) in dw.iter().zip(&want).enumerate() {
                    assert!((*got as f64 - want).abs() <= 1e-5 * (hw as f64).sqrt() * (1.0 + want.abs()), "{name} {ocg}x{icg}x{hw} dW[{j}]: {got} against {want}");
                }
            }
        }
    }

    fn conv_transpose_case(seed: u64, x: [usize; 4], out_c: usize, kernel: [usize; 2], stride: usize, pads: [usize; 4], dilation: usize, output_padding: usize, group: usize) {
        let mut b = Builder::new(seed);
        let xi = b.input("x", &x);
        let w = b.konst("w", &[x[1], out_c / group, kernel[0], kernel[1]]);
        let bias = b.konst("b", &[out_c]);
        let window = Window2d { kernel, strides: [stride, stride], dilations: [dilation, dilation], pads };
        let op = Op::ConvTranspose(ConvTranspose { window, output_padding: [output_padding; 2], group, activation: Activation::Tanh });
        let y = b.one("deconv", op, &[xi, w, bias]);
        let (g, inputs) = b.finish(&[y]);
        check_graph(&g, &inputs, 1e-2, 3e-3, 0);
    }

    #[test]
    fn conv_transpose_is_the_adjoint_conv() {
        conv_transpose_case(20, [1, 3, 4, 5], 4, [3, 3], 2, [1, 1, 0, 1], 1, 1, 1);
        conv_transpose_case(21, [2, 4, 3, 3], 6, [2, 3], 1, [0, 0, 0, 0], 2, 0, 2);
        conv_transpose_case(22, [1, 2, 5, 4], 2, [4, 4], 2, [1, 1, 1, 1], 1, 0, 2);
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::rng::Rng;
    use std::time::Instant;

    fn min_time(mut f: impl FnMut()) -> f64 {
        (0..7)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
            * 1e3
    }

    /// Forward kernel against the pieces of the pointwise backward, on EfficientNet's shapes
    /// (`cargo test --release --lib pointwise_pieces -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn pointwise_pieces() {
        let mut rng = Rng::seeded(1);
        for (ic, oc, hw) in [(16usize, 96usize, 112usize), (96, 24, 56), (144, 24, 56), (240, 80, 14), (672, 112, 14), (1152, 320, 7)] {
            let s = Conv2dShape { in_c: ic, in_h: hw, in_w: hw, out_c: oc, out_h: hw, out_w: hw, kernel_h: 1, kernel_w: 1, stride_h: 1, stride_w: 1, dilation_h: 1, dilation_w: 1, pad_top: 0, pad_left: 0, group: 1 };
            let w: Vec<f32> = (0..ic * oc).map(|_| rng.gaussian() as f32).collect();
            let x: Vec<f32> = (0..ic * hw * hw).map(|_| rng.gaussian() as f32).collect();
            let dz: Vec<f32> = (0..oc * hw * hw).map(|_| rng.gaussian() as f32).collect();
            let packed = PackedConv2d::new(s, &w, None, Activation::Identity);
            let mut sc = Scratch::default();
            let mut y = vec![0f32; oc * hw * hw];
            let fwd = min_time(|| packed.run(&x, &mut y, &mut sc.conv));
            let mut wt = Vec::new();
            let mut t = Vec::new();
            pack_transposed_groups(&s, &w, &mut wt, &mut t);
            let mut dx = vec![0f32; ic * hw * hw];
            let tdx = min_time(|| pointwise_dx(&wt[0], &dz, oc, hw * hw, &mut dx, &mut sc));
            let mut dw = vec![0f32; ic * oc];
            let tdw = min_time(|| pointwise_dw_packed(&dz, &x, oc, ic, hw * hw, &mut dw, &mut sc));
            let tnt = min_time(|| crate::kernels::gemm_nt::f32_gemm_nt_acc(&dz, hw * hw, &x, hw * hw, oc, ic, hw * hw, &mut dw, ic));
            let mut m = vec![0f32; oc * hw * hw];
            let tmask = min_time(|| super::super::activation_backward(Activation::Clip { min: 0.0, max: 6.0 }, None, &y, &dz, &mut m));
            let mut db = vec![0f32; oc];
            let tbias = min_time(|| bias_backward(&dz, oc, &mut db));
            let mut z = vec![0f32; ic * hw * hw];
            let tzero = min_time(|| z.fill(0.0));
            eprintln!("{ic:>5}->{oc:<5} {hw:>3}x{hw:<3} forward {fwd:.3} ms  dX {tdx:.3}  dW {tdw:.3} (dot tile {tnt:.3})  relu6 mask {tmask:.3}  bias {tbias:.3}  zero dX {tzero:.3}");
        }
    }
}
