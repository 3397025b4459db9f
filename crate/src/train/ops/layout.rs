//! Data movement: Reshape, Transpose, Slice, Pad, Gather, Concat, Split, Resize.
//!
//! Transpose, Slice, Pad and Gather only select elements, so each is an index map built once
//! by running the layout kernel itself on the indices `0..n` (u32): the forward gathers
//! `y[o] = x[map[o]]` (the constant of a constant Pad where the map says none) and the
//! backward scatters `dx[map[o]] += dy[o]`, which also sums the gradients of elements read
//! twice (Edge/Reflect pads, repeated Gather indices). Concat and Split move blocks; Reshape
//! moves nothing.
//!
//! Resize (nearest and linear) is separable: along each axis that changes size, a sparse
//! `out x in` matrix (at most two entries per row), built by resizing the unit vectors of that
//! axis with the kernel itself, so the coordinate rules are the kernel's. The backward applies
//! the transposed matrices axis by axis.

use super::{add_into, buf, zeroed, Bwd, Fwd, TrainOp};
use crate::ir::{CoordTransform, NearestMode, PadMode, ResizeMode};
use crate::kernels::{layout, resize};

pub struct ReshapeNode;

impl TrainOp for ReshapeNode {
    fn forward(&self, f: &mut Fwd) {
        f.y[0].copy_from_slice(f.x[0]);
    }

    fn backward(&self, b: &mut Bwd) {
        let dy = b.dy[0];
        if let Some(dx) = b.dx(0) {
            dx.copy_from_slice(dy);
        }
    }

    fn overwrites_dx(&self, _i: usize) -> bool {
        true
    }
}

/// A selection: `y[o] = x[map[o]]`, or `fill` where `map[o] == NONE`.
pub struct IndexMapNode {
    map: Vec<u32>,
    fill: f32,
}

const NONE: u32 = u32::MAX;

fn iota(shape: &[usize]) -> Vec<u32> {
    let n: usize = shape.iter().product();
    assert!(n < NONE as usize, "tensor of {n} elements is too large for an index map");
    (0..n as u32).collect()
}

impl IndexMapNode {
    pub fn transpose(shape: &[usize], perm: &[usize]) -> IndexMapNode {
        let x = iota(shape);
        let mut map = vec![0u32; x.len()];
        layout::transpose(&x, shape, perm, &mut map);
        IndexMapNode { map, fill: 0.0 }
    }

    pub fn slice(shape: &[usize], starts: &[usize], steps: &[isize], out_shape: &[usize]) -> IndexMapNode {
        let mut map = vec![0u32; out_shape.iter().product()];
        layout::slice(&iota(shape), shape, starts, steps, &mut map, out_shape);
        IndexMapNode { map, fill: 0.0 }
    }

    pub fn pad(shape: &[usize], begin: &[usize], end: &[usize], mode: PadMode) -> IndexMapNode {
        let out: usize = shape.iter().zip(begin.iter().zip(end)).map(|(&d, (&b, &e))| d + b + e).product();
        let mut map = vec![0u32; out];
        let (m, fill) = match mode {
            PadMode::Constant(v) => (PadMode::Constant(NONE), v),
            PadMode::Reflect => (PadMode::Reflect, 0.0),
            PadMode::Edge => (PadMode::Edge, 0.0),
        };
        layout::pad(&iota(shape), shape, begin, end, m, &mut map);
        IndexMapNode { map, fill }
    }

    pub fn gather(shape: &[usize], axis: usize, indices: &[i64]) -> IndexMapNode {
        let out = shape.iter().product::<usize>() / shape[axis].max(1) * indices.len();
        let mut map = vec![0u32; out];
        layout::gather(&iota(shape), shape, axis, indices, &mut map);
        IndexMapNode { map, fill: 0.0 }
    }
}

impl TrainOp for IndexMapNode {
    fn forward(&self, f: &mut Fwd) {
        let x = f.x[0];
        for (y, &m) in f.y[0].iter_mut().zip(&self.map) {
            *y = if m == NONE { self.fill } else { x[m as usize] };
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let dy = b.dy[0];
        let Some(dx) = b.dx(0) else { return };
        for (&g, &m) in dy.iter().zip(&self.map) {
            if m != NONE {
                dx[m as usize] += g;
            }
        }
    }
}

pub struct ConcatNode {
    shapes: Vec<Vec<usize>>,
    axis: usize,
    outer: usize,
    /// Per input: elements per outer index (`shape[axis] · inner`).
    blocks: Vec<usize>,
}

impl ConcatNode {
    pub fn new(shapes: Vec<Vec<usize>>, axis: usize) -> ConcatNode {
        let outer = shapes[0][..axis].iter().product();
        let blocks = shapes.iter().map(|s| s[axis..].iter().product()).collect();
        ConcatNode { shapes, axis, outer, blocks }
    }
}

impl TrainOp for ConcatNode {
    fn forward(&self, f: &mut Fwd) {
        let parts: Vec<(&[f32], &[usize])> = f.x.iter().zip(&self.shapes).map(|(x, s)| (*x, s.as_slice())).collect();
        layout::concat(&parts, self.axis, &mut f.y[0]);
    }

    fn backward(&self, b: &mut Bwd) {
        let dy = b.dy[0];
        let total: usize = self.blocks.iter().sum();
        let mut at = 0;
        for (i, &block) in self.blocks.iter().enumerate() {
            if let Some(dx) = b.dx(i) {
                for o in 0..self.outer {
                    dx[o * block..][..block].copy_from_slice(&dy[o * total + at..][..block]);
                }
            }
            at += block;
        }
    }

    fn overwrites_dx(&self, _i: usize) -> bool {
        true
    }
}

pub struct SplitNode {
    shape: Vec<usize>,
    axis: usize,
    sizes: Vec<usize>,
    outer: usize,
    blocks: Vec<usize>,
}

impl SplitNode {
    pub fn new(shape: Vec<usize>, outs: Vec<Vec<usize>>, axis: usize) -> SplitNode {
        let outer = shape[..axis].iter().product();
        let blocks = outs.iter().map(|s| s[axis..].iter().product()).collect();
        SplitNode { sizes: outs.iter().map(|s| s[axis]).collect(), shape, axis, outer, blocks }
    }
}

impl TrainOp for SplitNode {
    fn forward(&self, f: &mut Fwd) {
        let mut views: Vec<&mut [f32]> = f.y.iter_mut().map(|v| v.as_mut_slice()).collect();
        layout::split(f.x[0], &self.shape, self.axis, &self.sizes, &mut views);
    }

    fn backward(&self, b: &mut Bwd) {
        let dys = b.dy;
        let total: usize = self.blocks.iter().sum();
        let Some(dx) = b.dx(0) else { return };
        let mut at = 0;
        for (dy, &block) in dys.iter().zip(&self.blocks) {
            for o in 0..self.outer {
                add_into(&mut dx[o * total + at..][..block], &dy[o * block..][..block]);
            }
            at += block;
        }
    }
}

/// One axis of a resize: `y[o] = Σ w · x[src]` over the row's entries.
struct AxisMatrix {
    axis: usize,
    in_len: usize,
    out_len: usize,
    rows: Vec<Vec<(usize, f32)>>,
}

pub struct ResizeNode {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    scales: Option<Vec<f32>>,
    mode: ResizeMode,
    coord: CoordTransform,
    nearest: NearestMode,
    axes: Vec<AxisMatrix>,
}

impl ResizeNode {
    pub fn new(in_shape: &[usize], out_shape: &[usize], scales: Option<&[f32]>, mode: ResizeMode, coord: CoordTransform, nearest: NearestMode) -> ResizeNode {
        let axes = (0..in_shape.len())
            .filter(|&a| in_shape[a] != out_shape[a])
            .map(|axis| {
                let (n_in, n_out) = (in_shape[axis], out_shape[axis]);
                let scale = scales.map(|s| [s[axis]]);
                let mut rows = vec![Vec::new(); n_out];
                let (mut unit, mut col) = (vec![0f32; n_in], vec![0f32; n_out]);
                for j in 0..n_in {
                    unit.fill(0.0);
                    unit[j] = 1.0;
                    resize::resize(&unit, &[n_in], &mut col, &[n_out], scale.as_ref().map(|s| &s[..]), mode, coord, nearest);
                    for (o, &w) in col.iter().enumerate() {
                        if w != 0.0 {
                            rows[o].push((j, w));
                        }
                    }
                }
                AxisMatrix { axis, in_len: n_in, out_len: n_out, rows }
            })
            .collect();
        ResizeNode { in_shape: in_shape.to_vec(), out_shape: out_shape.to_vec(), scales: scales.map(|s| s.to_vec()), mode, coord, nearest, axes }
    }
}

impl TrainOp for ResizeNode {
    fn forward(&self, f: &mut Fwd) {
        resize::resize(f.x[0], &self.in_shape, &mut f.y[0], &self.out_shape, self.scales.as_deref(), self.mode, self.coord, self.nearest);
    }

    fn backward(&self, b: &mut Bwd) {
        let dy = b.dy[0];
        let mut cur = std::mem::take(&mut b.scratch.t0);
        let mut next = std::mem::take(&mut b.scratch.t1);
        let mut shape = self.out_shape.clone();
        buf(&mut cur, dy.len()).copy_from_slice(dy);
        let mut len = dy.len();
        for m in &self.axes {
            let outer: usize = shape[..m.axis].iter().product();
            let inner: usize = shape[m.axis + 1..].iter().product();
            let new_len = outer * m.in_len * inner;
            let dst = zeroed(&mut next, new_len);
            for oo in 0..outer {
                for (o, row) in m.rows.iter().enumerate() {
                    let src = &cur[(oo * m.out_len + o) * inner..][..inner];
                    for &(j, w) in row {
                        dst[(oo * m.in_len + j) * inner..][..inner].iter_mut().zip(src).for_each(|(d, &g)| *d += w * g);
                    }
                }
            }
            shape[m.axis] = m.in_len;
            len = new_len;
            std::mem::swap(&mut cur, &mut next);
        }
        if let Some(dx) = b.dx(0) {
            add_into(dx, &cur[..len]);
        }
        b.scratch.t0 = cur;
        b.scratch.t1 = next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::gradcheck::{check_graph, Builder};
    use crate::ir::{CoordTransform, NearestMode, Op, PadMode, ResizeMode};

    fn one(op: Op, shape: &[usize], seed: u64) {
        let mut b = Builder::new(seed);
        let x = b.input("x", shape);
        let y = b.one("op", op, &[x]);
        let (g, inputs) = b.finish(&[y]);
        check_graph(&g, &inputs, 1e-2, 1e-3, 0);
    }

    #[test]
    fn reshape_transpose_slice_gather() {
        one(Op::Reshape { shape: vec![6, 5] }, &[2, 3, 5], 1);
        one(Op::Transpose { perm: vec![0, 2, 3, 1] }, &[1, 3, 4, 5], 2);
        one(Op::Transpose { perm: vec![2, 0, 1] }, &[3, 2, 5], 3);
        one(Op::Slice { starts: vec![0, 1, 4], steps: vec![1, 2, -1], sizes: vec![2, 2, 3] }, &[2, 5, 6], 4);
        one(Op::Gather { axis: 1, indices: vec![3, 0, 3, 1], indices_shape: vec![2, 2] }, &[2, 4, 3], 5);
    }

    #[test]
    fn pads_of_every_mode() {
        for mode in [PadMode::Constant(0.0), PadMode::Constant(0.5), PadMode::Reflect, PadMode::Edge] {
            one(Op::Pad { begin: vec![0, 1, 2, 1], end: vec![0, 2, 1, 3], mode }, &[1, 2, 4, 3], 6);
        }
    }

    #[test]
    fn concat_and_split() {
        let mut b = Builder::new(7);
        let x = b.input("x", &[2, 3, 4]);
        let w = b.konst("w", &[2, 1, 4]);
        let z = b.input("z", &[2, 2, 4]);
        let c = b.one("concat", Op::Concat { axis: 1 }, &[x, w, z]);
        let parts = b.node("split", Op::Split { axis: 2, sizes: vec![1, 3] }, &[c]);
        // Only the second part of the split reaches the loss through its own output; the first
        // is an output too.
        let (g, inputs) = b.finish(&[parts[1], parts[0]]);
        check_graph(&g, &inputs, 1e-2, 1e-3, 0);
        let mut b = Builder::new(8);
        let x = b.input("x", &[3, 5]);
        let parts = b.node("split", Op::Split { axis: 0, sizes: vec![1, 2] }, &[x]);
        let (g, inputs) = b.finish(&[parts[1]]);
        check_graph(&g, &inputs, 1e-2, 1e-3, 0);
    }

    #[test]
    fn resize_nearest_and_linear_up_and_down() {
        let cases = [
            (ResizeMode::Nearest, CoordTransform::Asymmetric, NearestMode::Floor, vec![1usize, 2, 6, 8], None),
            (ResizeMode::Nearest, CoordTransform::HalfPixel, NearestMode::RoundPreferFloor, vec![1, 2, 2, 7], None),
            (ResizeMode::Linear, CoordTransform::HalfPixel, NearestMode::Floor, vec![1, 2, 7, 5], None),
            (ResizeMode::Linear, CoordTransform::AlignCorners, NearestMode::Floor, vec![1, 2, 2, 9], None),
            (ResizeMode::Linear, CoordTransform::PytorchHalfPixel, NearestMode::Floor, vec![1, 2, 6, 6], Some(vec![1.0, 1.0, 1.5, 1.5])),
        ];
        for (i, (mode, coord, nearest, out, scales)) in cases.into_iter().enumerate() {
            let op = Op::Resize { mode, coord, nearest, shape: out, scales };
            one(op, &[1, 2, 4, 4], 10 + i as u64);
        }
    }
}
