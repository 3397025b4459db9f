//! Pools and reductions.
//!
//! - MaxPool: `dy` goes to the tap the kernel kept: the first maximum in window order (rows,
//!   then columns; `pmax` keeps the earlier of equal values), in-bounds taps only. 2x2 windows
//!   at stride 2 inside the input (stride-2 shortcuts) take a loop over pairs of rows with no
//!   per-tap bounds, the same rule.
//! - AveragePool: `dy / count` to every in-bounds tap, `count` the kernel's divisor
//!   (`count_include_pad` and ceil-mode windows included).
//! - GlobalAveragePool `dy / (h·w)`; GlobalMaxPool to the first maximum.
//! - Reduce: Sum `dy`, Mean `dy / count`, Max/Min to the first element equal to the result,
//!   Prod `dy · y / x`, SumSquare `2x·dy`, L2 `dy · x / y`.

use std::ops::Range;

use super::{broadcast_strides, for_each_broadcast, strides, Bwd, Fwd, TrainOp};
use crate::engine::pool_shape;
use crate::ir::{ReduceOp, Window2d};
use crate::kernels::pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, reduce, Pool2dShape};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Max,
    Average { count_include_pad: bool },
}

pub struct PoolNode {
    s: Pool2dShape,
    kind: Kind,
    /// Average pools: the divisor of each output position of a plane.
    divisors: Vec<f32>,
    /// Per output row and column: the kernel rows and columns whose taps are in bounds.
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    /// A 2x2 window at stride 2, unpadded and undilated, every window inside the input: the
    /// shortcut of stride-2 blocks (BlazeFace, MobileNet-style), whose max backward takes
    /// [`max_backward_2x2s2`].
    pairs: bool,
}

/// The kernel taps `t < kernel` of output position `o` that land inside `[0, len)`: input
/// `o · stride + t · dilation - pad`.
fn inside(o: usize, len: usize, kernel: usize, stride: usize, dilation: usize, pad: usize) -> Range<usize> {
    let start = o * stride;
    let first = |bound: usize| if start >= bound { 0 } else { (bound - start).div_ceil(dilation) };
    let lo = first(pad).min(kernel);
    lo..first(pad + len).clamp(lo, kernel)
}

impl PoolNode {
    pub fn new(x: &[usize], y: &[usize], w: &Window2d, kind: Kind) -> PoolNode {
        let s = pool_shape(x, y, w);
        let divisors = match kind {
            Kind::Max => Vec::new(),
            Kind::Average { count_include_pad } => {
                // As `kernels::pool::avg_pool2d` counts: taps inside the padded input, or
                // inside the input.
                let count = |o: usize, len: usize, k: usize, st: usize, d: usize, pb: usize, pe: usize| -> usize {
                    (0..k)
                        .filter(|&t| {
                            let at = o * st + t * d;
                            if count_include_pad {
                                at < len + pb + pe
                            } else {
                                at >= pb && at - pb < len
                            }
                        })
                        .count()
                };
                let mut d = Vec::with_capacity(s.out_h * s.out_w);
                for oh in 0..s.out_h {
                    let ch = count(oh, s.in_h, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top, s.pad_bottom);
                    for ow in 0..s.out_w {
                        let cw = count(ow, s.in_w, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left, s.pad_right);
                        d.push((ch * cw).max(1) as f32);
                    }
                }
                d
            }
        };
        let rows = (0..s.out_h).map(|o| inside(o, s.in_h, s.kernel_h, s.stride_h, s.dilation_h, s.pad_top)).collect();
        let cols = (0..s.out_w).map(|o| inside(o, s.in_w, s.kernel_w, s.stride_w, s.dilation_w, s.pad_left)).collect();
        let pairs = [s.kernel_h, s.kernel_w, s.stride_h, s.stride_w] == [2; 4]
            && [s.dilation_h, s.dilation_w] == [1, 1]
            && [s.pad_top, s.pad_left] == [0, 0]
            && 2 * s.out_h <= s.in_h
            && 2 * s.out_w <= s.in_w;
        PoolNode { s, kind, divisors, rows, cols, pairs }
    }

    /// Calls `f(input index within the plane)` for each in-bounds tap of output `(oh, ow)`, in
    /// window order.
    #[inline(always)]
    fn taps(&self, oh: usize, ow: usize, mut f: impl FnMut(usize)) {
        let s = &self.s;
        for ky in self.rows[oh].clone() {
            // Wrapping: the column of tap 0 may be left of the input; the in-bounds taps are not.
            let row = ((oh * s.stride_h + ky * s.dilation_h - s.pad_top) * s.in_w + ow * s.stride_w).wrapping_sub(s.pad_left);
            for kx in self.cols[ow].clone() {
                f(row.wrapping_add(kx * s.dilation_w));
            }
        }
    }
}

impl TrainOp for PoolNode {
    fn forward(&self, f: &mut Fwd) {
        match self.kind {
            Kind::Max => max_pool2d(&self.s, f.x[0], &mut f.y[0]),
            Kind::Average { count_include_pad } => avg_pool2d(&self.s, count_include_pad, f.x[0], &mut f.y[0]),
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let s = &self.s;
        let (x, y, dy) = (b.x[0], b.y[0], b.dy[0]);
        let Some(dx) = b.dx(0) else { return };
        let (ip, op) = (s.in_h * s.in_w, s.out_h * s.out_w);
        for c in 0..s.channels {
            let (xp, yp, dyp) = (&x[c * ip..][..ip], &y[c * op..][..op], &dy[c * op..][..op]);
            let dxp = &mut dx[c * ip..][..ip];
            if self.kind == Kind::Max && self.pairs {
                max_backward_2x2s2(s, xp, yp, dyp, dxp);
                continue;
            }
            for oh in 0..s.out_h {
                for ow in 0..s.out_w {
                    let o = oh * s.out_w + ow;
                    let g = dyp[o];
                    match self.kind {
                        // The output is the window's maximum itself (`pmax` returns one of
                        // its operands), so the first tap equal to it is the one kept. Found
                        // with a select per tap, not a branch: which tap wins is data, and on
                        // random data the mispredictions cost a third more (natively).
                        Kind::Max => {
                            let mut kept = usize::MAX;
                            self.taps(oh, ow, |i| kept = if (kept == usize::MAX) & (xp[i] == yp[o]) { i } else { kept });
                            if let Some(d) = dxp.get_mut(kept) {
                                *d += g;
                            }
                        }
                        Kind::Average { .. } => {
                            let g = g / self.divisors[o];
                            self.taps(oh, ow, |i| dxp[i] += g);
                        }
                    }
                }
            }
        }
    }
}

/// The MaxPool backward of one plane for a 2x2 window at stride 2 whose windows all lie inside
/// the input (`PoolNode::pairs`): the same rule as the general loop (the first tap in window
/// order equal to the output gets `dy`), on two input rows at a time without per-tap bounds.
fn max_backward_2x2s2(s: &Pool2dShape, xp: &[f32], yp: &[f32], dyp: &[f32], dxp: &mut [f32]) {
    let w = s.in_w;
    for oh in 0..s.out_h {
        let top = 2 * oh * w;
        let (y_row, dy_row) = (&yp[oh * s.out_w..][..s.out_w], &dyp[oh * s.out_w..][..s.out_w]);
        for (ow, (&m, &g)) in y_row.iter().zip(dy_row).enumerate() {
            let i = top + 2 * ow;
            // Window order: the top row's two taps, then the bottom row's.
            let kept = if xp[i] == m {
                i
            } else if xp[i + 1] == m {
                i + 1
            } else if xp[i + w] == m {
                i + w
            } else {
                i + w + 1
            };
            dxp[kept] += g;
        }
    }
}

pub struct GlobalPoolNode {
    channels: usize,
    spatial: usize,
    max: bool,
}

impl GlobalPoolNode {
    pub fn new(x: &[usize], max: bool) -> GlobalPoolNode {
        GlobalPoolNode { channels: x[0] * x[1], spatial: x[2..].iter().product(), max }
    }
}

impl TrainOp for GlobalPoolNode {
    fn forward(&self, f: &mut Fwd) {
        if self.max {
            global_max_pool(self.channels, self.spatial, f.x[0], &mut f.y[0])
        } else {
            global_avg_pool(self.channels, self.spatial, f.x[0], &mut f.y[0])
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let (x, y, dy) = (b.x[0], b.y[0], b.dy[0]);
        let (sp, max) = (self.spatial, self.max);
        let Some(dx) = b.dx(0) else { return };
        for c in 0..self.channels {
            let d = &mut dx[c * sp..][..sp];
            if max {
                if let Some(i) = x[c * sp..][..sp].iter().position(|&v| v == y[c]) {
                    d[i] += dy[c];
                }
            } else {
                d.fill(dy[c] / sp as f32);
            }
        }
    }

    fn overwrites_dx(&self, _i: usize) -> bool {
        // The average pool writes every element; the max pool adds one per channel.
        !self.max
    }
}

pub struct ReduceNode {
    op: ReduceOp,
    shape: Vec<usize>,
    axes: Vec<usize>,
    /// Strides of the output (with kept size-1 axes) broadcast back to the input.
    out_strides: Vec<usize>,
    count: usize,
    out_len: usize,
}

impl ReduceNode {
    pub fn new(op: ReduceOp, shape: &[usize], axes: &[usize]) -> ReduceNode {
        let kept: Vec<usize> = shape.iter().enumerate().map(|(a, &d)| if axes.contains(&a) { 1 } else { d }).collect();
        ReduceNode {
            op,
            shape: shape.to_vec(),
            axes: axes.to_vec(),
            out_strides: broadcast_strides(&kept, shape),
            count: shape.iter().enumerate().filter(|(a, _)| axes.contains(a)).map(|(_, &d)| d).product(),
            out_len: kept.iter().product(),
        }
    }
}

impl TrainOp for ReduceNode {
    fn forward(&self, f: &mut Fwd) {
        reduce(self.op, f.x[0], &self.shape, &self.axes, &mut f.y[0]);
    }

    fn backward(&self, b: &mut Bwd) {
        let (x, y, dy) = (b.x[0], b.y[0], b.dy[0]);
        let (op, count) = (self.op, self.count as f32);
        let mut taken = if matches!(op, ReduceOp::Max | ReduceOp::Min) { vec![false; self.out_len] } else { Vec::new() };
        let Some(dx) = b.dx(0) else { return };
        for_each_broadcast(&self.shape, &strides(&self.shape), &self.out_strides, |i, _, o| {
            dx[i] += match op {
                ReduceOp::Sum => dy[o],
                ReduceOp::Mean => dy[o] / count,
                ReduceOp::Max | ReduceOp::Min => {
                    if !taken[o] && x[i] == y[o] {
                        taken[o] = true;
                        dy[o]
                    } else {
                        0.0
                    }
                }
                ReduceOp::Prod => {
                    if x[i] != 0.0 {
                        dy[o] * y[o] / x[i]
                    } else {
                        0.0
                    }
                }
                ReduceOp::SumSquare => 2.0 * x[i] * dy[o],
                ReduceOp::L2 => {
                    if y[o] > 0.0 {
                        dy[o] * x[i] / y[o]
                    } else {
                        0.0
                    }
                }
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::gradcheck::{check_graph, Builder};
    use crate::ir::{Op, ReduceOp, Window2d};
    use crate::rng::Rng;

    /// Distinct values at least 0.01 apart, shuffled: no max is tied or within a difference.
    fn distinct(n: usize, seed: u64) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - n as f32 * 0.005).collect();
        let mut rng = Rng::seeded(seed);
        for i in (1..n).rev() {
            v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        v
    }

    #[test]
    fn max_and_average_pools_with_pads_strides_dilations_and_ceil_mode() {
        // (x, kernel, stride, dilation, pads, ceil_mode)
        let cases: [([usize; 4], [usize; 2], usize, usize, [usize; 4], bool); 5] = [
            ([1, 2, 7, 6], [3, 3], 2, 1, [1, 1, 1, 1], false),
            ([2, 1, 7, 7], [2, 2], 2, 1, [0, 0, 0, 0], true),
            ([1, 3, 6, 5], [3, 2], 1, 2, [1, 0, 2, 1], false),
            ([1, 2, 5, 8], [3, 3], 2, 1, [0, 1, 1, 0], true),
            ([1, 1, 4, 4], [4, 4], 1, 1, [0, 0, 0, 0], false),
        ];
        for (i, (x, kernel, stride, dilation, pads, ceil_mode)) in cases.into_iter().enumerate() {
            let window = Window2d { kernel, strides: [stride; 2], dilations: [dilation; 2], pads };
            for op in [
                Op::MaxPool { window: window.clone(), ceil_mode },
                Op::AveragePool { window: window.clone(), ceil_mode, count_include_pad: false },
                Op::AveragePool { window: window.clone(), ceil_mode, count_include_pad: true },
            ] {
                let mut b = Builder::new(i as u64);
                let n: usize = x.iter().product();
                let xi = b.input_with("x", &x, distinct(n, i as u64));
                let y = b.one("pool", op, &[xi]);
                let (g, inputs) = b.finish(&[y]);
                check_graph(&g, &inputs, 2e-3, 2e-3, 0);
            }
        }
    }

    /// The 2x2 stride-2 MaxPool backward equals the general loop, on values with many ties
    /// (quantized activations repeat) and odd sizes that leave the last row and column out.
    #[test]
    fn max_pool_2x2_stride_2_backward_equals_the_general_loop() {
        use super::super::{Bwd, Scratch, TrainOp};
        use super::{max_pool2d, Kind, PoolNode};
        let mut rng = Rng::seeded(21);
        for (h, w) in [(2, 2), (4, 6), (7, 5), (8, 8)] {
            let window = Window2d { kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [0; 4] };
            let (x_shape, y_shape) = ([1, 3, h, w], [1, 3, h / 2, w / 2]);
            let mut node = PoolNode::new(&x_shape, &y_shape, &window, Kind::Max);
            assert!(node.pairs, "{h}x{w}");
            let x: Vec<f32> = (0..3 * h * w).map(|_| rng.int(0, 3) as f32).collect();
            let mut y = vec![0f32; 3 * (h / 2) * (w / 2)];
            max_pool2d(&node.s, &x, &mut y);
            let dy: Vec<f32> = (0..y.len()).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let mut grads = Vec::new();
            for pairs in [true, false] {
                node.pairs = pairs;
                let mut dx = vec![0.5f32; x.len()];
                let (xs, ys, dys) = ([&x[..]], [&y[..]], [&dy[..]]);
                let mut dxs = vec![Some(std::mem::take(&mut dx))];
                let mut scratch = Scratch::default();
                node.backward(&mut Bwd { x: &xs, y: &ys, aux: &[], dy: &dys, dx: &mut dxs, scratch: &mut scratch });
                grads.push(dxs.remove(0).expect("dx"));
            }
            assert_eq!(grads[0], grads[1], "{h}x{w}");
            assert_ne!(grads[0], vec![0.5f32; x.len()], "{h}x{w}: the gradient was added");
        }
    }

    #[test]
    fn global_pools() {
        for op in [Op::GlobalAveragePool, Op::GlobalMaxPool] {
            let mut b = Builder::new(1);
            let x = b.input_with("x", &[2, 3, 3, 5], distinct(90, 4));
            let y = b.one("pool", op, &[x]);
            let (g, inputs) = b.finish(&[y]);
            check_graph(&g, &inputs, 2e-3, 2e-3, 0);
        }
    }

    #[test]
    fn every_reduction_over_inner_outer_and_split_axes() {
        for (axes, keep_dims) in [(vec![1usize], true), (vec![0, 2], false), (vec![2, 3], true), (vec![0, 1, 2, 3], false), (vec![1, 3], false)] {
            for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::Prod, ReduceOp::SumSquare, ReduceOp::L2] {
                let mut b = Builder::new(2);
                // Prod of many values underflows: keep them near ±1 there.
                let data: Vec<f32> = distinct(60, 8).iter().map(|&v| if op == ReduceOp::Prod { v.signum() * (0.8 + v.abs()) } else { v }).collect();
                let x = b.input_with("x", &[2, 3, 5, 2], data);
                let y = b.one("reduce", Op::Reduce { op, axes: axes.clone(), keep_dims }, &[x]);
                let (g, inputs) = b.finish(&[y]);
                check_graph(&g, &inputs, 2e-3, 3e-3, 0);
            }
        }
    }
}
