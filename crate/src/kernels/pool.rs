//! Pooling (max, average, global) over NCHW planes, and axis reductions
//! (ONNX Reduce*).
//!
//! Contract:
//! - 2-D pooling reads `channels` planes of `in_h * in_w` and writes
//!   `channels` planes of `out_h * out_w`; fold the batch into `channels`.
//!   Output sizes are the caller's choice, so ONNX `ceil_mode` windows that
//!   run past the bottom/right padding are supported: taps outside the input
//!   are skipped.
//! - Max pooling treats padding as -inf and computes `pmax` (`if acc < x {
//!   x } else { acc }`), as onnxruntime does: NaN inputs are skipped unless
//!   first. A window with no input tap gives -inf.
//! - Average pooling sums taps in window order (rows, then columns) and
//!   divides by the tap count: in-bounds taps for `count_include_pad =
//!   false`, taps inside the padded input `[-pad_top, in_h + pad_bottom)` ×
//!   `[-pad_left, in_w + pad_right)` for `true` (ONNX and PyTorch: the
//!   overhang of a `ceil_mode` window is not counted). An empty count gives 0.
//! - The kernel accumulates one whole output row per kernel tap
//!   (`accumulate_strided`: SIMD128 on wasm for column strides 1 and 2);
//!   every path does the same operations in the same order, so SIMD128 and
//!   scalar results are equal bit for bit.
//! - `reduce` keeps the reduced axes with size 1 (keepdims is the caller's
//!   business); partial sums are formed per contiguous run, so results may
//!   differ from a sequential sum by rounding.
//!
//! Tests compare against naive window loops (f64 sums) on random shapes with
//! pads, dilations, strides and ceil-mode windows, and against the known
//! onnxruntime results of the ceil-mode `count_include_pad` cases.

use super::elementwise::{accumulate, accumulate_strided, f32_rmax, f32_rsum, BinaryOp};

/// Geometry of a 2-D pooling window over `channels` planes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pool2dShape {
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
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
    /// Only average pooling with `count_include_pad` reads the trailing pads:
    /// they bound the padded extent whose taps count in the divisor.
    pub pad_bottom: usize,
    pub pad_right: usize,
}

/// The output columns a kernel column reaches inside the input: `ow` in
/// `lo..hi` reads input column `ow * stride + offset`.
#[derive(Clone, Copy)]
struct TapSpan {
    lo: usize,
    hi: usize,
    offset: isize,
}

/// For each kernel tap along one axis, the output positions whose tap lands
/// in `[0, len)`.
fn tap_spans(
    out_len: usize,
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
) -> Vec<TapSpan> {
    assert!(
        stride > 0 && dilation > 0,
        "pooling stride and dilation must be positive"
    );
    (0..kernel)
        .map(|k| {
            let offset = (k * dilation) as isize - pad as isize;
            // Smallest o with o * stride + offset >= bound, as an index >= 0.
            let first_at = |bound: isize| {
                ((bound - offset).max(0) as usize)
                    .div_ceil(stride)
                    .min(out_len)
            };
            let lo = first_at(0);
            TapSpan {
                lo,
                hi: first_at(len as isize).max(lo),
                offset,
            }
        })
        .collect()
}

/// Per output position along one axis, the number of taps inside
/// `[-pad_begin, len + pad_end)`.
fn tap_counts(
    out_len: usize,
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Vec<usize> {
    (0..out_len)
        .map(|o| {
            (0..kernel)
                .filter(|&k| {
                    let at = o * stride + k * dilation;
                    at < len + pad_begin + pad_end
                })
                .count()
        })
        .collect()
}

/// Accumulates every window of one channel into `out` (already filled with
/// the identity of `op`), one output row per kernel tap.
fn pool_plane(
    s: &Pool2dShape,
    op: BinaryOp,
    rows: &[TapSpan],
    cols: &[TapSpan],
    input: &[f32],
    out: &mut [f32],
) {
    for (oh, out_row) in out.chunks_exact_mut(s.out_w).enumerate() {
        for row in rows.iter().filter(|r| (r.lo..r.hi).contains(&oh)) {
            let ih = (oh * s.stride_h) as isize + row.offset;
            let in_row = &input[ih as usize * s.in_w..][..s.in_w];
            for col in cols.iter().filter(|c| c.lo < c.hi) {
                let first = (col.lo * s.stride_w) as isize + col.offset;
                accumulate_strided(
                    op,
                    &mut out_row[col.lo..col.hi],
                    &in_row[first as usize..],
                    s.stride_w,
                );
            }
        }
    }
}

fn check_pool_buffers(s: &Pool2dShape, input: &[f32], output: &[f32]) {
    assert_eq!(
        input.len(),
        s.channels * s.in_h * s.in_w,
        "pool input does not match its shape"
    );
    assert_eq!(
        output.len(),
        s.channels * s.out_h * s.out_w,
        "pool output does not match its shape"
    );
}

/// Max pooling; padding counts as -inf.
pub fn max_pool2d(s: &Pool2dShape, input: &[f32], output: &mut [f32]) {
    check_pool_buffers(s, input, output);
    output.fill(f32::NEG_INFINITY);
    if output.is_empty() || input.is_empty() {
        return;
    }
    let rows = tap_spans(
        s.out_h,
        s.in_h,
        s.kernel_h,
        s.stride_h,
        s.dilation_h,
        s.pad_top,
    );
    let cols = tap_spans(
        s.out_w,
        s.in_w,
        s.kernel_w,
        s.stride_w,
        s.dilation_w,
        s.pad_left,
    );
    for (plane, out) in input
        .chunks_exact(s.in_h * s.in_w)
        .zip(output.chunks_exact_mut(s.out_h * s.out_w))
    {
        pool_plane(s, BinaryOp::Max, &rows, &cols, plane, out);
    }
}

/// Average pooling with ONNX `count_include_pad` semantics (see the module
/// contract for the divisor).
pub fn avg_pool2d(s: &Pool2dShape, count_include_pad: bool, input: &[f32], output: &mut [f32]) {
    check_pool_buffers(s, input, output);
    output.fill(0.0);
    if output.is_empty() || input.is_empty() {
        return;
    }
    let rows = tap_spans(
        s.out_h,
        s.in_h,
        s.kernel_h,
        s.stride_h,
        s.dilation_h,
        s.pad_top,
    );
    let cols = tap_spans(
        s.out_w,
        s.in_w,
        s.kernel_w,
        s.stride_w,
        s.dilation_w,
        s.pad_left,
    );
    let (count_h, count_w) = if count_include_pad {
        (
            tap_counts(
                s.out_h,
                s.in_h,
                s.kernel_h,
                s.stride_h,
                s.dilation_h,
                s.pad_top,
                s.pad_bottom,
            ),
            tap_counts(
                s.out_w,
                s.in_w,
                s.kernel_w,
                s.stride_w,
                s.dilation_w,
                s.pad_left,
                s.pad_right,
            ),
        )
    } else {
        // In-bounds taps per position: the spans that contain it.
        let count = |spans: &[TapSpan], len: usize| -> Vec<usize> {
            (0..len)
                .map(|o| spans.iter().filter(|t| (t.lo..t.hi).contains(&o)).count())
                .collect()
        };
        (count(&rows, s.out_h), count(&cols, s.out_w))
    };
    let divisors: Vec<f32> = count_h
        .iter()
        .flat_map(|&h| count_w.iter().map(move |&w| (h * w).max(1) as f32))
        .collect();
    for (plane, out) in input
        .chunks_exact(s.in_h * s.in_w)
        .zip(output.chunks_exact_mut(s.out_h * s.out_w))
    {
        pool_plane(s, BinaryOp::Add, &rows, &cols, plane, out);
        out.iter_mut().zip(&divisors).for_each(|(o, &d)| *o /= d);
    }
}

/// The mean of each of `channels` planes of `spatial` elements.
pub fn global_avg_pool(channels: usize, spatial: usize, input: &[f32], output: &mut [f32]) {
    assert_eq!(
        input.len(),
        channels * spatial,
        "pool input does not match its shape"
    );
    assert_eq!(
        output.len(),
        channels,
        "pool output does not match its shape"
    );
    if spatial == 0 {
        return output.fill(f32::NAN);
    }
    for (o, plane) in output.iter_mut().zip(input.chunks_exact(spatial)) {
        *o = f32_rsum(plane) / spatial as f32;
    }
}

/// The maximum of each of `channels` planes of `spatial` elements.
pub fn global_max_pool(channels: usize, spatial: usize, input: &[f32], output: &mut [f32]) {
    assert_eq!(
        input.len(),
        channels * spatial,
        "pool input does not match its shape"
    );
    assert_eq!(
        output.len(),
        channels,
        "pool output does not match its shape"
    );
    if spatial == 0 {
        return output.fill(f32::NEG_INFINITY);
    }
    for (o, plane) in output.iter_mut().zip(input.chunks_exact(spatial)) {
        *o = f32_rmax(plane);
    }
}

/// An ONNX reduction: ReduceSum, ReduceMean, ReduceMax, ReduceMin,
/// ReduceProd, ReduceSumSquare, ReduceL2.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    SumSquare,
    L2,
}

impl ReduceOp {
    /// The operator that merges two partial results.
    fn merge(self) -> BinaryOp {
        match self {
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::SumSquare | ReduceOp::L2 => BinaryOp::Add,
            ReduceOp::Max => BinaryOp::Max,
            ReduceOp::Min => BinaryOp::Min,
            ReduceOp::Prod => BinaryOp::Mul,
        }
    }

    fn identity(self) -> f32 {
        match self {
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::SumSquare | ReduceOp::L2 => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
            ReduceOp::Min => f32::INFINITY,
            ReduceOp::Prod => 1.0,
        }
    }

    fn squares(self) -> bool {
        matches!(self, ReduceOp::SumSquare | ReduceOp::L2)
    }

    /// The partial result of one contiguous run.
    fn run(self, x: &[f32]) -> f32 {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => f32_rsum(x),
            ReduceOp::Max => f32_rmax(x),
            ReduceOp::SumSquare | ReduceOp::L2 => x.iter().fold(0.0, |acc, &v| acc + v * v),
            ReduceOp::Min | ReduceOp::Prod => {
                let merge = self.merge();
                x.iter()
                    .fold(self.identity(), |acc, &v| merge.apply_scalar(acc, v))
            }
        }
    }
}

/// Reduces `x` of `shape` over `axes` into `out`, whose shape is `shape` with
/// the reduced axes set to 1. Repeated axes count once.
pub fn reduce(op: ReduceOp, x: &[f32], shape: &[usize], axes: &[usize], out: &mut [f32]) {
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    assert!(
        axes.iter().all(|&a| a < shape.len()),
        "reduce axis out of range"
    );
    let reduced = |i: usize| axes.contains(&i);
    let out_len: usize = (0..shape.len())
        .filter(|&i| !reduced(i))
        .map(|i| shape[i])
        .product();
    assert_eq!(out.len(), out_len, "out does not match the reduced shape");
    let count: usize = (0..shape.len())
        .filter(|&i| reduced(i))
        .map(|i| shape[i])
        .product();
    out.fill(op.identity());

    // Alternating groups of kept and reduced axes, size-1 axes dropped:
    // (size, reduced, output stride), outermost first.
    let mut groups: Vec<(usize, bool, usize)> = Vec::new();
    for (i, &n) in shape.iter().enumerate().filter(|&(_, &n)| n != 1) {
        match groups.last_mut() {
            Some(g) if g.1 == reduced(i) => g.0 *= n,
            _ => groups.push((n, reduced(i), 0)),
        }
    }
    let mut stride = 1;
    for g in groups.iter_mut().rev().filter(|g| !g.1) {
        g.2 = stride;
        stride *= g.0;
    }

    if !x.is_empty() {
        let (len, inner_reduced, _) = groups.last().copied().unwrap_or((1, true, 0));
        let outer = &groups[..groups.len().saturating_sub(1)];
        let mut index = vec![0usize; outer.len()];
        let mut squares = Vec::new();
        let mut o = 0;
        for run in x.chunks_exact(len) {
            if inner_reduced {
                out[o] = op.merge().apply_scalar(out[o], op.run(run));
            } else if op.squares() {
                squares.clear();
                squares.extend(run.iter().map(|v| v * v));
                accumulate(BinaryOp::Add, &mut out[o..o + len], &squares);
            } else {
                accumulate(op.merge(), &mut out[o..o + len], run);
            }
            // Odometer over the outer groups, innermost first.
            for d in (0..outer.len()).rev() {
                index[d] += 1;
                o += outer[d].2;
                if index[d] < outer[d].0 {
                    break;
                }
                index[d] = 0;
                o -= outer[d].2 * outer[d].0;
            }
        }
    }
    match op {
        ReduceOp::Mean => out.iter_mut().for_each(|v| *v /= count as f32),
        ReduceOp::L2 => out.iter_mut().for_each(|v| *v = v.sqrt()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::elementwise::pmax;
    use super::*;

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
                .collect()
        }
    }

    /// ONNX output size, including the rule that a ceil-mode window must
    /// start inside the input or its leading padding.
    fn onnx_out_len(
        len: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        pad_begin: usize,
        pad_end: usize,
        ceil: bool,
    ) -> usize {
        let span = (kernel - 1) * dilation + 1;
        let room = len + pad_begin + pad_end - span;
        let mut n = if ceil {
            room.div_ceil(stride)
        } else {
            room / stride
        } + 1;
        if ceil && (n - 1) * stride >= len + pad_begin {
            n -= 1;
        }
        n
    }

    /// Window by window, straight from the ONNX definition.
    fn naive_pool(s: &Pool2dShape, max: bool, count_include_pad: bool, input: &[f32]) -> Vec<f64> {
        let mut out = Vec::new();
        for c in 0..s.channels {
            for oh in 0..s.out_h {
                for ow in 0..s.out_w {
                    let (mut acc, mut count) = (if max { f64::NEG_INFINITY } else { 0.0 }, 0);
                    for kh in 0..s.kernel_h {
                        for kw in 0..s.kernel_w {
                            let ih =
                                (oh * s.stride_h + kh * s.dilation_h) as isize - s.pad_top as isize;
                            let iw = (ow * s.stride_w + kw * s.dilation_w) as isize
                                - s.pad_left as isize;
                            let inside = ih >= 0
                                && iw >= 0
                                && (ih as usize) < s.in_h
                                && (iw as usize) < s.in_w;
                            let in_padded = ih < (s.in_h + s.pad_bottom) as isize
                                && iw < (s.in_w + s.pad_right) as isize;
                            if inside {
                                let v =
                                    input[(c * s.in_h + ih as usize) * s.in_w + iw as usize] as f64;
                                acc = if max {
                                    pmax(acc as f32, v as f32) as f64
                                } else {
                                    acc + v
                                };
                            }
                            if inside || (count_include_pad && in_padded) {
                                count += 1;
                            }
                        }
                    }
                    out.push(if max { acc } else { acc / count.max(1) as f64 });
                }
            }
        }
        out
    }

    fn random_shape(rng: &mut Rng) -> Pool2dShape {
        loop {
            let (kernel_h, kernel_w) = (1 + rng.below(4), 1 + rng.below(5));
            let (dilation_h, dilation_w) = (1 + rng.below(2), 1 + rng.below(3));
            let (in_h, in_w) = (1 + rng.below(9), 1 + rng.below(13));
            let pads: Vec<usize> = (0..4).map(|_| rng.below(3)).collect();
            let (stride_h, stride_w) = (1 + rng.below(3), 1 + rng.below(3));
            let ceil = rng.below(2) == 0;
            let span_h = (kernel_h - 1) * dilation_h + 1;
            let span_w = (kernel_w - 1) * dilation_w + 1;
            if in_h + pads[0] + pads[2] < span_h || in_w + pads[1] + pads[3] < span_w {
                continue;
            }
            return Pool2dShape {
                channels: 1 + rng.below(3),
                in_h,
                in_w,
                out_h: onnx_out_len(in_h, kernel_h, stride_h, dilation_h, pads[0], pads[2], ceil),
                out_w: onnx_out_len(in_w, kernel_w, stride_w, dilation_w, pads[1], pads[3], ceil),
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                dilation_h,
                dilation_w,
                pad_top: pads[0],
                pad_left: pads[1],
                pad_bottom: pads[2],
                pad_right: pads[3],
            };
        }
    }

    #[test]
    fn pooling_matches_naive_on_random_windows() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for case in 0..2000 {
            let s = random_shape(&mut rng);
            let input = rng.vec(s.channels * s.in_h * s.in_w);
            let mut out = vec![f32::NAN; s.channels * s.out_h * s.out_w];
            max_pool2d(&s, &input, &mut out);
            let expected = naive_pool(&s, true, false, &input);
            assert!(
                out.iter().zip(&expected).all(|(&o, &e)| o as f64 == e),
                "case {case} max {s:?}\n{out:?}\n{expected:?}"
            );
            for include in [false, true] {
                avg_pool2d(&s, include, &input, &mut out);
                let expected = naive_pool(&s, false, include, &input);
                for (i, (&o, &e)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (o as f64 - e).abs() < 1e-5,
                        "case {case} avg include_pad={include} {s:?} at {i}: {o} vs {e}"
                    );
                }
            }
        }
    }

    fn shape_1d(
        in_w: usize,
        out_w: usize,
        kernel: usize,
        stride: usize,
        pad_left: usize,
        pad_right: usize,
    ) -> Pool2dShape {
        Pool2dShape {
            channels: 1,
            in_h: 1,
            in_w,
            out_h: 1,
            out_w,
            kernel_h: 1,
            kernel_w: kernel,
            stride_h: 1,
            stride_w: stride,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 0,
            pad_left,
            pad_bottom: 0,
            pad_right,
        }
    }

    /// onnxruntime and onnx.reference agree on these (onnx issue 5276,
    /// onnxruntime issue 16203): the ceil-mode overhang is not counted.
    #[test]
    fn ceil_mode_overhang_is_not_counted() {
        let mut out = [0.0; 3];
        avg_pool2d(
            &shape_1d(5, 3, 2, 2, 0, 0),
            true,
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &mut out,
        );
        assert_eq!(out, [1.5, 3.5, 5.0]);
        // 6x6, 3x3 kernel, stride 2, pads 1, ceil mode: 4x4 windows whose last
        // row and column overhang by one; divisors 9 inside, 6 on the last row
        // and column, 4 in the last corner.
        let s = Pool2dShape {
            channels: 1,
            in_h: 6,
            in_w: 6,
            out_h: 4,
            out_w: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 2,
            stride_w: 2,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
        };
        let mut out = [0.0; 16];
        avg_pool2d(&s, true, &[1.0; 36], &mut out);
        // Taps inside the input over taps inside the padded input.
        assert_eq!(out[..4], [4.0 / 9.0, 6.0 / 9.0, 6.0 / 9.0, 2.0 / 6.0]);
        assert_eq!(out[12..], [2.0 / 6.0, 3.0 / 6.0, 3.0 / 6.0, 1.0 / 4.0]);
        let mut out = [0.0; 16];
        avg_pool2d(&s, false, &[1.0; 36], &mut out);
        assert!(out.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn max_pool_skips_padding() {
        let mut out = [0.0; 3];
        max_pool2d(&shape_1d(3, 3, 3, 1, 1, 1), &[-5.0, -7.0, -6.0], &mut out);
        assert_eq!(out, [-5.0, -5.0, -6.0]);
    }

    #[test]
    fn global_pools_reduce_each_plane() {
        let mut rng = Rng(17);
        for spatial in [1, 3, 4, 7, 49, 169] {
            let channels = 5;
            let input = rng.vec(channels * spatial);
            let mut avg = vec![0.0; channels];
            let mut max = vec![0.0; channels];
            global_avg_pool(channels, spatial, &input, &mut avg);
            global_max_pool(channels, spatial, &input, &mut max);
            for c in 0..channels {
                let plane = &input[c * spatial..][..spatial];
                let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / spatial as f64;
                assert!(
                    (avg[c] as f64 - mean).abs() < 1e-5,
                    "spatial {spatial} channel {c}"
                );
                assert_eq!(
                    max[c],
                    plane.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                );
            }
        }
    }

    const REDUCE_OPS: [ReduceOp; 7] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
        ReduceOp::SumSquare,
        ReduceOp::L2,
    ];

    /// Folds every input element into the output element it maps to, in f64.
    fn naive_reduce(op: ReduceOp, x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f64> {
        let out_shape: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect();
        let out_len: usize = out_shape.iter().product();
        let identity = match op {
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
            ReduceOp::Prod => 1.0,
            _ => 0.0,
        };
        let mut out = vec![identity; out_len];
        for (flat, &v) in x.iter().enumerate() {
            let v = v as f64;
            let (mut rest, mut o, mut stride) = (flat, 0, 1);
            for i in (0..shape.len()).rev() {
                let k = rest % shape[i];
                rest /= shape[i];
                o += if axes.contains(&i) { 0 } else { k * stride };
                stride *= out_shape[i];
            }
            out[o] = match op {
                ReduceOp::Sum | ReduceOp::Mean => out[o] + v,
                ReduceOp::Max => out[o].max(v),
                ReduceOp::Min => out[o].min(v),
                ReduceOp::Prod => out[o] * v,
                ReduceOp::SumSquare | ReduceOp::L2 => out[o] + v * v,
            };
        }
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        match op {
            ReduceOp::Mean => out.iter_mut().for_each(|v| *v /= count as f64),
            ReduceOp::L2 => out.iter_mut().for_each(|v| *v = v.sqrt()),
            _ => {}
        }
        out
    }

    #[test]
    fn reduce_matches_naive_on_random_axes() {
        let mut rng = Rng(99);
        for case in 0..1500 {
            let rank = rng.below(6);
            let shape: Vec<usize> = (0..rank).map(|_| [1, 2, 3, 5, 8][rng.below(5)]).collect();
            let axes: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
            // Values near 1 keep products in range.
            let x: Vec<f32> = rng
                .vec(shape.iter().product())
                .iter()
                .map(|v| 1.0 + v / 16.0)
                .collect();
            for op in REDUCE_OPS {
                let expected = naive_reduce(op, &x, &shape, &axes);
                let mut out = vec![f32::NAN; expected.len()];
                reduce(op, &x, &shape, &axes, &mut out);
                for (i, (&o, &e)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (o as f64 - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "case {case} {op:?} {shape:?} axes {axes:?} at {i}: {o} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn reduce_edge_cases() {
        // No axes: the identity reduction of each element.
        let mut out = [0.0; 3];
        reduce(ReduceOp::SumSquare, &[1.0, -2.0, 3.0], &[3], &[], &mut out);
        assert_eq!(out, [1.0, 4.0, 9.0]);
        // Rank 0.
        let mut out = [0.0];
        reduce(ReduceOp::Mean, &[7.0], &[], &[], &mut out);
        assert_eq!(out, [7.0]);
        // Repeated axes count once; an empty reduced axis gives the identity.
        let mut out = [0.0; 2];
        reduce(
            ReduceOp::Mean,
            &[1.0, 2.0, 3.0, 4.0],
            &[2, 2],
            &[1, 1],
            &mut out,
        );
        assert_eq!(out, [1.5, 3.5]);
        let mut out = [5.0; 2];
        reduce(ReduceOp::Max, &[], &[2, 0], &[1], &mut out);
        assert_eq!(out, [f32::NEG_INFINITY; 2]);
    }
}
