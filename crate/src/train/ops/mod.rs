//! The training form of every op: a forward that runs the FP32 kernels (so the training
//! forward is the simulation, bit for bit where the kernels are the same) and the backward next
//! to it.
//!
//! An op is built once per graph node ([`build`]), told the current constant inputs once per
//! optimizer step in which one of them changed ([`TrainOp::prepare`], with which ones: weights
//! packed there, never per frame, and not again when only a bias changed), then runs
//! [`forward`](TrainOp::forward) and [`backward`](TrainOp::backward) per frame. The tape does
//! the bookkeeping: it hands each backward the inputs as the forward read them, the outputs
//! before fake quantization, the output gradients (already through the straight-through
//! estimator) and zeroed buffers for the input gradients it wants; the op adds into them, or,
//! where [`TrainOp::overwrites_dx`] says so, gets them unzeroed and writes every element (a
//! pass over each such gradient saved: GEMM outputs, copies, elementwise ops).
//!
//! Files by family: [`conv`] (Conv, ConvTranspose), [`linear`] (Gemm, MatMul),
//! [`elementwise`] (binary with broadcasting, unary, activations, PRelu, Softmax),
//! [`pool`] (max, average, global pools, reductions), [`layout`] (Reshape, Transpose, Concat,
//! Split, Slice, Pad, Resize, Gather). Each has its finite-difference tests.

pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod linear;
pub mod pool;

use crate::ir::{Activation, Graph, Node, Op};
use crate::kernels::gemm::{PackedA, PackedB};
use crate::Result;

/// What a forward reads and writes.
pub struct Fwd<'a> {
    /// The inputs, as consumers see them (fake-quantized where annotated).
    pub x: &'a [&'a [f32]],
    /// The outputs, sized; every element must be written.
    pub y: &'a mut [Vec<f32>],
    /// The op's own saved data for its backward (reused across frames).
    pub aux: &'a mut Vec<f32>,
    pub scratch: &'a mut Scratch,
}

/// What a backward reads and writes.
pub struct Bwd<'a> {
    pub x: &'a [&'a [f32]],
    /// The outputs before fake quantization.
    pub y: &'a [&'a [f32]],
    pub aux: &'a [f32],
    /// Gradients of the outputs (zeros for an output nobody differentiates).
    pub dy: &'a [&'a [f32]],
    /// Per input: a buffer when its gradient is wanted. Ops add into it, except where
    /// [`TrainOp::overwrites_dx`] says so: that buffer is not zeroed, its contents are
    /// unspecified and the op writes every element.
    pub dx: &'a mut [Option<Vec<f32>>],
    pub scratch: &'a mut Scratch,
}

impl Bwd<'_> {
    /// The gradient buffer of input `i`, if wanted.
    pub fn dx(&mut self, i: usize) -> Option<&mut [f32]> {
        self.dx.get_mut(i).and_then(|d| d.as_deref_mut())
    }

    pub fn wants(&self, i: usize) -> bool {
        self.dx.get(i).is_some_and(|d| d.is_some())
    }
}

pub trait TrainOp {
    /// Called before the frames of a step with the data of the constant inputs (`None` for
    /// activations) when one of them changed; `changed[i]`: input `i` differs from the last
    /// call (all true at the first), so packing an unchanged weight can be skipped.
    fn prepare(&mut self, _consts: &[Option<&[f32]>], _changed: &[bool]) {}
    fn forward(&self, f: &mut Fwd);
    fn backward(&self, b: &mut Bwd);
    /// True when the backward writes every element of input `i`'s gradient instead of adding
    /// into it: the tape then skips zeroing the buffer (a pass over it).
    fn overwrites_dx(&self, _i: usize) -> bool {
        false
    }
}

/// Buffers reused across nodes and frames, so a warm step allocates nothing large.
#[derive(Default)]
pub struct Scratch {
    /// The conv kernels' scratch.
    pub conv: Vec<f32>,
    pub a: PackedA,
    pub b: PackedB,
    pub t0: Vec<f32>,
    pub t1: Vec<f32>,
    pub t2: Vec<f32>,
    pub t3: Vec<f32>,
    pub t4: Vec<f32>,
}

/// `g` where `keep`, else 0, without a branch: LLVM keeps float selects as branches, which
/// mispredict on every other element of a ReLU mask (7 ns instead of 0.5 per element).
#[inline(always)]
pub fn keep_if(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}

/// `v[..len]`, growing `v` if needed; the contents are unspecified.
pub fn buf(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `v[..len]` filled with zeros.
pub fn zeroed(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let b = buf(v, len);
    b.fill(0.0);
    b
}

/// `acc += x`.
pub fn add_into(acc: &mut [f32], x: &[f32]) {
    debug_assert_eq!(acc.len(), x.len());
    acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
}

/// The sum of `x` in eight independent lanes, so it vectorises without fast-math.
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let r = c.remainder();
    for v in c {
        for l in 0..8 {
            acc[l] += v[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for v in r {
        s += v;
    }
    s
}

/// Transposes a row-major `rows x cols` matrix into `out` (`cols x rows`).
pub fn transpose2d(a: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    crate::kernels::layout::transpose(&a[..rows * cols], &[rows, cols], &[1, 0], &mut out[..rows * cols]);
}

/// `c = op(a) · op(b)` (or `c += ...` with `accumulate`) for row-major matrices with the packed
/// GEMM: `op(a)` is `m x k` (`a` holds `k x m` when `a_t`), `op(b)` is `k x n` (`b` holds
/// `n x k` when `b_t`), `c` is `m x n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(a: &[f32], a_t: bool, b: &[f32], b_t: bool, m: usize, k: usize, n: usize, c: &mut [f32], accumulate: bool, s: &mut Scratch) {
    use crate::kernels::gemm::{gemm, GemmBias};
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    if a_t {
        transpose2d(a, k, m, buf(&mut s.t0, m * k));
        s.a.repack_from(&s.t0[..m * k], m, k, k);
    } else {
        s.a.repack_from(&a[..m * k], m, k, k);
    }
    if b_t {
        s.b.repack_transposed_from(&b[..n * k], k, n, k);
    } else {
        s.b.repack_from(&b[..k * n], k, n, n);
    }
    if accumulate {
        let t = buf(&mut s.t2, m * n);
        gemm(&s.a, &s.b, t, n, GemmBias::None, Activation::Identity);
        add_into(&mut c[..m * n], t);
    } else {
        gemm(&s.a, &s.b, &mut c[..m * n], n, GemmBias::None, Activation::Identity);
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// Strides of `shape` right-aligned to `out` (rank >= shape's), 0 on broadcast axes.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let lead = out.len() - shape.len();
    let own = strides(shape);
    (0..out.len()).map(|a| if a < lead || shape[a - lead] == 1 { 0 } else { own[a - lead] }).collect()
}

/// Calls `f(o, ia, ib)` for every flat output index `o` of `out` with the flat indices of the
/// two operands read there (strides from [`broadcast_strides`]).
pub fn for_each_broadcast(out: &[usize], sa: &[usize], sb: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let len: usize = out.iter().product();
    if len == 0 {
        return;
    }
    let rank = out.len();
    if rank == 0 {
        return f(0, 0, 0);
    }
    let (inner, ia_step, ib_step) = (out[rank - 1], sa[rank - 1], sb[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut o = 0;
    while o < len {
        for j in 0..inner {
            f(o + j, ia + j * ia_step, ib + j * ib_step);
        }
        o += inner;
        for d in (0..rank - 1).rev() {
            index[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if index[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            index[d] = 0;
        }
    }
}

/// The gradient of a fused or standalone activation: `dz = dy · act'(z)`. For the clamps
/// (`Relu`, `Clip`) the derivative is read from the output `y` instead (1 strictly inside the
/// bounds, where `y` equals `z`), so ops that fuse them need not keep `z`.
pub fn activation_backward(act: Activation, z: Option<&[f32]>, y: &[f32], dy: &[f32], dz: &mut [f32]) {
    let n = dz.len();
    let (y, dy) = (&y[..n], &dy[..n]);
    match act {
        Activation::Identity => dz.copy_from_slice(dy),
        Activation::Relu => {
            for i in 0..n {
                dz[i] = keep_if(dy[i], y[i] > 0.0);
            }
        }
        Activation::Clip { min, max } => {
            for i in 0..n {
                dz[i] = keep_if(dy[i], (y[i] > min) & (y[i] < max));
            }
        }
        _ => {
            let z = &z.expect("activations other than clamps keep their input")[..n];
            for i in 0..n {
                dz[i] = dy[i] * activation_derivative(act, z[i]);
            }
        }
    }
}

/// `act'(z)`; at kinks, the one-sided value PyTorch uses (0 at ReLU's 0, 0 on Clip bounds,
/// HardSwish `x/3 + 1/2` on `[-3, 3]`).
pub fn activation_derivative(act: Activation, z: f32) -> f32 {
    match act {
        Activation::Identity => 1.0,
        Activation::Relu => (z > 0.0) as u8 as f32,
        Activation::Clip { min, max } => (z > min && z < max) as u8 as f32,
        Activation::LeakyRelu { alpha } => {
            if z < 0.0 {
                alpha
            } else {
                1.0
            }
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + (-z).exp());
            s * (1.0 - s)
        }
        Activation::HardSigmoid { alpha, beta } => {
            let t = alpha * z + beta;
            if t > 0.0 && t < 1.0 {
                alpha
            } else {
                0.0
            }
        }
        Activation::HardSwish => {
            if z < -3.0 {
                0.0
            } else if z <= 3.0 {
                z / 3.0 + 0.5
            } else {
                1.0
            }
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-z).exp());
            s * (1.0 + z * (1.0 - s))
        }
        Activation::Tanh => {
            let t = z.tanh();
            1.0 - t * t
        }
    }
}

/// True for activations whose derivative [`activation_backward`] reads from the output.
pub fn derivable_from_output(act: Activation) -> bool {
    matches!(act, Activation::Identity | Activation::Relu | Activation::Clip { .. })
}

/// The training op of a node. `needs[i]`: input `i`'s gradient will be asked for.
pub fn build(g: &Graph, node: &Node, needs: &[bool]) -> Result<Box<dyn TrainOp>> {
    let shape = |i: usize| g.values[node.inputs[i]].shape.clone();
    let out_shape = |i: usize| g.values[node.outputs[i]].shape.clone();
    Ok(match &node.op {
        Op::Conv(_) => Box::new(conv::ConvOp::new(g, node, needs)?),
        Op::ConvTranspose(_) => Box::new(conv::ConvTransposeOp::new(g, node, needs)?),
        Op::Gemm { .. } => Box::new(linear::GemmOp::new(g, node, needs)),
        Op::MatMul => Box::new(linear::MatMulOp::new(g, node)),
        Op::Binary(op) => Box::new(elementwise::BinaryNode { op: *op, a: shape(0), b: shape(1), y: out_shape(0) }),
        Op::Unary(op) => Box::new(elementwise::UnaryNode { op: *op }),
        Op::Activation(act) => Box::new(elementwise::ActivationNode { act: *act }),
        Op::PRelu => Box::new(elementwise::PReluNode { x: shape(0), slope: shape(1) }),
        Op::Softmax { axis, log } => Box::new(elementwise::SoftmaxNode::new(&shape(0), *axis, *log)),
        Op::MaxPool { window, .. } => Box::new(pool::PoolNode::new(&shape(0), &out_shape(0), window, pool::Kind::Max)),
        Op::AveragePool { window, count_include_pad, .. } => {
            Box::new(pool::PoolNode::new(&shape(0), &out_shape(0), window, pool::Kind::Average { count_include_pad: *count_include_pad }))
        }
        Op::GlobalAveragePool => Box::new(pool::GlobalPoolNode::new(&shape(0), false)),
        Op::GlobalMaxPool => Box::new(pool::GlobalPoolNode::new(&shape(0), true)),
        Op::Reduce { op, axes, .. } => Box::new(pool::ReduceNode::new(*op, &shape(0), axes)),
        Op::Reshape { .. } => Box::new(layout::ReshapeNode),
        Op::Transpose { perm } => Box::new(layout::IndexMapNode::transpose(&shape(0), perm)),
        Op::Slice { starts, steps, .. } => Box::new(layout::IndexMapNode::slice(&shape(0), starts, steps, &out_shape(0))),
        Op::Pad { begin, end, mode } => Box::new(layout::IndexMapNode::pad(&shape(0), begin, end, *mode)),
        Op::Gather { axis, indices, .. } => Box::new(layout::IndexMapNode::gather(&shape(0), *axis, indices)),
        Op::Concat { axis } => Box::new(layout::ConcatNode::new((0..node.inputs.len()).map(shape).collect(), *axis)),
        Op::Split { axis, .. } => Box::new(layout::SplitNode::new(shape(0), (0..node.outputs.len()).map(out_shape).collect(), *axis)),
        Op::Resize { mode, coord, nearest, scales, .. } => {
            Box::new(layout::ResizeNode::new(&shape(0), &out_shape(0), scales.as_deref(), *mode, *coord, *nearest))
        }
    })
}
