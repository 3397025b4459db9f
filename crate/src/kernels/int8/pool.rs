//! Int8 pooling over NCHW planes: max (same quantization in and out), average and global
//! average (with rescaling to the output quantization).
//!
//! # Contract
//! - The geometry is the f32 [`Pool2dShape`]: `channels` planes of `in_h * in_w` in,
//!   `channels` planes of `out_h * out_w` out; fold the batch into `channels`. Taps outside the
//!   input (padding, ONNX `ceil_mode` overhang) are skipped.
//! - Max pooling returns the largest tap, or -128 for a window without input taps. Max commutes
//!   with a monotonic quantization, so input and output share scale and zero point.
//! - Average pooling sums `x - zx` over the input taps in i32 and requantizes by
//!   `sx / (sy · count)`, one `Requantizer` per distinct count: `count` is the number of input
//!   taps (`count_include_pad = false`) or of taps inside the padded input `[-pad_top, in_h +
//!   pad_bottom) x [-pad_left, in_w + pad_right)` (`true`, the ONNX definition; a padded tap is
//!   a real 0, so it adds nothing to the sum). An empty count gives the real value 0, i.e. `zy`.
//! - Global average pooling is the same over whole planes: `sx / (sy · spatial)`.
//! - Integer sums and maxima do not depend on the order of evaluation; the loops are plain
//!   Rust, which LLVM vectorises for simd128 where the access pattern allows, except the
//!   stride-2 horizontal max of max pooling, which takes even bytes with a simd128 shuffle.
//!
//! # Tests
//! Against window loops in i64 with the same requantizers, on shapes with pads, strides,
//! dilations and ceil-mode windows, both `count_include_pad` settings and extreme zero points.

use std::ops::Range;

use super::super::pool::Pool2dShape;
use super::requant::{requantize, OutputParams, Requantization, Requantizer};

fn check_buffers(s: &Pool2dShape, input: &[i8], output: &[i8]) {
    assert_eq!(
        input.len(),
        s.channels * s.in_h * s.in_w,
        "qs8 pool input does not match its shape"
    );
    assert_eq!(
        output.len(),
        s.channels * s.out_h * s.out_w,
        "qs8 pool output does not match its shape"
    );
    assert!(
        s.stride_h > 0 && s.stride_w > 0 && s.dilation_h > 0 && s.dilation_w > 0,
        "pooling stride and dilation must be positive"
    );
}

/// The outputs `o < out_len` whose tap at `o * stride + offset` lies in `[0, len)`.
fn valid_outputs(out_len: usize, len: usize, stride: usize, offset: isize) -> Range<usize> {
    // Smallest o with o * stride + offset >= bound.
    let first_at = |bound: isize| {
        ((bound - offset).max(0) as usize)
            .div_ceil(stride)
            .min(out_len)
    };
    let lo = first_at(0);
    lo..first_at(len as isize).max(lo)
}

/// Max pooling with the same scale and zero point in and out.
///
/// Separable, as max is: per output row, the maximum over the kernel's rows is taken column by
/// column into a row buffer (contiguous, vectorised), then each kernel column updates the
/// output row from that buffer at the pooling stride ([`max_at_stride`]). Both passes skip
/// the taps outside the input, so a window without input taps stays at -128.
pub fn qs8_max_pool2d(s: &Pool2dShape, input: &[i8], output: &mut [i8]) {
    check_buffers(s, input, output);
    output.fill(i8::MIN);
    if output.is_empty() || input.is_empty() {
        return;
    }
    let mut rows_max = vec![i8::MIN; s.in_w];
    for (plane, out) in input
        .chunks_exact(s.in_h * s.in_w)
        .zip(output.chunks_exact_mut(s.out_h * s.out_w))
    {
        for (oy, out_row) in out.chunks_exact_mut(s.out_w).enumerate() {
            rows_max.fill(i8::MIN);
            let mut any_row = false;
            for ky in 0..s.kernel_h {
                let iy = (oy * s.stride_h + ky * s.dilation_h) as isize - s.pad_top as isize;
                if !(0..s.in_h as isize).contains(&iy) {
                    continue;
                }
                any_row = true;
                let in_row = &plane[iy as usize * s.in_w..][..s.in_w];
                for (m, &x) in rows_max.iter_mut().zip(in_row) {
                    *m = (*m).max(x);
                }
            }
            if !any_row {
                continue;
            }
            for kx in 0..s.kernel_w {
                let offset_x = (kx * s.dilation_w) as isize - s.pad_left as isize;
                let xs = valid_outputs(s.out_w, s.in_w, s.stride_w, offset_x);
                if xs.is_empty() {
                    continue;
                }
                let first = ((xs.start * s.stride_w) as isize + offset_x) as usize;
                max_at_stride(&mut out_row[xs], &rows_max[first..], s.stride_w);
            }
        }
    }
}

/// `out[o] = max(out[o], src[o * stride])` for every `o`; `src` holds at least
/// `(out.len() - 1) * stride + 1` values. Stride 1 is a contiguous max; stride 2 (most
/// downsampling pools) takes the even bytes of 32 with one shuffle on simd128.
fn max_at_stride(out: &mut [i8], src: &[i8], stride: usize) {
    if out.is_empty() {
        return;
    }
    assert!(src.len() > (out.len() - 1) * stride, "max_at_stride: source too short");
    if stride == 1 {
        for (o, &x) in out.iter_mut().zip(src) {
            *o = (*o).max(x);
        }
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = if stride == 2 { max_at_stride_2_simd128(out, src) } else { 0 };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (o, &x) in out[done..].iter_mut().zip(src[done * stride..].iter().step_by(stride)) {
        *o = (*o).max(x);
    }
}

/// [`max_at_stride`] at stride 2 for whole blocks of 16 outputs (each reading 32 bytes of
/// `src`, their even bytes taken with one shuffle); returns the outputs done.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn max_at_stride_2_simd128(out: &mut [i8], src: &[i8]) -> usize {
    use core::arch::wasm32::*;
    let blocks = (out.len() / 16).min(src.len() / 32);
    // SAFETY: block b reads 32 bytes of `src` at 32 b and 16 bytes of `out` at 16 b, and
    // writes the latter: in bounds by the choice of `blocks`.
    unsafe {
        for b in 0..blocks {
            let sp = src.as_ptr().add(32 * b);
            let lo = v128_load(sp as *const v128);
            let hi = v128_load(sp.add(16) as *const v128);
            let even = i8x16_shuffle::<0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30>(lo, hi);
            let op = out.as_mut_ptr().add(16 * b) as *mut v128;
            v128_store(op, i8x16_max(v128_load(op), even));
        }
    }
    16 * blocks
}

/// Average pooling with rescaling, its per-position requantizers computed once.
#[derive(Clone, Debug)]
pub struct Qs8AvgPool2d {
    shape: Pool2dShape,
    input_zero_point: i32,
    /// Per output position `oy * out_w + ox`, an index into `requant`.
    position_requant: Vec<u16>,
    /// `sx / (sy · count)` for each distinct count (zero for an empty count).
    requant: Vec<Requantizer>,
    params: OutputParams,
}

impl Qs8AvgPool2d {
    /// Prepares ONNX AveragePool on `shape` from `(sx, zx)` to `(sy, zy)` with the output
    /// clamped to `[qmin, qmax]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shape: Pool2dShape,
        count_include_pad: bool,
        input_scale: f32,
        input_zero_point: i32,
        output_scale: f32,
        output_zero_point: i32,
        qmin: i8,
        qmax: i8,
        convention: Requantization,
    ) -> Qs8AvgPool2d {
        let s = &shape;
        assert!(
            (-128..=127).contains(&input_zero_point),
            "input zero point {input_zero_point} outside int8"
        );
        assert!(
            input_scale > 0.0 && output_scale > 0.0,
            "qs8 pool scales must be positive"
        );
        // Taps per output position along one axis.
        let counts =
            |out_len: usize, len: usize, k: usize, st: usize, dil: usize, pb: usize, pe: usize| {
                (0..out_len)
                    .map(|o| {
                        (0..k)
                            .filter(|&t| {
                                let at = (o * st + t * dil) as isize - pb as isize;
                                if count_include_pad {
                                    at < (len + pe) as isize
                                } else {
                                    (0..len as isize).contains(&at)
                                }
                            })
                            .count()
                    })
                    .collect::<Vec<_>>()
            };
        let ch = counts(
            s.out_h,
            s.in_h,
            s.kernel_h,
            s.stride_h,
            s.dilation_h,
            s.pad_top,
            s.pad_bottom,
        );
        let cw = counts(
            s.out_w,
            s.in_w,
            s.kernel_w,
            s.stride_w,
            s.dilation_w,
            s.pad_left,
            s.pad_right,
        );
        let mut distinct: Vec<usize> = Vec::new();
        let mut position_requant = Vec::with_capacity(s.out_h * s.out_w);
        for &h in &ch {
            for &w in &cw {
                let count = h * w;
                let index = distinct
                    .iter()
                    .position(|&c| c == count)
                    .unwrap_or_else(|| {
                        distinct.push(count);
                        distinct.len() - 1
                    });
                position_requant.push(index as u16);
            }
        }
        let requant = distinct
            .iter()
            .map(|&count| match count {
                0 => Requantizer::default(),
                _ => mean_requantizer(input_scale, output_scale, count, convention),
            })
            .collect();
        Qs8AvgPool2d {
            shape,
            input_zero_point,
            position_requant,
            requant,
            params: OutputParams::new(output_zero_point, qmin, qmax),
        }
    }

    pub fn run(&self, input: &[i8], output: &mut [i8]) {
        let s = &self.shape;
        check_buffers(s, input, output);
        if input.is_empty() {
            // No input taps anywhere: every sum is 0, the real value 0.
            let zero = requantize(0, &Requantizer::default(), &self.params);
            return output.fill(zero);
        }
        let zx = self.input_zero_point;
        let rows: Vec<Range<usize>> = (0..s.out_h).map(|oy| self.taps(oy, 0)).collect();
        let cols: Vec<Range<usize>> = (0..s.out_w).map(|ox| self.taps(ox, 1)).collect();
        let in_plane = s.in_h * s.in_w;
        for (plane, out) in input
            .chunks_exact(in_plane)
            .zip(output.chunks_exact_mut(s.out_h * s.out_w))
        {
            for (oy, ky) in rows.iter().enumerate() {
                for (ox, kx) in cols.iter().enumerate() {
                    let mut sum = 0i32;
                    for ty in ky.clone() {
                        let iy = self.input_at(oy, ty, 0);
                        for tx in kx.clone() {
                            sum += plane[iy * s.in_w + self.input_at(ox, tx, 1)] as i32 - zx;
                        }
                    }
                    let p = oy * s.out_w + ox;
                    let rq = &self.requant[self.position_requant[p] as usize];
                    out[p] = requantize(sum, rq, &self.params);
                }
            }
        }
    }

    /// The kernel taps of output `o` along `axis` (0 rows, 1 columns) that land in the input.
    fn taps(&self, o: usize, axis: usize) -> Range<usize> {
        let s = &self.shape;
        let (k, st, dil, pad, len) = match axis {
            0 => (s.kernel_h, s.stride_h, s.dilation_h, s.pad_top, s.in_h),
            _ => (s.kernel_w, s.stride_w, s.dilation_w, s.pad_left, s.in_w),
        };
        let at = |t: usize| (o * st + t * dil) as isize - pad as isize;
        let lo = (0..k).find(|&t| at(t) >= 0).unwrap_or(k);
        let hi = (lo..k).find(|&t| at(t) >= len as isize).unwrap_or(k);
        lo..hi
    }

    /// The input index of tap `t` of output `o` along `axis`, inside the input.
    fn input_at(&self, o: usize, t: usize, axis: usize) -> usize {
        let s = &self.shape;
        match axis {
            0 => o * s.stride_h + t * s.dilation_h - s.pad_top,
            _ => o * s.stride_w + t * s.dilation_w - s.pad_left,
        }
    }
}

/// The requantizer of a mean of `count` inputs: `sx / (sy · count)`, in f32 in that order for
/// the f32 convention, as onnxruntime's QLinearGlobalAveragePool computes its scale.
fn mean_requantizer(sx: f32, sy: f32, count: usize, convention: Requantization) -> Requantizer {
    convention.requantizer(sx as f64 / (sy as f64 * count as f64), sx / (sy * count as f32))
}

/// The mean of each of `channels` planes of `spatial` elements, from `(sx, zx)` to `(sy, zy)`:
/// `clamp(zy + rq(Σ (x - zx)), qmin, qmax)` with `rq = sx / (sy · spatial)`.
#[allow(clippy::too_many_arguments)]
pub fn qs8_global_avg_pool(
    channels: usize,
    spatial: usize,
    input: &[i8],
    input_scale: f32,
    input_zero_point: i32,
    output_scale: f32,
    output_zero_point: i32,
    qmin: i8,
    qmax: i8,
    convention: Requantization,
    output: &mut [i8],
) {
    assert_eq!(
        input.len(),
        channels * spatial,
        "qs8 pool input does not match its shape"
    );
    assert_eq!(
        output.len(),
        channels,
        "qs8 pool output does not match its shape"
    );
    assert!(
        (-128..=127).contains(&input_zero_point),
        "input zero point {input_zero_point} outside int8"
    );
    assert!(
        spatial < 1 << 23,
        "qs8 global pool: {spatial} elements may overflow the i32 sum"
    );
    let params = OutputParams::new(output_zero_point, qmin, qmax);
    if spatial == 0 {
        return output.fill(requantize(0, &Requantizer::default(), &params));
    }
    let rq = mean_requantizer(input_scale, output_scale, spatial, convention);
    for (o, plane) in output.iter_mut().zip(input.chunks_exact(spatial)) {
        let sum: i32 = plane.iter().map(|&x| x as i32).sum();
        *o = requantize(sum - spatial as i32 * input_zero_point, &rq, &params);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::test_util::{reference_output, Rng};
    use super::*;

    /// (name, shape) with pads, strides, dilations and a ceil-mode overhang.
    fn shapes() -> Vec<(&'static str, Pool2dShape)> {
        let shape = |c,
                     (ih, iw),
                     (oh, ow),
                     k: (usize, usize),
                     st: (usize, usize),
                     d: (usize, usize),
                     p: [usize; 4]| {
            Pool2dShape {
                channels: c,
                in_h: ih,
                in_w: iw,
                out_h: oh,
                out_w: ow,
                kernel_h: k.0,
                kernel_w: k.1,
                stride_h: st.0,
                stride_w: st.1,
                dilation_h: d.0,
                dilation_w: d.1,
                pad_top: p[0],
                pad_left: p[1],
                pad_bottom: p[2],
                pad_right: p[3],
            }
        };
        vec![
            (
                "2x2 s2",
                shape(3, (8, 10), (4, 5), (2, 2), (2, 2), (1, 1), [0; 4]),
            ),
            (
                "3x3 s1 pad 1",
                shape(2, (7, 9), (7, 9), (3, 3), (1, 1), (1, 1), [1; 4]),
            ),
            (
                "3x3 s2 pad 1",
                shape(2, (9, 35), (5, 18), (3, 3), (2, 2), (1, 1), [1; 4]),
            ),
            // ceil_mode: the last window runs past the bottom/right padding.
            (
                "3x3 s2 ceil",
                shape(2, (6, 6), (3, 3), (3, 3), (2, 2), (1, 1), [0; 4]),
            ),
            (
                "2x3 dilated asym",
                shape(1, (9, 11), (4, 4), (2, 3), (2, 3), (2, 1), [1, 0, 0, 2]),
            ),
            (
                "5x5 s1 pad 2",
                shape(2, (5, 40), (5, 40), (5, 5), (1, 1), (1, 1), [2; 4]),
            ),
            // Rows wide enough for the stride-2 blocks of 16 outputs, with tails and a left
            // pad that starts a kernel column's source at an odd byte.
            (
                "2x2 s2 wide",
                shape(2, (6, 70), (3, 35), (2, 2), (2, 2), (1, 1), [0; 4]),
            ),
            (
                "3x3 s2 pad 1 wide",
                shape(2, (5, 67), (3, 34), (3, 3), (2, 2), (1, 1), [1; 4]),
            ),
            (
                "2x2 s2 exact 32",
                shape(1, (2, 64), (1, 32), (2, 2), (2, 2), (1, 1), [0; 4]),
            ),
        ]
    }

    /// The in-input taps of each output, for the reference loops.
    fn window(s: &Pool2dShape, plane: &[i8], oy: usize, ox: usize) -> (Vec<i8>, usize) {
        let (mut taps, mut padded) = (Vec::new(), 0);
        for ky in 0..s.kernel_h {
            for kx in 0..s.kernel_w {
                let iy = (oy * s.stride_h + ky * s.dilation_h) as isize - s.pad_top as isize;
                let ix = (ox * s.stride_w + kx * s.dilation_w) as isize - s.pad_left as isize;
                if iy < (s.in_h + s.pad_bottom) as isize && ix < (s.in_w + s.pad_right) as isize {
                    padded += 1;
                }
                if (0..s.in_h as isize).contains(&iy) && (0..s.in_w as isize).contains(&ix) {
                    taps.push(plane[iy as usize * s.in_w + ix as usize]);
                }
            }
        }
        (taps, padded)
    }

    #[test]
    fn max_and_average_match_window_loops() {
        let seed = 0x9001;
        let mut rng = Rng(seed);
        for (name, s) in shapes() {
            let x = rng.i8s(s.channels * s.in_h * s.in_w, -128, 127);
            let mut out = vec![0i8; s.channels * s.out_h * s.out_w];
            qs8_max_pool2d(&s, &x, &mut out);
            for (i, &got) in out.iter().enumerate() {
                let (c, p) = (i / (s.out_h * s.out_w), i % (s.out_h * s.out_w));
                let plane = &x[c * s.in_h * s.in_w..][..s.in_h * s.in_w];
                let (taps, _) = window(&s, plane, p / s.out_w, p % s.out_w);
                let want = taps.iter().copied().max().unwrap_or(i8::MIN);
                assert_eq!(got, want, "seed {seed:#x} max {name} [{i}]");
            }
            for include_pad in [false, true] {
                for (zx, zy, sx, sy, convention) in [
                    (-128, 127, 0.02, 0.02, Requantization::Fp32),
                    (127, -128, 0.05, 0.02, Requantization::FixedPoint),
                    (5, -3, 0.1, 0.07, Requantization::Fp32),
                    (5, -3, 0.1, 0.07, Requantization::FixedPoint),
                ] {
                    let pool = Qs8AvgPool2d::new(s, include_pad, sx, zx, sy, zy, -128, 120, convention);
                    pool.run(&x, &mut out);
                    for (i, &got) in out.iter().enumerate() {
                        let (c, p) = (i / (s.out_h * s.out_w), i % (s.out_h * s.out_w));
                        let plane = &x[c * s.in_h * s.in_w..][..s.in_h * s.in_w];
                        let (taps, padded) = window(&s, plane, p / s.out_w, p % s.out_w);
                        let count = if include_pad { padded } else { taps.len() };
                        let sum: i64 = taps.iter().map(|&t| t as i64 - zx as i64).sum();
                        let rq = match count {
                            0 => Requantizer::default(),
                            _ => mean_requantizer(sx, sy, count, convention),
                        };
                        let want = reference_output(sum, &rq, zy, -128, 120);
                        let what = format!(
                            "seed {seed:#x} avg {name} include_pad={include_pad} zx={zx} zy={zy} {convention:?}"
                        );
                        assert_eq!(got, want, "{what} [{i}] sum {sum} count {count}");
                        // And within one step of the real mean.
                        let real = sx as f64 * sum as f64 / count.max(1) as f64 / sy as f64;
                        let exact = (real.round() as i64 + zy as i64).clamp(-128, 120);
                        assert!(
                            (got as i64 - exact).abs() <= 1,
                            "{what} [{i}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn global_average_matches_the_mean() {
        let seed = 0x6a;
        let mut rng = Rng(seed);
        for spatial in [1, 7, 49, 196, 3136] {
            for (zx, zy, sx, sy) in [
                (-128, 127, 0.02, 0.01),
                (127, -128, 0.05, 0.02),
                (3, 0, 0.1, 0.1),
            ] {
                let channels = 5;
                let x = rng.i8s(channels * spatial, -128, 127);
                let mut out = vec![0i8; channels];
                let convention = [Requantization::Fp32, Requantization::FixedPoint][spatial % 2];
                qs8_global_avg_pool(channels, spatial, &x, sx, zx, sy, zy, -128, 127, convention, &mut out);
                let rq = mean_requantizer(sx, sy, spatial, convention);
                for (c, &got) in out.iter().enumerate() {
                    let sum: i64 = x[c * spatial..][..spatial]
                        .iter()
                        .map(|&t| t as i64 - zx as i64)
                        .sum();
                    let want = reference_output(sum, &rq, zy, -128, 127);
                    assert_eq!(
                        got, want,
                        "seed {seed:#x} spatial={spatial} zx={zx} channel {c}"
                    );
                }
            }
        }
    }
}
