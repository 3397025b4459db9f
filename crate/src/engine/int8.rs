//! The int8 engine: runs a quantized (annotated) graph with integer kernels end to end.
//!
//! # Plan
//! [`Int8Engine::new`] decides once per node how it runs, and prepares everything a run needs:
//! weights quantized from their data with their [`ChannelParams`] (the annotation's invariant
//! makes this exact) and packed, biases as i32 at scale `s_x · s_w[c]`, requantizers, lookup
//! tables, index maps. A run packs nothing.
//!
//! Values annotated `Quant::Tensor` are stored as int8 (uint8-storage parameters are converted
//! exactly, [`QuantParams::with_storage`]; widths below 8 bits clamp to their own
//! `[qmin, qmax]`); every other value is f32. A node runs with integer kernels when its
//! activation inputs and outputs are all int8 and its op has an integer form:
//! - Conv (`PackedQs8Conv2d`; a fused Relu/Clip is the output clamp), Gemm and MatMul with a
//!   constant 2-D weight (`qs8_gemm`; alpha folded into the requantizer, beta·C into the bias);
//! - Add, Sub (Add of the bitwise complement, exact: `!q = -q - 1` with zero point `-z - 1`) and
//!   Mul with any broadcast ([`Broadcast`] cuts the output into blocks where each operand is a
//!   slice or a single value: SE blocks' `[1,C,H,W]·[1,C,1,1]` are `C` blocks);
//! - MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean/ReduceMax over trailing
//!   axes;
//! - activations, unary ops and PRelu with a constant slope: a 256-entry table built from the
//!   real function (`lut_from_fn`);
//! - Concat and data movement (Reshape, Transpose, Slice, Split, Gather, Pad, nearest Resize) on
//!   the integers.
//!
//! Everything else runs in float ([`Int8Engine::float_nodes`] says which and why): quantized
//! inputs are dequantized, the FP32 kernel runs ([`PreparedNode`], weights packed once), and
//! annotated outputs are quantized. Requantizations the kernels cannot hold (a multiplier of
//! `2^29` or more, accumulators that could overflow i32 after the requantizer's left shift)
//! also fall back to float instead of panicking in a kernel.
//!
//! # Agreement with the simulation
//! The FP32 engine on the same annotated graph is the simulation (`fp32::fake_quantize`).
//! - Exact (same integers): data movement, Concat, max pools, table lookups, float fallbacks,
//!   and every change of parameters between an op's input and output (Concat inputs, data
//!   movement whose output has other parameters). Those use a table too, `quantize_f32(sx ·
//!   (q - zx))`, which is the simulation's own formula; `qs8_rescale`'s fixed-point multiplier
//!   could differ from it by one step.
//! - Within one step: Conv, Gemm/MatMul, Add/Sub/Mul and average pools, which requantize an
//!   exact integer accumulator with TFLite's fixed-point multiplier where the simulation rounds
//!   an f32 result once (see `kernels::int8`).
//!
//! A one-step difference then travels through later layers like any perturbation of their input.
//!
//! # Memory
//! As in the FP32 engine: a buffer is freed after its last reader, a Reshape whose input dies
//! moves the buffer, and kernel scratch is reused across the nodes of a run.
//!
//! # Tests
//! Small annotated graphs for every op path (odd sizes, nonzero zero points, uint8 storage,
//! 4-bit weights and activations, fused Relu6, every broadcast form) against the simulation:
//! exact where exact is claimed, within one step and mostly exact elsewhere; float fallbacks
//! and their reasons; errors instead of panics on bad annotations and extreme scales.
//! `tests/int8_engine.rs` runs the shipped models.

use std::borrow::Cow;

use crate::engine::fp32::PreparedNode;
use crate::ir::{activation_name, Activation, BinaryOp, Conv, Graph, Node, Op, PadMode, Quant, ReduceOp, ResizeMode, ValueId, Window2d};
use crate::kernels::conv::Conv2dShape;
use crate::kernels::int8::elementwise::ADD_LEFT_SHIFT;
use crate::kernels::int8::{
    channel_requantizers, lut_from_fn, qs8_add, qs8_gemm, qs8_global_avg_pool, qs8_lut, qs8_max_pool2d, qs8_mul, quantize_f32, PackedQs8Conv2d,
    PackedWeightsQs8, Qs8AddParams, Qs8AvgPool2d, Requantizer,
};
use crate::kernels::pool::Pool2dShape;
use crate::kernels::{layout, resize};
use crate::quant::params::{check_bits, ChannelParams, QuantParams};
use crate::{Error, Result};

/// The int8 form of a value's [`QuantParams`]: int8 storage, the width's integer range.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Qp {
    scale: f32,
    zero_point: i32,
    qmin: i8,
    qmax: i8,
}

impl Qp {
    /// From validated parameters.
    fn new(p: &QuantParams) -> Qp {
        let p = p.with_storage(true);
        Qp { scale: p.scale, zero_point: p.zero_point, qmin: p.qmin() as i8, qmax: p.qmax() as i8 }
    }

    /// The simulation's quantizer (`fp32::fake_quantize`) in int8 storage: the same integer
    /// shifted by the storage offset, so dequantizing gives the same f32.
    #[inline]
    fn quantize(&self, x: f32) -> i8 {
        quantize_f32(x, self.scale, self.zero_point, self.qmin as i32, self.qmax as i32) as i8
    }

    /// `scale · (q - zero_point)`, the simulation's expression bit for bit.
    #[inline]
    fn dequantize(&self, q: i8) -> f32 {
        self.scale * (q as i32 - self.zero_point) as f32
    }
}

/// A table from one quantization to another, when they differ (see the module docs).
type Rescale = Option<Box<[i8; 256]>>;

fn rescale(x: Qp, y: Qp) -> Rescale {
    (x != y).then(|| Box::new(lut_from_fn(|v| v, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax)))
}

fn lut_in_place(x: &mut [i8], lut: &[i8; 256]) {
    x.iter_mut().for_each(|v| *v = lut[*v as u8 as usize]);
}

/// The output clamp and zero point of a kernel.
#[derive(Clone, Copy, Debug)]
struct Clamp {
    zero_point: i32,
    qmin: i8,
    qmax: i8,
}

/// How two operands broadcast to an output: `outer` blocks of `inner` output elements, in each
/// of which an operand is a contiguous slice of `inner` values (`*_len == inner`) or a single
/// value (`*_len == 1`). Same shapes are one block; a per-channel operand of NCHW is one block
/// per channel.
#[derive(Clone, Debug)]
struct Broadcast {
    inner: usize,
    a_len: usize,
    b_len: usize,
    /// The outer axes and each operand's strides along them (0 where it is broadcast).
    outer: Vec<usize>,
    a_strides: Vec<usize>,
    b_strides: Vec<usize>,
}

impl Broadcast {
    /// For shapes that broadcast (numpy rules) to `out`.
    fn new(a: &[usize], b: &[usize], out: &[usize]) -> Broadcast {
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            /// Only axes of size 1 so far: either.
            Any,
            Slice,
            Single,
        }
        let rank = out.len();
        let align = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
        let (a, b) = (align(a), align(b));
        let kind = |x: usize, o: usize| match (o, x == o) {
            (1, _) => Kind::Any,
            (_, true) => Kind::Slice,
            _ => Kind::Single,
        };
        let merge = |k: Kind, n: Kind| match (k, n) {
            (k, Kind::Any) => Some(k),
            (Kind::Any, n) => Some(n),
            (k, n) => (k == n).then_some(k),
        };
        // The longest run of trailing axes over which each operand keeps one kind.
        let (mut ka, mut kb, mut split, mut inner) = (Kind::Any, Kind::Any, rank, 1);
        while split > 0 {
            let d = split - 1;
            match (merge(ka, kind(a[d], out[d])), merge(kb, kind(b[d], out[d]))) {
                (Some(x), Some(y)) => (ka, kb, inner, split) = (x, y, inner * out[d], d),
                _ => break,
            }
        }
        let strides = |s: &[usize]| -> Vec<usize> {
            let mut st = vec![0; rank];
            let mut acc = 1;
            for d in (0..rank).rev() {
                st[d] = if s[d] == 1 { 0 } else { acc };
                acc *= s[d];
            }
            st.truncate(split);
            st
        };
        let len = |k: Kind| if k == Kind::Single { 1 } else { inner };
        Broadcast { inner, a_len: len(ka), b_len: len(kb), outer: out[..split].to_vec(), a_strides: strides(&a), b_strides: strides(&b) }
    }

    /// Calls `f(out_offset, a_offset, b_offset)` for each block, in output order.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let blocks: usize = self.outer.iter().product();
        if blocks == 0 || self.inner == 0 {
            return;
        }
        let mut index = vec![0; self.outer.len()];
        let (mut ia, mut ib) = (0, 0);
        for block in 0..blocks {
            f(block * self.inner, ia, ib);
            // Odometer over the outer axes, innermost first.
            for d in (0..self.outer.len()).rev() {
                index[d] += 1;
                ia += self.a_strides[d];
                ib += self.b_strides[d];
                if index[d] < self.outer[d] {
                    break;
                }
                index[d] = 0;
                ia -= self.a_strides[d] * self.outer[d];
                ib -= self.b_strides[d] * self.outer[d];
            }
        }
    }
}

/// How one node runs.
enum Exec {
    Float {
        prepared: PreparedNode,
        why: String,
    },
    Conv(Box<PackedQs8Conv2d>),
    /// Gemm, or MatMul with a constant 2-D weight: `[m][k]` input (`[k][m]` when `trans_a`).
    Gemm {
        w: PackedWeightsQs8,
        requant: Vec<Requantizer>,
        trans_a: bool,
        m: usize,
        k: usize,
        out: Clamp,
    },
    Add {
        params: Qs8AddParams,
        broadcast: Broadcast,
        complement_b: bool,
    },
    Mul {
        requant: Requantizer,
        zero_points: [i32; 2],
        broadcast: Broadcast,
        out: Clamp,
    },
    Lut(Box<[i8; 256]>),
    /// One table per distinct slope value; `slope_lut[i]` is the table of slope element `i`.
    PRelu {
        luts: Vec<[i8; 256]>,
        slope_lut: Vec<u16>,
        broadcast: Broadcast,
    },
    MaxPool {
        shape: Pool2dShape,
        rescale: Rescale,
    },
    AvgPool(Box<Qs8AvgPool2d>),
    /// GlobalAveragePool and ReduceMean over trailing axes.
    GlobalAvg {
        channels: usize,
        spatial: usize,
        x: Qp,
        y: Qp,
    },
    /// GlobalMaxPool and ReduceMax over trailing axes.
    GlobalMax {
        channels: usize,
        spatial: usize,
        rescale: Rescale,
    },
    Concat {
        rescale: Vec<Rescale>,
    },
    /// Reshape, Transpose, Slice, Split, Gather, Pad: the op moves integers. Pad rescales its
    /// input first (`pre`) and pads with `pad`, the others rescale their outputs (`post`).
    Move {
        pre: Rescale,
        post: Vec<Rescale>,
        pad: PadMode<i8>,
    },
    /// Nearest Resize as a gather: output element `i` is input element `source[i]`.
    ResizeNearest {
        source: Vec<u32>,
        rescale: Rescale,
    },
}

struct Step {
    node: usize,
    exec: Exec,
}

/// What `run_observed` calls with each computed value.
type Observer<'a> = &'a mut dyn FnMut(ValueId, &[f32]);

/// A value during a run.
enum Buf {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// Reused across the nodes of a run.
#[derive(Default)]
struct Scratch {
    /// The int8 kernels' packing space.
    kernel: Vec<i8>,
    /// Transposed Gemm inputs, complemented Sub operands.
    tmp: Vec<i8>,
    /// The FP32 kernels' scratch.
    f32: Vec<f32>,
    /// Dequantized values for the observer.
    observed: Vec<f32>,
}

pub struct Int8Engine {
    graph: Graph,
    /// Per value: its int8 parameters when it is stored as int8 (`Quant::Tensor`).
    qparams: Vec<Option<Qp>>,
    /// Per value: the integers of a constant annotated `Quant::Tensor`.
    const_q: Vec<Option<Vec<i8>>>,
    steps: Vec<Step>,
    /// For each value, the index of the last step that reads it (usize::MAX: a graph output).
    last_use: Vec<usize>,
}

impl Int8Engine {
    /// Plans `graph` (see the module docs). Errors on a graph that does not validate and on
    /// invalid annotations; nodes without an integer form run in float, never fail here.
    pub fn new(graph: Graph) -> Result<Int8Engine> {
        graph.validate()?;
        let n = graph.values.len();
        let mut qparams = vec![None; n];
        let mut const_q = vec![None; n];
        for (id, v) in graph.values.iter().enumerate() {
            let bad = |msg: String| Error::Tensor { name: v.name.clone(), msg };
            if let Some(d) = &v.data {
                if d.len() != v.len() {
                    return Err(bad(format!("has {} values, shape {:?} needs {}", d.len(), v.shape, v.len())));
                }
            }
            match &v.quant {
                Some(Quant::Tensor(p)) => {
                    p.validate().map_err(|e| bad(e.to_string()))?;
                    let qp = Qp::new(p);
                    if let Some(d) = &v.data {
                        const_q[id] = Some(d.iter().map(|&x| qp.quantize(x)).collect());
                    }
                    qparams[id] = Some(qp);
                }
                // A weight annotation on a computed value means nothing to the simulation
                // either: the value stays f32.
                Some(Quant::Weight(c)) if v.is_const() => check_channel_params(c, &v.shape).map_err(bad)?,
                _ => {}
            }
        }
        let steps = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let exec = plan_int(&graph, &qparams, node).unwrap_or_else(|why| Exec::Float { prepared: PreparedNode::new(&graph, node), why });
                Step { node: i, exec }
            })
            .collect::<Vec<_>>();
        let mut last_use = vec![0usize; n];
        for (s, step) in steps.iter().enumerate() {
            for &i in &graph.nodes[step.node].inputs {
                last_use[i] = s;
            }
        }
        for &o in &graph.outputs {
            last_use[o] = usize::MAX;
        }
        Ok(Int8Engine { graph, qparams, const_q, steps, last_use })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The nodes that run in float: (node name, op, why).
    pub fn float_nodes(&self) -> Vec<(String, String, String)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.exec {
                Exec::Float { why, .. } => {
                    let node = &self.graph.nodes[s.node];
                    Some((node.name.clone(), node.op.name().to_string(), why.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Runs the graph on one f32 tensor per graph input (quantized here when the input is
    /// annotated); returns each output as f32 (dequantized when it is int8).
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        self.execute(inputs, None)
    }

    /// Like [`run`](Self::run), calling `observe(value, data)` for every value a node computes,
    /// in execution order, with int8 values dequantized (per-layer error measurements use this).
    pub fn run_observed(&self, inputs: &[&[f32]], observe: &mut dyn FnMut(ValueId, &[f32])) -> Result<Vec<Vec<f32>>> {
        self.execute(inputs, Some(observe))
    }

    fn execute(&self, inputs: &[&[f32]], mut observe: Option<Observer>) -> Result<Vec<Vec<f32>>> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Invalid(format!("the model takes {} inputs, {} were given", g.inputs.len(), inputs.len())));
        }
        let mut buffers: Vec<Option<Buf>> = (0..g.values.len()).map(|_| None).collect();
        for (&id, data) in g.inputs.iter().zip(inputs) {
            let v = &g.values[id];
            if data.len() != v.len() {
                return Err(Error::Input { name: v.name.clone(), msg: format!("has {} values, shape {:?} needs {}", data.len(), v.shape, v.len()) });
            }
            buffers[id] = Some(self.store(id, Cow::Borrowed(data)));
        }
        let mut scratch = Scratch::default();
        for (s, step) in self.steps.iter().enumerate() {
            let node = &g.nodes[step.node];
            let outputs = match self.take_movable(s, node, &mut buffers) {
                Some(buf) => vec![buf],
                None => self.run_step(step, node, &buffers, &mut scratch)?,
            };
            for (&o, buf) in node.outputs.iter().zip(outputs) {
                if let Some(observe) = observe.as_mut() {
                    match (&buf, self.qparams[o]) {
                        (Buf::I8(q), Some(qp)) => {
                            scratch.observed.clear();
                            scratch.observed.extend(q.iter().map(|&v| qp.dequantize(v)));
                            observe(o, &scratch.observed);
                        }
                        (Buf::F32(d), _) => observe(o, d),
                        (Buf::I8(_), None) => unreachable!("int8 buffers have parameters"),
                    }
                }
                buffers[o] = Some(buf);
            }
            for &i in &node.inputs {
                if self.last_use[i] == s {
                    buffers[i] = None;
                }
            }
        }
        g.outputs
            .iter()
            .map(|&o| match (g.const_data(o), &buffers[o]) {
                (Some(d), _) => Ok(d.to_vec()),
                (None, Some(Buf::F32(d))) => Ok(d.clone()),
                (None, Some(Buf::I8(q))) => {
                    let qp = self.qparams[o].expect("int8 buffers have parameters");
                    Ok(q.iter().map(|&v| qp.dequantize(v)).collect())
                }
                (None, None) => Err(Error::Invalid(format!("graph output '{}' was not computed", g.values[o].name))),
            })
            .collect()
    }

    /// A computed f32 tensor in the storage of value `id`.
    fn store(&self, id: ValueId, data: Cow<[f32]>) -> Buf {
        match self.qparams[id] {
            Some(qp) => Buf::I8(data.iter().map(|&x| qp.quantize(x)).collect()),
            None => Buf::F32(data.into_owned()),
        }
    }

    /// The buffer of a Reshape's input when this step is its last reader and the output keeps
    /// its storage: the data does not move.
    fn take_movable(&self, s: usize, node: &Node, buffers: &mut [Option<Buf>]) -> Option<Buf> {
        if !matches!(node.op, Op::Reshape { .. }) {
            return None;
        }
        let (x, y) = (node.inputs[0], node.outputs[0]);
        let same_storage = match (&buffers[x], self.qparams[x], self.qparams[y]) {
            (Some(Buf::I8(_)), Some(px), Some(py)) => px == py,
            (Some(Buf::F32(_)), _, None) => true,
            _ => false,
        };
        (same_storage && self.last_use[x] == s).then(|| buffers[x].take()).flatten()
    }

    /// Input `i` of `node` as int8 (the plan only asks this of int8 values).
    fn q_arg<'a>(&'a self, buffers: &'a [Option<Buf>], node: &Node, i: usize) -> Result<&'a [i8]> {
        let v = node.inputs[i];
        if let Some(q) = &self.const_q[v] {
            return Ok(q);
        }
        match &buffers[v] {
            Some(Buf::I8(q)) => Ok(q),
            _ => Err(Error::node(&node.name, node.op.name(), format!("internal: '{}' is not available as int8", self.graph.values[v].name))),
        }
    }

    /// Input `i` of `node` as f32, dequantized if it is int8.
    fn f_arg<'a>(&'a self, buffers: &'a [Option<Buf>], node: &Node, i: usize) -> Result<Cow<'a, [f32]>> {
        let v = node.inputs[i];
        if let Some(d) = self.graph.const_data(v) {
            return Ok(Cow::Borrowed(d));
        }
        match (&buffers[v], self.qparams[v]) {
            (Some(Buf::F32(d)), _) => Ok(Cow::Borrowed(d)),
            (Some(Buf::I8(q)), Some(qp)) => Ok(Cow::Owned(q.iter().map(|&x| qp.dequantize(x)).collect())),
            _ => Err(Error::node(&node.name, node.op.name(), format!("internal: '{}' is not available", self.graph.values[v].name))),
        }
    }

    fn run_step(&self, step: &Step, node: &Node, buffers: &[Option<Buf>], scratch: &mut Scratch) -> Result<Vec<Buf>> {
        let g = &self.graph;
        let shape = |i: usize| g.values[node.inputs[i]].shape.as_slice();
        let out_shape = |i: usize| g.values[node.outputs[i]].shape.as_slice();
        let out_len = |i: usize| g.values[node.outputs[i]].len();
        let q = |i: usize| self.q_arg(buffers, node, i);
        let Scratch { kernel, tmp, f32: fscratch, .. } = scratch;
        let mut y = vec![0i8; if matches!(step.exec, Exec::Float { .. }) { 0 } else { out_len(0) }];
        match &step.exec {
            Exec::Float { prepared, .. } => {
                let args = (0..node.inputs.len()).map(|i| self.f_arg(buffers, node, i)).collect::<Result<Vec<_>>>()?;
                let refs: Vec<&[f32]> = args.iter().map(|a| a.as_ref()).collect();
                let outs = prepared.run(g, node, &refs, fscratch)?;
                return Ok(outs.into_iter().zip(&node.outputs).map(|(d, &o)| self.store(o, Cow::Owned(d))).collect());
            }
            Exec::Conv(conv) => {
                let (x, xs, ys) = (q(0)?, shape(0), out_shape(0));
                let (per_x, per_y) = (xs[1..].iter().product::<usize>(), ys[1..].iter().product::<usize>());
                for n in 0..xs[0] {
                    conv.run(&x[n * per_x..][..per_x], &mut y[n * per_y..][..per_y], kernel);
                }
            }
            Exec::Gemm { w, requant, trans_a, m, k, out } => {
                let x = q(0)?;
                let a: &[i8] = if *trans_a {
                    tmp.resize(x.len(), 0);
                    layout::transpose(x, &[*k, *m], &[1, 0], tmp);
                    tmp
                } else {
                    x
                };
                let n = w.n();
                qs8_gemm(a, *m, *k, w, requant, out.zero_point, out.qmin, out.qmax, &mut y, n, kernel);
            }
            Exec::Add { params, broadcast: bc, complement_b } => {
                let (a, mut b) = (q(0)?, q(1)?);
                if *complement_b {
                    tmp.clear();
                    tmp.extend(b.iter().map(|v| !v));
                    b = tmp;
                }
                bc.for_each(|o, ia, ib| qs8_add(&a[ia..][..bc.a_len], &b[ib..][..bc.b_len], params, &mut y[o..][..bc.inner]));
            }
            Exec::Mul { requant, zero_points: [za, zb], broadcast: bc, out } => {
                let (a, b) = (q(0)?, q(1)?);
                bc.for_each(|o, ia, ib| {
                    let (a, b) = (&a[ia..][..bc.a_len], &b[ib..][..bc.b_len]);
                    qs8_mul(a, *za, b, *zb, requant, out.zero_point, out.qmin, out.qmax, &mut y[o..][..bc.inner])
                });
            }
            Exec::Lut(lut) => qs8_lut(q(0)?, lut, &mut y),
            Exec::PRelu { luts, slope_lut, broadcast: bc } => {
                let x = q(0)?;
                bc.for_each(|o, ix, is| {
                    let (x, y) = (&x[ix..][..bc.inner], &mut y[o..][..bc.inner]);
                    if bc.b_len == 1 {
                        qs8_lut(x, &luts[slope_lut[is] as usize], y);
                    } else {
                        for ((y, &x), &t) in y.iter_mut().zip(x).zip(&slope_lut[is..][..bc.inner]) {
                            *y = luts[t as usize][x as u8 as usize];
                        }
                    }
                });
            }
            Exec::MaxPool { shape: s, rescale } => {
                qs8_max_pool2d(s, q(0)?, &mut y);
                if let Some(t) = rescale {
                    lut_in_place(&mut y, t);
                }
            }
            Exec::AvgPool(pool) => pool.run(q(0)?, &mut y),
            Exec::GlobalAvg { channels, spatial, x, y: py } => {
                qs8_global_avg_pool(*channels, *spatial, q(0)?, x.scale, x.zero_point, py.scale, py.zero_point, py.qmin, py.qmax, &mut y)
            }
            Exec::GlobalMax { channels, spatial, rescale } => {
                let x = q(0)?;
                // An empty plane is -128 here and -inf in float; the rescale table clamps it.
                y.fill(i8::MIN);
                if *spatial > 0 {
                    for (o, plane) in y.iter_mut().zip(x.chunks_exact(*spatial)).take(*channels) {
                        *o = plane.iter().copied().fold(i8::MIN, i8::max);
                    }
                }
                if let Some(t) = rescale {
                    lut_in_place(&mut y, t);
                }
            }
            Exec::Concat { rescale } => {
                let Op::Concat { axis } = node.op else { unreachable!("planned for Concat") };
                let mut rescaled: Vec<Cow<[i8]>> = Vec::with_capacity(rescale.len());
                for (i, r) in rescale.iter().enumerate() {
                    let x = q(i)?;
                    rescaled.push(match r {
                        Some(t) => {
                            let mut v = vec![0i8; x.len()];
                            qs8_lut(x, t, &mut v);
                            Cow::Owned(v)
                        }
                        None => Cow::Borrowed(x),
                    });
                }
                let parts: Vec<(&[i8], &[usize])> = rescaled.iter().enumerate().map(|(i, x)| (x.as_ref(), shape(i))).collect();
                layout::concat(&parts, axis, &mut y);
            }
            Exec::Move { pre, post, pad } => {
                let mut x = q(0)?;
                if let Some(t) = pre {
                    tmp.resize(x.len(), 0);
                    qs8_lut(x, t, tmp);
                    x = tmp;
                }
                let xs = shape(0);
                let mut outs = vec![y];
                match &node.op {
                    Op::Reshape { .. } => outs[0].copy_from_slice(x),
                    Op::Transpose { perm } => layout::transpose(x, xs, perm, &mut outs[0]),
                    Op::Slice { starts, steps, .. } => layout::slice(x, xs, starts, steps, &mut outs[0], out_shape(0)),
                    Op::Gather { axis, indices, .. } => layout::gather(x, xs, *axis, indices, &mut outs[0]),
                    Op::Pad { begin, end, .. } => layout::pad(x, xs, begin, end, *pad, &mut outs[0]),
                    Op::Split { axis, sizes } => {
                        outs.extend((1..node.outputs.len()).map(|i| vec![0i8; out_len(i)]));
                        let mut views: Vec<&mut [i8]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                        layout::split(x, xs, *axis, sizes, &mut views);
                    }
                    _ => unreachable!("planned as data movement"),
                }
                for (out, r) in outs.iter_mut().zip(post) {
                    if let Some(t) = r {
                        lut_in_place(out, t);
                    }
                }
                return Ok(outs.into_iter().map(Buf::I8).collect());
            }
            Exec::ResizeNearest { source, rescale } => {
                let x = q(0)?;
                for (o, &i) in y.iter_mut().zip(source) {
                    *o = x[i as usize];
                }
                if let Some(t) = rescale {
                    lut_in_place(&mut y, t);
                }
            }
        }
        Ok(vec![Buf::I8(y)])
    }
}

/// Checks a weight annotation against its tensor (the kernels would panic on a bad one).
fn check_channel_params(c: &ChannelParams, shape: &[usize]) -> std::result::Result<(), String> {
    check_bits(c.bits).map_err(|e| e.to_string())?;
    if let Some(s) = c.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(format!("weight scale {s} is not a finite positive number"));
    }
    match c.scales.len() {
        0 => Err("weight quantization has no scale".into()),
        1 => Ok(()),
        n if c.axis < shape.len() && shape[c.axis] == n => Ok(()),
        n => Err(format!("{n} weight scales along axis {} do not fit shape {shape:?}", c.axis)),
    }
}

/// The output clamp of a kernel with a fused activation: Relu and Clip commute with the
/// (monotonic) quantizer, so they are the quantized bounds; others have no integer form here.
fn fused_clamp(act: Activation, y: Qp) -> std::result::Result<Clamp, String> {
    let (lo, hi) = match act {
        Activation::Identity => return Ok(Clamp { zero_point: y.zero_point, qmin: y.qmin, qmax: y.qmax }),
        Activation::Relu => (0.0, f32::INFINITY),
        Activation::Clip { min, max } if !min.is_nan() && !max.is_nan() => (min, max),
        other => return Err(format!("the fused {} does not fold into the output clamp", activation_name(other))),
    };
    let (qlo, qhi) = (y.quantize(lo), y.quantize(hi));
    // Clip with min > max gives max everywhere, as `clamp` does.
    Ok(Clamp { zero_point: y.zero_point, qmin: qlo.min(qhi), qmax: qhi })
}

/// `Requantizer::from_real(m)`, or why the kernels cannot use it: `m` must be below
/// `MAX_REAL`, and every accumulator up to `max_acc` in magnitude must stay inside i32 after
/// the requantizer's left shift (the kernels wrap there, and debug builds panic).
fn requantizer(m: f64, max_acc: i64) -> std::result::Result<Requantizer, String> {
    if !(m.is_finite() && (0.0..Requantizer::MAX_REAL).contains(&m)) {
        return Err(format!("requantization multiplier {m:e} is out of range"));
    }
    let rq = Requantizer::from_real(m);
    check_shift(&rq, max_acc)?;
    Ok(rq)
}

fn check_shift(rq: &Requantizer, max_acc: i64) -> std::result::Result<(), String> {
    if max_acc.saturating_mul(1i64 << rq.shift().max(0)) > i32::MAX as i64 {
        return Err(format!("requantization multiplier {:e} overflows int32 accumulators", rq.real()));
    }
    Ok(())
}

/// The integers of a constant weight and the scale of each of its `shape[channel_axis]` output
/// channels, or why it is not an int8 weight.
fn weight_q(g: &Graph, v: ValueId, channel_axis: usize) -> std::result::Result<(Vec<i8>, Vec<f32>), String> {
    let value = &g.values[v];
    let data = value.data.as_deref().ok_or_else(|| format!("the weight '{}' is computed at run time", value.name))?;
    let channels = value.shape[channel_axis];
    match &value.quant {
        Some(Quant::Weight(c)) => {
            if !c.is_per_tensor() && c.axis != channel_axis {
                return Err(format!("the weight is quantized per channel along axis {}, not along its output channels (axis {channel_axis})", c.axis));
            }
            let qmax = c.qmax();
            let inner: usize = value.shape[channel_axis + 1..].iter().product();
            let q = data.iter().enumerate().map(|(i, &x)| quantize_f32(x, c.scale((i / inner.max(1)) % channels.max(1)), 0, -qmax, qmax) as i8).collect();
            Ok((q, (0..channels).map(|ch| c.scale(ch)).collect()))
        }
        Some(Quant::Tensor(p)) => {
            let qp = Qp::new(p);
            if qp.zero_point != 0 {
                return Err(format!("the weight has zero point {} (int8 weights are symmetric)", qp.zero_point));
            }
            Ok((data.iter().map(|&x| qp.quantize(x)).collect(), vec![qp.scale; channels]))
        }
        None => Err(format!("the weight '{}' is not quantized", value.name)),
    }
}

/// `round(b / acc_scale)` in i32, the bias of an accumulator at `acc_scale`: in f32 with ties
/// to even, as `quant::ptq::bias_integers` computes the integers it snaps biases to.
fn bias_q(b: f32, acc_scale: f32) -> std::result::Result<i64, String> {
    let q = (b / acc_scale).round_ties_even();
    if !(q.is_finite() && q.abs() <= i32::MAX as f32) {
        return Err(format!("bias {b} does not fit int32 at scale {acc_scale:e}"));
    }
    Ok(q as i64)
}

/// The i32 biases of weights `[n][k]` with real biases `bias` at `acc_scales[c]`, checking that
/// no accumulator of channel `c` overflows with `requant[c]`.
fn channel_biases(wq: &[i8], k: usize, bias: Option<&[f32]>, acc_scales: &[f32], zx: i32, requant: &[Requantizer]) -> std::result::Result<Vec<i32>, String> {
    let mut out = Vec::with_capacity(acc_scales.len());
    for (c, &acc_scale) in acc_scales.iter().enumerate() {
        let b = match bias {
            Some(b) => bias_q(b[c], acc_scale)?,
            None => 0,
        };
        let row = &wq[c * k..][..k];
        let sum: i64 = row.iter().map(|&w| w as i64).sum();
        let abs_sum: i64 = row.iter().map(|&w| (w as i64).abs()).sum();
        // The packers fold the zero point into the bias; inputs then are in [-128, 127].
        check_shift(&requant[c], (b - zx as i64 * sum).abs() + 128 * abs_sum)?;
        out.push(b as i32);
    }
    Ok(out)
}

fn conv_shape(g: &Graph, node: &Node, w: &Window2d, group: usize) -> Conv2dShape {
    let x = &g.values[node.inputs[0]].shape;
    let y = &g.values[node.outputs[0]].shape;
    Conv2dShape {
        in_c: x[1],
        in_h: x[2],
        in_w: x[3],
        out_c: y[1],
        out_h: y[2],
        out_w: y[3],
        kernel_h: w.kernel[0],
        kernel_w: w.kernel[1],
        stride_h: w.strides[0],
        stride_w: w.strides[1],
        dilation_h: w.dilations[0],
        dilation_w: w.dilations[1],
        pad_top: w.pads[0],
        pad_left: w.pads[1],
        group,
    }
}

fn pool_shape(x: &[usize], y: &[usize], w: &Window2d) -> Pool2dShape {
    Pool2dShape {
        channels: x[0] * x[1],
        in_h: x[2],
        in_w: x[3],
        out_h: y[2],
        out_w: y[3],
        kernel_h: w.kernel[0],
        kernel_w: w.kernel[1],
        stride_h: w.strides[0],
        stride_w: w.strides[1],
        dilation_h: w.dilations[0],
        dilation_w: w.dilations[1],
        pad_top: w.pads[0],
        pad_left: w.pads[1],
        pad_bottom: w.pads[2],
        pad_right: w.pads[3],
    }
}

/// The integer form of `node`, or why it runs in float.
fn plan_int(g: &Graph, qparams: &[Option<Qp>], node: &Node) -> std::result::Result<Exec, String> {
    let supported = match &node.op {
        Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::Activation(_) | Op::Unary(_) | Op::PRelu => true,
        Op::Binary(op) => matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul),
        Op::MaxPool { .. } | Op::AveragePool { .. } | Op::GlobalAveragePool | Op::GlobalMaxPool | Op::Concat { .. } => true,
        Op::Reduce { op, .. } => matches!(op, ReduceOp::Mean | ReduceOp::Max),
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::Split { .. } | Op::Gather { .. } | Op::Pad { .. } => true,
        Op::Resize { mode, .. } => *mode == ResizeMode::Nearest,
        Op::ConvTranspose(_) | Op::Softmax { .. } => false,
    };
    if !supported {
        return Err(match &node.op {
            Op::Resize { .. } => "linear Resize has no int8 kernel".into(),
            op => format!("{} has no int8 kernel", op.name()),
        });
    }
    if node.outputs.is_empty() {
        return Err("the node has no output".into());
    }
    // Shape inference accepts a dilation of 0 (a window of one tap); the kernels assert.
    if let Op::Conv(Conv { window: w, .. }) | Op::MaxPool { window: w, .. } | Op::AveragePool { window: w, .. } = &node.op {
        if w.kernel.iter().chain(&w.strides).chain(&w.dilations).any(|&v| v == 0) {
            return Err(format!("window {w:?} has a zero size, stride or dilation"));
        }
    }
    let value_q = |v: ValueId, what: &str| qparams[v].ok_or_else(|| format!("{what} '{}' is not quantized", g.values[v].name));
    let input = |i: usize| value_q(node.inputs[i], "input");
    let outs = node.outputs.iter().map(|&o| value_q(o, "output")).collect::<std::result::Result<Vec<_>, _>>()?;
    let y = outs[0];
    let shape = |v: ValueId| g.values[v].shape.as_slice();
    let (xs, ys) = (shape(node.inputs[0]), shape(node.outputs[0]));
    let x = input(0)?;
    // Ops whose other inputs are constants read as f32 (weights, biases, slopes) check them
    // themselves; every input of the rest is int8.
    if !matches!(node.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::PRelu) {
        for i in 1..node.inputs.len() {
            input(i)?;
        }
    }
    let table = |f: &dyn Fn(f32) -> f32| Box::new(lut_from_fn(f, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax));
    Ok(match &node.op {
        Op::Conv(c) => {
            let out = fused_clamp(c.activation, y)?;
            let s = conv_shape(g, node, &c.window, c.group);
            let (wq, sw) = weight_q(g, node.inputs[1], 0)?;
            let bias = match node.inputs.get(2) {
                Some(&b) => Some(g.const_data(b).ok_or_else(|| format!("the bias '{}' is computed at run time", g.values[b].name))?),
                None => None,
            };
            let multipliers: Vec<f64> = sw.iter().map(|&s| x.scale as f64 * s as f64 / y.scale as f64).collect();
            if let Some(m) = multipliers.iter().find(|m| !(m.is_finite() && **m < Requantizer::MAX_REAL)) {
                return Err(format!("requantization multiplier {m:e} is out of range"));
            }
            let requant = channel_requantizers(x.scale, &sw, y.scale);
            let acc_scales: Vec<f32> = sw.iter().map(|&s| x.scale * s).collect();
            let k = wq.len() / s.out_c.max(1);
            let bq = channel_biases(&wq, k, bias, &acc_scales, x.zero_point, &requant)?;
            Exec::Conv(Box::new(PackedQs8Conv2d::new(s, &wq, Some(&bq), x.zero_point, requant, out.zero_point, out.qmin, out.qmax)))
        }
        Op::Gemm { trans_a, trans_b, alpha, beta, activation } => {
            let out = fused_clamp(*activation, y)?;
            let (m, k) = if *trans_a { (xs[1], xs[0]) } else { (xs[0], xs[1]) };
            let n = ys[1];
            if !(alpha.is_finite() && *alpha != 0.0) {
                return Err(format!("alpha {alpha} has no int8 form"));
            }
            let (mut wq, sw) = weight_q(g, node.inputs[1], if *trans_b { 0 } else { 1 })?;
            if !*trans_b {
                wq = transpose2d(&wq, k, n);
            }
            if *alpha < 0.0 {
                wq = wq.iter().map(|w| w.checked_neg()).collect::<Option<_>>().ok_or("the weight holds -128, which a negative alpha cannot negate")?;
            }
            // C broadcast along rows is a per-column bias; other C shapes need float.
            let bias = match node.inputs.get(2) {
                None => None,
                Some(&c) => {
                    let data = g.const_data(c).ok_or_else(|| format!("C '{}' is computed at run time", g.values[c].name))?;
                    let per_col = shape(c).iter().rev().skip(1).all(|&d| d == 1) && (data.len() == n || data.len() == 1);
                    if !per_col {
                        return Err(format!("C of shape {:?} is not a per-column bias", shape(c)));
                    }
                    Some((0..n).map(|j| beta * data[if data.len() == 1 { 0 } else { j }]).collect::<Vec<f32>>())
                }
            };
            // alpha scales the accumulator (its sign went into the weights).
            let requant = sw
                .iter()
                .map(|&s| requantizer(x.scale as f64 * s as f64 * alpha.abs() as f64 / y.scale as f64, 0))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let acc_scales: Vec<f32> = sw.iter().map(|&s| x.scale * s * alpha.abs()).collect();
            let bq = channel_biases(&wq, k, bias.as_deref(), &acc_scales, x.zero_point, &requant)?;
            let w = PackedWeightsQs8::new(&wq, n, k, Some(&bq), x.zero_point);
            Exec::Gemm { w, requant, trans_a: *trans_a, m, k, out }
        }
        Op::MatMul => {
            let b = node.inputs[1];
            if shape(b).len() != 2 {
                return Err(format!("the weight '{}' is not a constant 2-D matrix", g.values[b].name));
            }
            let (k, n) = (shape(b)[0], shape(b)[1]);
            let m: usize = xs[..xs.len() - 1].iter().product();
            let (wq, sw) = weight_q(g, b, 1)?;
            let multipliers: Vec<f64> = sw.iter().map(|&s| x.scale as f64 * s as f64 / y.scale as f64).collect();
            if let Some(m) = multipliers.iter().find(|m| !(m.is_finite() && **m < Requantizer::MAX_REAL)) {
                return Err(format!("requantization multiplier {m:e} is out of range"));
            }
            let requant = channel_requantizers(x.scale, &sw, y.scale);
            let wq = transpose2d(&wq, k, n);
            let bq = channel_biases(&wq, k, None, &vec![1.0; n], x.zero_point, &requant)?;
            let w = PackedWeightsQs8::new(&wq, n, k, Some(&bq), x.zero_point);
            Exec::Gemm { w, requant, trans_a: false, m, k, out: Clamp { zero_point: y.zero_point, qmin: y.qmin, qmax: y.qmax } }
        }
        Op::Binary(op) => {
            let b = input(1)?;
            let broadcast = Broadcast::new(xs, shape(node.inputs[1]), ys);
            if *op == BinaryOp::Mul {
                // |(a - za) · (b - zb)| <= 255².
                let requant = requantizer(x.scale as f64 * b.scale as f64 / y.scale as f64, 255 * 255)?;
                Exec::Mul { requant, zero_points: [x.zero_point, b.zero_point], broadcast, out: Clamp { zero_point: y.zero_point, qmin: y.qmin, qmax: y.qmax } }
            } else {
                let complement_b = *op == BinaryOp::Sub;
                let zb = if complement_b { -b.zero_point - 1 } else { b.zero_point };
                // The output requantizer of `Qs8AddParams` sees sums of two inputs rescaled by
                // at most 1/2 with ADD_LEFT_SHIFT fractional bits.
                let twice_max = 2.0 * x.scale.max(b.scale) as f64;
                requantizer(twice_max / ((1u64 << ADD_LEFT_SHIFT) as f64 * y.scale as f64), (255 << ADD_LEFT_SHIFT) + 2)?;
                let params = Qs8AddParams::new(x.scale, x.zero_point, b.scale, zb, y.scale, y.zero_point, y.qmin, y.qmax);
                Exec::Add { params, broadcast, complement_b }
            }
        }
        Op::Activation(act) => Exec::Lut(table(&|v| act.apply_scalar(v))),
        Op::Unary(op) => Exec::Lut(table(&|v| op.apply_scalar(v))),
        Op::PRelu => {
            let s = node.inputs[1];
            let slope = g.const_data(s).ok_or_else(|| format!("the slope '{}' is computed at run time", g.values[s].name))?;
            // Tables from the f32 slopes themselves: the simulation multiplies by those.
            let mut distinct: Vec<u32> = slope.iter().map(|v| v.to_bits()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() > 256 {
                return Err(format!("{} distinct slopes (int8 PRelu uses one table per slope, at most 256)", distinct.len()));
            }
            let luts = distinct
                .iter()
                .map(|&bits| {
                    let a = f32::from_bits(bits);
                    lut_from_fn(|v| if v < 0.0 { v * a } else { v }, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax)
                })
                .collect();
            let slope_lut = slope.iter().map(|v| distinct.binary_search(&v.to_bits()).expect("listed") as u16).collect();
            Exec::PRelu { luts, slope_lut, broadcast: Broadcast::new(xs, shape(s), ys) }
        }
        Op::MaxPool { window, .. } => {
            // A window without input taps gives -128, below the range of narrower widths: the
            // identity table clamps it (and maps every other integer to itself).
            let rescale = (x != y || x.qmin > i8::MIN).then(|| table(&|v| v));
            Exec::MaxPool { shape: pool_shape(xs, ys, window), rescale }
        }
        Op::AveragePool { window, count_include_pad, .. } => {
            let s = pool_shape(xs, ys, window);
            let area = s.kernel_h * s.kernel_w;
            // The kernel indexes its requantizers by u16 and sums in i32.
            if area > u16::MAX as usize {
                return Err(format!("a {}x{} window is too large for the int8 kernel", s.kernel_h, s.kernel_w));
            }
            for count in 1..=area {
                requantizer(x.scale as f64 / (y.scale as f64 * count as f64), 255 * count as i64)?;
            }
            Exec::AvgPool(Box::new(Qs8AvgPool2d::new(s, *count_include_pad, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax)))
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool | Op::Reduce { .. } => {
            let lead = match &node.op {
                Op::Reduce { axes, .. } => {
                    let mut sorted = axes.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    let lead = xs.len() - sorted.len();
                    if sorted.iter().enumerate().any(|(i, &a)| a != lead + i) {
                        return Err(format!("{} over axes {axes:?} (only trailing axes are int8)", node.op.name()));
                    }
                    lead
                }
                _ => 2,
            };
            let channels: usize = xs[..lead].iter().product();
            let spatial: usize = xs[lead..].iter().product();
            if matches!(node.op, Op::GlobalAveragePool | Op::Reduce { op: ReduceOp::Mean, .. }) {
                if spatial >= 1 << 23 {
                    return Err(format!("{spatial} elements may overflow the int32 sum"));
                }
                if spatial > 0 {
                    requantizer(x.scale as f64 / (y.scale as f64 * spatial as f64), 255 * spatial as i64)?;
                }
                Exec::GlobalAvg { channels, spatial, x, y }
            } else {
                let rescale = (x != y || x.qmin > i8::MIN).then(|| table(&|v| v));
                Exec::GlobalMax { channels, spatial, rescale }
            }
        }
        Op::Concat { .. } => Exec::Concat { rescale: node.inputs.iter().map(|&i| rescale(qparams[i].expect("checked"), y)).collect() },
        Op::Pad { mode, .. } => {
            let pad = match *mode {
                PadMode::Constant(v) => PadMode::Constant(y.quantize(v)),
                PadMode::Reflect => PadMode::Reflect,
                PadMode::Edge => PadMode::Edge,
            };
            Exec::Move { pre: rescale(x, y), post: vec![None], pad }
        }
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::Split { .. } | Op::Gather { .. } => {
            Exec::Move { pre: None, post: outs.iter().map(|&o| rescale(x, o)).collect(), pad: PadMode::Constant(0) }
        }
        Op::Resize { mode: _, coord, nearest, scales, .. } => {
            // The f32 kernel on the indices themselves gives each output's source, exactly
            // while indices are integers in f32.
            let len = g.values[node.inputs[0]].len();
            if len > 1 << 24 {
                return Err(format!("{len} elements are too many for the nearest-index map"));
            }
            if scales.iter().flatten().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(format!("scales {scales:?} are not all positive"));
            }
            let iota: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let mut source = vec![0f32; g.values[node.outputs[0]].len()];
            resize::resize(&iota, xs, &mut source, ys, scales.as_deref(), ResizeMode::Nearest, *coord, *nearest);
            Exec::ResizeNearest { source: source.iter().map(|&i| i as u32).collect(), rescale: rescale(x, y) }
        }
        Op::ConvTranspose(_) | Op::Softmax { .. } => unreachable!("unsupported ops returned above"),
    })
}

fn transpose2d(a: &[i8], rows: usize, cols: usize) -> Vec<i8> {
    let mut t = vec![0i8; a.len()];
    layout::transpose(a, &[rows, cols], &[1, 0], &mut t);
    t
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::sync::Arc;

    use super::*;
    use crate::engine::Fp32Engine;
    use crate::ir::{infer_shapes, CoordTransform, NearestMode, UnaryOp};
    use crate::quant::params::{from_range, quantize_weights, WeightRange};
    use crate::quant::ptq::{Calibrator, QuantConfig};
    use crate::test_rng::Rng;

    /// A float graph under construction, with random constants.
    struct Builder {
        g: Graph,
        rng: Rng,
    }

    impl Builder {
        fn new(seed: u64) -> Builder {
            Builder { g: Graph::default(), rng: Rng(seed) }
        }

        fn input(&mut self, name: &str, shape: &[usize]) -> ValueId {
            let id = self.g.add_value(name, shape.to_vec());
            self.g.inputs.push(id);
            id
        }

        /// A constant of Gaussian values times `scale`, plus `offset`.
        fn konst(&mut self, name: &str, shape: &[usize], scale: f32, offset: f32) -> ValueId {
            let n = shape.iter().product();
            let data = (0..n).map(|_| self.rng.gaussian() as f32 * scale + offset).collect();
            self.g.add_const(name, shape.to_vec(), data)
        }

        fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Vec<ValueId> {
            let shapes: Vec<&[usize]> = inputs.iter().map(|&i| self.g.values[i].shape.as_slice()).collect();
            let out_shapes = infer_shapes(&op, &shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let outputs: Vec<ValueId> = out_shapes.into_iter().enumerate().map(|(i, s)| self.g.add_value(format!("{name}:{i}"), s)).collect();
            self.g.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec(), outputs: outputs.clone() });
            outputs
        }

        fn one(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
            self.node(name, op, inputs)[0]
        }

        /// A Conv with random weights (He-like scale) and bias.
        #[allow(clippy::too_many_arguments)]
        fn conv(
            &mut self,
            name: &str,
            x: ValueId,
            out_c: usize,
            kernel: [usize; 2],
            stride: usize,
            pads: [usize; 4],
            dilation: usize,
            group: usize,
            act: Activation,
        ) -> ValueId {
            let in_c = self.g.values[x].shape[1];
            let fan_in = in_c / group * kernel[0] * kernel[1];
            let w = self.konst(&format!("{name}.w"), &[out_c, in_c / group, kernel[0], kernel[1]], (2.0 / fan_in as f32).sqrt(), 0.0);
            let b = self.konst(&format!("{name}.b"), &[out_c], 0.3, 0.0);
            let window = Window2d { kernel, strides: [stride; 2], dilations: [dilation; 2], pads };
            self.one(name, Op::Conv(Conv { window, group, activation: act }), &[x, w, b])
        }

        fn finish(mut self, outputs: &[ValueId]) -> (Graph, Rng) {
            self.g.outputs = outputs.to_vec();
            self.g.validate().unwrap();
            (self.g, self.rng)
        }
    }

    /// Uniform inputs in `[lo, hi)`: asymmetric ranges give nonzero zero points.
    fn inputs(g: &Graph, rng: &mut Rng, lo: f64, hi: f64) -> Vec<Vec<f32>> {
        g.inputs.iter().map(|&i| (0..g.values[i].len()).map(|_| rng.uniform(lo, hi) as f32).collect()).collect()
    }

    /// How [`annotate`] quantizes.
    #[derive(Clone, Copy, Debug)]
    struct Config {
        bits: u32,
        weight_bits: u32,
        /// uint8 storage for activations.
        unsigned: bool,
    }

    const INT8: Config = Config { bits: 8, weight_bits: 8, unsigned: false };
    const VARIANTS: [Config; 5] = [
        INT8,
        Config { bits: 8, weight_bits: 8, unsigned: true },
        Config { bits: 8, weight_bits: 4, unsigned: false },
        Config { bits: 6, weight_bits: 5, unsigned: true },
        Config { bits: 4, weight_bits: 4, unsigned: false },
    ];

    fn params(lo: f32, hi: f32, cfg: Config) -> QuantParams {
        from_range(lo, hi, cfg.bits, false).with_storage(!cfg.unsigned)
    }

    /// Annotates a float graph for these tests, more widely than PTQ so that every int8 path is
    /// reached: weights per output channel (data replaced by its dequantized integers), every
    /// input and computed value from the range it takes in float on `inputs`, other constants
    /// per tensor, Conv/Gemm biases snapped to their int32 grid. Values named in `float` stay
    /// f32.
    fn annotate(g: &mut Graph, inputs: &[Vec<f32>], cfg: Config, float: &[&str]) {
        let n = g.values.len();
        let (mut weight, mut bias) = (vec![false; n], vec![false; n]);
        for node in g.nodes.clone() {
            let axis = match &node.op {
                Op::Conv(_) => 0,
                Op::Gemm { trans_b, .. } => usize::from(!*trans_b),
                Op::MatMul => g.values[node.inputs[1]].shape.len() - 1,
                _ => continue,
            };
            let w = node.inputs[1];
            if let Some(data) = g.const_data(w) {
                let shape = g.values[w].shape.clone();
                let (p, q) = quantize_weights(data, &shape, Some(axis), cfg.weight_bits, WeightRange::MaxAbs);
                g.values[w].data = Some(Arc::new(p.dequantize(&q, &shape)));
                g.values[w].quant = Some(Quant::Weight(p));
                weight[w] = true;
            }
            if let Some(&b) = node.inputs.get(2) {
                bias[b] = true;
            }
        }
        let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
        let widen = |r: &mut (f32, f32), d: &[f32]| d.iter().for_each(|&x| *r = (r.0.min(x), r.1.max(x)));
        for (&i, d) in g.inputs.iter().zip(inputs) {
            widen(&mut ranges[i], d);
        }
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        Fp32Engine::new(g.clone()).run_observed(&refs, &mut |v, d| widen(&mut ranges[v], d)).unwrap();
        for v in 0..n {
            if float.contains(&g.values[v].name.as_str()) || weight[v] || bias[v] {
                continue;
            }
            if let Some(data) = g.const_data(v) {
                let mut r = (0f32, 0f32);
                widen(&mut r, data);
                let p = params(r.0, r.1, cfg);
                let fq = data.iter().map(|&x| p.fake_quantize(x)).collect();
                g.values[v].data = Some(Arc::new(fq));
                g.values[v].quant = Some(Quant::Tensor(p));
            } else if ranges[v].0 <= ranges[v].1 {
                g.values[v].quant = Some(Quant::Tensor(params(ranges[v].0, ranges[v].1, cfg)));
            }
        }
        for node in g.nodes.clone() {
            let (Some(&x), Some(&w), Some(&b)) = (node.inputs.first(), node.inputs.get(1), node.inputs.get(2)) else { continue };
            let (Some(Quant::Tensor(xp)), Some(Quant::Weight(wp))) = (&g.values[x].quant, &g.values[w].quant) else { continue };
            let Some(data) = g.const_data(b) else { continue };
            let columns = *g.values[b].shape.last().unwrap_or(&1);
            let snapped = data
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let s = xp.scale * wp.scale(i % columns.max(1));
                    (v / s).round_ties_even() * s
                })
                .collect();
            g.values[b].data = Some(Arc::new(snapped));
        }
        g.validate().unwrap();
    }

    /// Sets the quantization of the value named `name`.
    fn set_quant(g: &mut Graph, name: &str, p: Option<QuantParams>) {
        let v = g.find_value(name).unwrap_or_else(|| panic!("no value {name}"));
        g.values[v].quant = p.map(Quant::Tensor);
    }

    /// The int8 engine against the simulation on every value both compute.
    struct Comparison {
        engine: Int8Engine,
        /// Int8 elements compared and how many were equal.
        total: usize,
        exact: usize,
        /// The largest difference of an int8 value, in steps of its scale.
        max_steps: f32,
        /// The largest difference of a float value, relative to its largest magnitude.
        max_float: f32,
    }

    impl Comparison {
        fn exact_fraction(&self) -> f64 {
            self.exact as f64 / self.total.max(1) as f64
        }

        /// Within `steps` steps everywhere, and at least `exact` of the int8 elements equal.
        fn check(&self, steps: f32, exact: f64, what: &str) {
            assert!(self.total > 0, "{what}: nothing int8 to compare");
            assert!(self.max_steps <= steps + 1e-3, "{what}: {} steps apart (allowed {steps})", self.max_steps);
            assert!(self.exact_fraction() >= exact, "{what}: only {:.4} exact (want {exact})", self.exact_fraction());
        }
    }

    fn compare(g: &Graph, inputs: &[Vec<f32>]) -> Comparison {
        let n = g.values.len();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let mut want: Vec<Option<Vec<f32>>> = vec![None; n];
        let sim_out = Fp32Engine::new(g.clone()).run_observed(&refs, &mut |v, d| want[v] = Some(d.to_vec())).unwrap();
        let engine = Int8Engine::new(g.clone()).unwrap();
        let mut got: Vec<Option<Vec<f32>>> = vec![None; n];
        let mut order = Vec::new();
        let out = engine
            .run_observed(&refs, &mut |v, d| {
                assert!(got[v].is_none(), "value {v} observed twice");
                order.push(v);
                got[v] = Some(d.to_vec());
            })
            .unwrap();
        // Every computed value is observed once, in node order, and outputs are what was seen.
        let computed: Vec<ValueId> = g.nodes.iter().flat_map(|n| n.outputs.clone()).collect();
        assert_eq!(order, computed);
        assert_eq!(out.len(), g.outputs.len());
        for (&o, data) in g.outputs.iter().zip(&out) {
            assert_eq!(Some(data), got[o].as_ref(), "output {}", g.values[o].name);
        }
        assert_eq!(engine.run(&refs).unwrap(), out, "run and run_observed differ");
        assert_eq!(sim_out.len(), out.len());
        let mut c = Comparison { engine, total: 0, exact: 0, max_steps: 0.0, max_float: 0.0 };
        for v in computed {
            let (w, x) = (want[v].as_ref().unwrap(), got[v].as_ref().unwrap());
            assert_eq!(w.len(), x.len());
            match g.values[v].quant.as_ref().and_then(|q| q.tensor()) {
                Some(p) => {
                    for (a, b) in w.iter().zip(x) {
                        c.max_steps = c.max_steps.max((a - b).abs() / p.scale);
                        c.exact += (a == b) as usize;
                        c.total += 1;
                    }
                }
                None => {
                    let peak = w.iter().fold(0f32, |m, a| m.max(a.abs())).max(f32::MIN_POSITIVE);
                    let err = w.iter().zip(x).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    c.max_float = c.max_float.max(err / peak);
                }
            }
        }
        c
    }

    fn float_reasons(e: &Int8Engine) -> Vec<String> {
        e.float_nodes().into_iter().map(|(n, op, why)| format!("{n} ({op}): {why}")).collect()
    }

    fn window(kernel: usize, stride: usize, pad: usize) -> Window2d {
        Window2d { kernel: [kernel; 2], strides: [stride; 2], dilations: [1; 2], pads: [pad; 4] }
    }

    #[test]
    fn conv_paths_agree_with_the_simulation_within_one_step() {
        let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
        // (batch, in_c, h, w, out_c, kernel, stride, pads, dilation, group, activation)
        #[allow(clippy::type_complexity)]
        let cases: &[(usize, usize, usize, usize, usize, [usize; 2], usize, [usize; 4], usize, usize, Activation)] = &[
            (1, 5, 9, 11, 5, [3, 3], 1, [1; 4], 1, 5, relu6),
            (2, 6, 10, 7, 6, [3, 3], 2, [1, 1, 0, 0], 1, 6, Activation::Relu),
            (1, 3, 11, 13, 6, [5, 5], 2, [2; 4], 1, 3, Activation::Identity),
            (1, 4, 6, 5, 4, [3, 1], 1, [1, 0, 1, 0], 1, 4, relu6),
            (1, 7, 5, 6, 13, [1, 1], 1, [0; 4], 1, 1, Activation::Relu),
            (2, 3, 13, 9, 9, [3, 3], 2, [1, 0, 0, 1], 1, 1, relu6),
            (1, 8, 7, 7, 12, [3, 3], 1, [1; 4], 1, 4, Activation::Clip { min: -1.0, max: 2.0 }),
            (1, 4, 9, 9, 5, [3, 3], 1, [2; 4], 2, 1, Activation::Identity),
            (1, 17, 3, 4, 33, [2, 3], 1, [0, 1, 1, 0], 1, 1, Activation::Identity),
        ];
        for (i, &(n, c, h, w, oc, k, s, p, d, grp, act)) in cases.iter().enumerate() {
            for cfg in VARIANTS {
                let mut b = Builder::new(0xc0 + i as u64);
                let x = b.input("x", &[n, c, h, w]);
                let y = b.conv("conv", x, oc, k, s, p, d, grp, act);
                let (mut g, mut rng) = b.finish(&[y]);
                let data = inputs(&g, &mut rng, -1.0, 3.0);
                annotate(&mut g, &data, cfg, &[]);
                let cmp = compare(&g, &data);
                assert!(cmp.engine.float_nodes().is_empty(), "case {i}: {:?}", float_reasons(&cmp.engine));
                // Mismatches are values within float rounding of a tie, plus the double
                // rounding of the fixed-point requantizer, whose intermediate keeps fewer
                // fractional bits as the multiplier grows (4-bit weights have larger scales).
                cmp.check(1.0, 0.9, &format!("case {i} {cfg:?}"));
            }
        }
    }

    #[test]
    fn fused_activations_without_an_integer_form_run_in_float_exactly() {
        let mut b = Builder::new(7);
        let x = b.input("x", &[1, 3, 6, 6]);
        let y = b.conv("conv", x, 4, [3, 3], 1, [1; 4], 1, 1, Activation::HardSwish);
        let (mut g, mut rng) = b.finish(&[y]);
        let data = inputs(&g, &mut rng, -1.0, 1.0);
        annotate(&mut g, &data, INT8, &[]);
        let cmp = compare(&g, &data);
        let reasons = float_reasons(&cmp.engine);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("conv (Conv)") && reasons[0].contains("HardSwish"), "{reasons:?}");
        cmp.check(0.0, 1.0, "float Conv");
    }

    #[test]
    fn gemm_and_matmul_agree_within_one_step() {
        // (m, k, n, trans_a, trans_b, alpha, beta, C shape, activation)
        #[allow(clippy::type_complexity)]
        let cases: &[(usize, usize, usize, bool, bool, f32, f32, Option<Vec<usize>>, Activation)] = &[
            (1, 37, 61, false, true, 1.0, 1.0, Some(vec![61]), Activation::Identity),
            (5, 16, 9, false, false, 1.0, 1.0, Some(vec![1, 9]), Activation::Relu),
            (3, 7, 13, true, true, 0.5, 2.0, Some(vec![1]), Activation::Identity),
            (9, 20, 4, true, false, -1.5, 0.25, Some(vec![4]), Activation::Clip { min: -0.5, max: 1.0 }),
            (7, 3, 5, false, true, 1.0, 1.0, None, Activation::Identity),
        ];
        for (i, (m, k, n, ta, tb, alpha, beta, c, act)) in cases.iter().cloned().enumerate() {
            for cfg in VARIANTS {
                let mut b = Builder::new(0x6e + i as u64);
                let x = b.input("x", &if ta { [k, m] } else { [m, k] });
                let w = b.konst("w", &if tb { [n, k] } else { [k, n] }, 0.3, 0.0);
                let mut ins = vec![x, w];
                if let Some(cs) = &c {
                    ins.push(b.konst("c", cs, 0.5, 0.1));
                }
                let y = b.one("gemm", Op::Gemm { trans_a: ta, trans_b: tb, alpha, beta, activation: act }, &ins);
                let (mut g, mut rng) = b.finish(&[y]);
                let data = inputs(&g, &mut rng, -1.0, 2.0);
                annotate(&mut g, &data, cfg, &[]);
                let cmp = compare(&g, &data);
                assert!(cmp.engine.float_nodes().is_empty(), "case {i}: {:?}", float_reasons(&cmp.engine));
                cmp.check(1.0, 0.8, &format!("gemm case {i} {cfg:?}"));
            }
        }
        // MatMul on a rank-3 input with a 2-D weight, and one with a 1-D input.
        for (i, xs) in [vec![2, 3, 19], vec![19]].into_iter().enumerate() {
            let mut b = Builder::new(0x3a7 + i as u64);
            let x = b.input("x", &xs);
            let w = b.konst("w", &[19, 10], 0.3, 0.0);
            let y = b.one("matmul", Op::MatMul, &[x, w]);
            let (mut g, mut rng) = b.finish(&[y]);
            let data = inputs(&g, &mut rng, -2.0, 1.0);
            annotate(&mut g, &data, VARIANTS[i + 1], &[]);
            let cmp = compare(&g, &data);
            assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
            cmp.check(1.0, 0.9, &format!("matmul {xs:?}"));
        }
    }

    #[test]
    fn gemm_forms_without_an_integer_form_run_in_float() {
        let mut b = Builder::new(5);
        let x = b.input("x", &[3, 4]);
        let w = b.konst("w", &[4, 5], 0.3, 0.0);
        let c = b.konst("c", &[3, 5], 0.3, 0.0);
        let y = b.one("gemm_c", Op::Gemm { trans_a: false, trans_b: false, alpha: 1.0, beta: 1.0, activation: Activation::Identity }, &[x, w, c]);
        let w2 = b.konst("w2", &[2, 5, 6], 0.3, 0.0);
        let z = b.one("matmul3d", Op::MatMul, &[y, w2]);
        let (mut g, mut rng) = b.finish(&[z]);
        let data = inputs(&g, &mut rng, -1.0, 1.0);
        annotate(&mut g, &data, INT8, &[]);
        let cmp = compare(&g, &data);
        let reasons = float_reasons(&cmp.engine);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("not a per-column bias"), "{reasons:?}");
        assert!(reasons[1].contains("not a constant 2-D matrix"), "{reasons:?}");
        cmp.check(0.0, 1.0, "float gemm");
    }

    #[test]
    fn broadcast_blocks_match_numpy_indexing() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[1]),
            (&[1], &[2, 3, 4]),
            (&[1, 6, 5, 7], &[1, 6, 1, 1]),
            (&[1, 4, 5, 6], &[6]),
            (&[1, 3, 1, 7], &[1, 1, 5, 1]),
            (&[3, 1], &[1, 4]),
            (&[2, 1, 3], &[2, 5, 1]),
            (&[4, 1, 1], &[4, 3, 2]),
            (&[2, 0, 3], &[2, 1, 3]),
        ];
        for &(a, b) in cases {
            let out = crate::kernels::elementwise::broadcast_shape(a, b).unwrap();
            let bc = Broadcast::new(a, b, &out);
            let len: usize = out.iter().product();
            // Flat index of output element `i` in an operand of `shape`.
            let index = |shape: &[usize], i: usize| {
                let (mut rem, mut at, mut stride) = (i, 0, 1);
                for d in (0..out.len()).rev() {
                    let o = rem % out[d];
                    rem /= out[d];
                    if let Some(sd) = (d + shape.len()).checked_sub(out.len()) {
                        at += if shape[sd] == 1 { 0 } else { o * stride };
                        stride *= shape[sd];
                    }
                }
                at
            };
            let mut seen = 0;
            bc.for_each(|o, ia, ib| {
                assert_eq!(o, seen, "{a:?} {b:?}: blocks in order");
                for j in 0..bc.inner {
                    assert_eq!(index(a, o + j), ia + if bc.a_len == 1 { 0 } else { j }, "{a:?} {b:?} a at {}", o + j);
                    assert_eq!(index(b, o + j), ib + if bc.b_len == 1 { 0 } else { j }, "{a:?} {b:?} b at {}", o + j);
                }
                seen += bc.inner;
            });
            assert_eq!(seen, len, "{a:?} {b:?}");
        }
        // SE blocks are one block per channel.
        let bc = Broadcast::new(&[1, 6, 5, 7], &[1, 6, 1, 1], &[1, 6, 5, 7]);
        assert_eq!((bc.inner, bc.a_len, bc.b_len, bc.outer.iter().product::<usize>()), (35, 35, 1, 6));
    }

    #[test]
    fn add_sub_mul_agree_within_one_step_on_every_broadcast() {
        let shapes: &[(&[usize], &[usize], bool)] = &[
            (&[1, 5, 7, 9], &[1, 5, 7, 9], false),
            (&[1, 5, 7, 9], &[1], true),
            (&[1], &[2, 3, 5], true),
            (&[1, 6, 5, 7], &[1, 6, 1, 1], false),
            (&[1, 6, 5, 7], &[1, 6, 1, 1], true),
            (&[1, 4, 5, 6], &[6], true),
            (&[1, 3, 1, 7], &[1, 1, 5, 1], false),
            (&[2, 33], &[2, 33], false),
        ];
        for (i, &(sa, sb, b_const)) in shapes.iter().enumerate() {
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
                for cfg in [INT8, VARIANTS[1], VARIANTS[3]] {
                    let mut b = Builder::new(0xadd + i as u64);
                    let x = b.input("a", sa);
                    let y = if b_const { b.konst("b", sb, 0.7, 0.4) } else { b.input("b", sb) };
                    let z = b.one("op", Op::Binary(op), &[x, y]);
                    let (mut g, mut rng) = b.finish(&[z]);
                    let data = inputs(&g, &mut rng, -1.5, 2.5);
                    annotate(&mut g, &data, cfg, &[]);
                    let cmp = compare(&g, &data);
                    assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
                    cmp.check(1.0, 0.9, &format!("{op:?} {sa:?} {sb:?} {cfg:?}"));
                }
            }
        }
    }

    #[test]
    fn sub_handles_zero_points_at_both_ends() {
        // b's zero point at -128 (post-ReLU range) and 127 (all negative): the complement must
        // not overflow.
        for (lo, hi) in [(0.0, 3.0), (-3.0, 0.0), (-1.0, 1.0)] {
            let mut b = Builder::new(11);
            let x = b.input("a", &[40]);
            let y = b.input("b", &[40]);
            let z = b.one("sub", Op::Binary(BinaryOp::Sub), &[x, y]);
            let (mut g, mut rng) = b.finish(&[z]);
            let mut data = inputs(&g, &mut rng, -1.0, 1.0);
            data[1] = (0..40).map(|i| lo + (hi - lo) * i as f32 / 39.0).collect();
            annotate(&mut g, &data, INT8, &[]);
            compare(&g, &data).check(1.0, 0.9, &format!("sub with b in [{lo}, {hi}]"));
        }
    }

    #[test]
    fn pools_and_reductions() {
        let ops: Vec<(&str, Op, f32, f64)> = vec![
            ("maxpool", Op::MaxPool { window: window(3, 2, 1), ceil_mode: true }, 0.0, 1.0),
            ("maxpool2", Op::MaxPool { window: window(2, 2, 0), ceil_mode: false }, 0.0, 1.0),
            // Multipliers sx / (sy · count) near 1 leave the requantizer's double rounding
            // few fractional bits: within one step, less often equal.
            ("avgpool", Op::AveragePool { window: window(3, 2, 1), ceil_mode: false, count_include_pad: false }, 1.0, 0.7),
            ("avgpool_pad", Op::AveragePool { window: window(3, 2, 1), ceil_mode: true, count_include_pad: true }, 1.0, 0.7),
            ("gap", Op::GlobalAveragePool, 1.0, 0.9),
            ("gmp", Op::GlobalMaxPool, 0.0, 1.0),
            ("mean", Op::Reduce { op: ReduceOp::Mean, axes: vec![3, 2], keep_dims: true }, 1.0, 0.9),
            ("max", Op::Reduce { op: ReduceOp::Max, axes: vec![1, 2, 3], keep_dims: false }, 0.0, 1.0),
        ];
        for (name, op, steps, exact) in ops {
            for cfg in VARIANTS {
                let mut b = Builder::new(0x9001);
                let x = b.input("x", &[2, 5, 9, 11]);
                let y = b.one(name, op.clone(), &[x]);
                let (mut g, mut rng) = b.finish(&[y]);
                let data = inputs(&g, &mut rng, -1.0, 3.0);
                annotate(&mut g, &data, cfg, &[]);
                let cmp = compare(&g, &data);
                assert!(cmp.engine.float_nodes().is_empty(), "{name}: {:?}", float_reasons(&cmp.engine));
                cmp.check(steps, exact, &format!("{name} {cfg:?}"));
            }
        }
        // Other parameters at the output: max pools rescale exactly.
        for name in ["maxpool", "gmp"] {
            let mut b = Builder::new(3);
            let x = b.input("x", &[1, 4, 7, 7]);
            let op = if name == "gmp" { Op::GlobalMaxPool } else { Op::MaxPool { window: window(3, 2, 1), ceil_mode: false } };
            let y = b.one(name, op, &[x]);
            let (mut g, mut rng) = b.finish(&[y]);
            let data = inputs(&g, &mut rng, -1.0, 3.0);
            annotate(&mut g, &data, INT8, &[]);
            set_quant(&mut g, &format!("{name}:0"), Some(from_range(-0.5, 2.0, 8, false)));
            compare(&g, &data).check(0.0, 1.0, &format!("{name} rescaled"));
        }
        // A reduction over a middle axis has no integer form.
        let mut b = Builder::new(4);
        let x = b.input("x", &[2, 5, 3]);
        let y = b.one("mean1", Op::Reduce { op: ReduceOp::Mean, axes: vec![1], keep_dims: true }, &[x]);
        let (mut g, mut rng) = b.finish(&[y]);
        let data = inputs(&g, &mut rng, -1.0, 3.0);
        annotate(&mut g, &data, INT8, &[]);
        let cmp = compare(&g, &data);
        assert!(float_reasons(&cmp.engine)[0].contains("only trailing axes"), "{:?}", float_reasons(&cmp.engine));
        cmp.check(0.0, 1.0, "float reduce");
    }

    #[test]
    fn table_ops_are_exact() {
        let ops = [
            Op::Activation(Activation::Relu),
            Op::Activation(Activation::Clip { min: -0.5, max: 1.5 }),
            Op::Activation(Activation::LeakyRelu { alpha: 0.1 }),
            Op::Activation(Activation::Sigmoid),
            Op::Activation(Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }),
            Op::Activation(Activation::HardSwish),
            Op::Activation(Activation::Silu),
            Op::Activation(Activation::Tanh),
            Op::Unary(UnaryOp::Neg),
            Op::Unary(UnaryOp::Abs),
            Op::Unary(UnaryOp::Exp),
            Op::Unary(UnaryOp::Erf),
        ];
        for op in ops {
            for cfg in VARIANTS {
                let mut b = Builder::new(21);
                let x = b.input("x", &[1, 3, 7, 5]);
                let y = b.one("act", op.clone(), &[x]);
                let (mut g, mut rng) = b.finish(&[y]);
                let data = inputs(&g, &mut rng, -4.0, 3.0);
                annotate(&mut g, &data, cfg, &[]);
                let cmp = compare(&g, &data);
                assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
                cmp.check(0.0, 1.0, &format!("{op:?} {cfg:?}"));
            }
        }
        // PRelu with per-channel, scalar and full-shape slopes.
        for slope_shape in [&[3, 1, 1][..], &[1], &[3, 7, 5]] {
            let mut b = Builder::new(22);
            let x = b.input("x", &[2, 3, 7, 5]);
            let s = b.konst("slope", slope_shape, 0.2, 0.1);
            let y = b.one("prelu", Op::PRelu, &[x, s]);
            let (mut g, mut rng) = b.finish(&[y]);
            let data = inputs(&g, &mut rng, -2.0, 2.0);
            annotate(&mut g, &data, VARIANTS[3], &[]);
            let cmp = compare(&g, &data);
            assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
            cmp.check(0.0, 1.0, &format!("prelu {slope_shape:?}"));
        }
    }

    #[test]
    fn concat_and_data_movement_are_exact_with_and_without_rescaling() {
        let mut b = Builder::new(0xda7a);
        let x = b.input("x", &[1, 4, 6, 5]);
        let x2 = b.input("x2", &[1, 3, 6, 5]);
        let k = b.konst("k", &[1, 2, 6, 5], 1.0, 0.0);
        let cat = b.one("concat", Op::Concat { axis: 1 }, &[x, x2, k]);
        let t = b.one("transpose", Op::Transpose { perm: vec![0, 2, 3, 1] }, &[cat]);
        let r = b.one("reshape", Op::Reshape { shape: vec![6, 5, 9] }, &[t]);
        let s = b.one("slice", Op::Slice { starts: vec![5, 1, 0], steps: vec![-2, 2, 3], sizes: vec![3, 2, 3] }, &[r]);
        let sp = b.node("split", Op::Split { axis: 2, sizes: vec![1, 2] }, &[s]);
        let ga = b.one("gather", Op::Gather { axis: 1, indices: vec![1, 0, -1], indices_shape: vec![3] }, &[sp[1]]);
        let p0 = b.one("pad0", Op::Pad { begin: vec![0, 1, 0, 2], end: vec![1, 0, 0, 1], mode: PadMode::Constant(0.0) }, &[cat]);
        let p1 = b.one("pad1", Op::Pad { begin: vec![0, 0, 1, 2], end: vec![0, 0, 2, 1], mode: PadMode::Constant(0.7) }, &[x]);
        let p2 = b.one("pad2", Op::Pad { begin: vec![0, 0, 2, 1], end: vec![0, 0, 1, 2], mode: PadMode::Reflect }, &[x]);
        let p3 = b.one("pad3", Op::Pad { begin: vec![0, 0, 2, 1], end: vec![0, 0, 1, 2], mode: PadMode::Edge }, &[x2]);
        let resize = |shape: Vec<usize>, coord, nearest| Op::Resize { mode: ResizeMode::Nearest, coord, nearest, shape, scales: None };
        let up = b.one("up", resize(vec![1, 4, 12, 10], CoordTransform::Asymmetric, NearestMode::Floor), &[x]);
        let odd = b.one("odd", resize(vec![1, 3, 9, 4], CoordTransform::HalfPixel, NearestMode::RoundPreferCeil), &[x2]);
        let (mut g, mut rng) = b.finish(&[ga, sp[0], p0, p1, p2, p3, up, odd]);
        let data = inputs(&g, &mut rng, -1.0, 3.0);
        for cfg in VARIANTS {
            let mut g = g.clone();
            annotate(&mut g, &data, cfg, &[]);
            let cmp = compare(&g, &data);
            assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
            cmp.check(0.0, 1.0, &format!("{cfg:?}"));
        }
        // Every output with parameters of its own: each op rescales (Pad before padding).
        annotate(&mut g, &data, INT8, &[]);
        for (i, name) in
            ["concat:0", "transpose:0", "reshape:0", "slice:0", "split:0", "split:1", "gather:0", "pad0:0", "pad1:0", "pad2:0", "pad3:0", "up:0", "odd:0"]
                .iter()
                .enumerate()
        {
            set_quant(&mut g, name, Some(from_range(-0.7 - 0.1 * i as f32, 1.9 + 0.2 * i as f32, 8 - (i % 3) as u32, false).with_storage(i % 2 == 0)));
        }
        let cmp = compare(&g, &data);
        assert!(cmp.engine.float_nodes().is_empty(), "{:?}", float_reasons(&cmp.engine));
        cmp.check(0.0, 1.0, "rescaled");
    }

    #[test]
    fn float_ops_and_unquantized_values_run_in_float_with_their_reasons() {
        let mut b = Builder::new(0xf1);
        let x = b.input("x", &[1, 3, 4, 4]);
        let up = b.one(
            "linear",
            Op::Resize { mode: ResizeMode::Linear, coord: CoordTransform::HalfPixel, nearest: NearestMode::Floor, shape: vec![1, 3, 8, 8], scales: None },
            &[x],
        );
        let y = b.conv("conv", up, 4, [3, 3], 1, [1; 4], 1, 1, Activation::Relu);
        let d = b.one("div", Op::Binary(BinaryOp::Div), &[y, y]);
        let f = b.one("flat", Op::Reshape { shape: vec![1, 256] }, &[d]);
        let s = b.one("softmax", Op::Softmax { axis: 1, log: false }, &[f]);
        let (mut g, mut rng) = b.finish(&[s]);
        let data = inputs(&g, &mut rng, -1.0, 1.0);
        // The Conv's input stays float: it runs in float too.
        annotate(&mut g, &data, INT8, &["linear:0"]);
        let cmp = compare(&g, &data);
        let reasons = float_reasons(&cmp.engine);
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("linear (Resize): linear Resize has no int8 kernel"), "{reasons:?}");
        assert!(reasons[1].contains("conv (Conv): input 'linear:0' is not quantized"), "{reasons:?}");
        assert!(reasons[2].contains("div (Div): Div has no int8 kernel"), "{reasons:?}");
        assert!(reasons[3].contains("softmax (Softmax)"), "{reasons:?}");
        // The Reshape between two int8 values stays integer.
        cmp.check(0.0, 1.0, "float ops");
        assert_eq!(cmp.max_float, 0.0);
    }

    #[test]
    fn a_small_network_end_to_end() {
        // Conv-ReLU6 / depthwise / pointwise / SE block / residual / pool / Gemm / Softmax.
        let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
        let mut b = Builder::new(0x5eed);
        let x = b.input("x", &[1, 3, 17, 15]);
        let c1 = b.conv("c1", x, 8, [3, 3], 2, [1; 4], 1, 1, relu6);
        let dw = b.conv("dw", c1, 8, [3, 3], 1, [1; 4], 1, 8, relu6);
        let gap = b.one("se.gap", Op::GlobalAveragePool, &[dw]);
        let se1 = b.conv("se.fc1", gap, 4, [1, 1], 1, [0; 4], 1, 1, Activation::Relu);
        let se2 = b.conv("se.fc2", se1, 8, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let hs = b.one("se.gate", Op::Activation(Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }), &[se2]);
        let se = b.one("se.mul", Op::Binary(BinaryOp::Mul), &[dw, hs]);
        let pw = b.conv("pw", se, 8, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let res = b.one("res", Op::Binary(BinaryOp::Add), &[pw, c1]);
        let act = b.one("act", Op::Activation(Activation::HardSwish), &[res]);
        let pool = b.one("pool", Op::GlobalAveragePool, &[act]);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 8] }, &[pool]);
        let w = b.konst("fc.w", &[10, 8], 0.5, 0.0);
        let bias = b.konst("fc.b", &[10], 0.1, 0.0);
        let fc = b.one("fc", Op::Gemm { trans_a: false, trans_b: true, alpha: 1.0, beta: 1.0, activation: Activation::Identity }, &[flat, w, bias]);
        let sm = b.one("softmax", Op::Softmax { axis: 1, log: false }, &[fc]);
        let (g0, mut rng) = b.finish(&[sm, fc]);
        let data = inputs(&g0, &mut rng, -1.0, 1.0);
        for cfg in VARIANTS {
            let mut g = g0.clone();
            annotate(&mut g, &data, cfg, &["softmax:0"]);
            let cmp = compare(&g, &data);
            let reasons = float_reasons(&cmp.engine);
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            // One-step differences travel through the layers (a pointwise Conv sums several):
            // a few steps at most, and most values still equal.
            cmp.check(8.0, 0.75, &format!("{cfg:?}"));
            // Probabilities move with the logits' step, 16 times coarser at 4 bits than at 8.
            let tolerance = if cfg.bits >= 6 { 0.05 } else { 0.25 };
            assert!(cmp.max_float < tolerance, "{cfg:?}: softmax differs by {}", cmp.max_float);
        }
    }

    #[test]
    fn ptq_annotated_graphs_run_in_int8() {
        // The real pipeline: fused HardSwish split out, Follow ops sharing parameters, biases
        // snapped, MSE weight ranges at 4 bits, uint8 storage, symmetric activations.
        let mut b = Builder::new(0x97a);
        let x = b.input("x", &[1, 3, 12, 12]);
        let c1 = b.conv("c1", x, 6, [3, 3], 1, [1; 4], 1, 1, Activation::HardSwish);
        let mp = b.one("mp", Op::MaxPool { window: window(2, 2, 0), ceil_mode: false }, &[c1]);
        let c2 = b.conv("c2", mp, 6, [3, 3], 1, [1; 4], 1, 6, Activation::Relu);
        let add = b.one("add", Op::Binary(BinaryOp::Add), &[c2, mp]);
        let gap = b.one("gap", Op::GlobalAveragePool, &[add]);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 6] }, &[gap]);
        let w = b.konst("fc.w", &[6, 5], 0.5, 0.0);
        let fc = b.one("fc", Op::MatMul, &[flat, w]);
        let (g, mut rng) = b.finish(&[fc]);
        let frames: Vec<Vec<Vec<f32>>> = (0..4).map(|_| inputs(&g, &mut rng, -1.0, 1.0)).collect();
        let configs = [
            QuantConfig::default(),
            QuantConfig { weight_bits: 4, activation_signed: false, ..QuantConfig::default() },
            QuantConfig { activation_symmetric: true, per_channel: false, ..QuantConfig::default() },
        ];
        for config in configs {
            let mut cal = Calibrator::new(&g, config.clone()).unwrap();
            for f in &frames {
                let refs: Vec<&[f32]> = f.iter().map(|v| v.as_slice()).collect();
                cal.observe(&refs).unwrap();
            }
            let q = cal.quantize().unwrap();
            let cmp = compare(&q, &frames[0]);
            assert!(cmp.engine.float_nodes().is_empty(), "{config:?}: {:?}", float_reasons(&cmp.engine));
            cmp.check(3.0, 0.8, &format!("{config:?}"));
        }
    }

    #[test]
    fn extreme_scales_fall_back_to_float_instead_of_panicking() {
        let mut b = Builder::new(8);
        let x = b.input("x", &[1, 2, 5, 5]);
        let c = b.conv("conv", x, 3, [3, 3], 1, [1; 4], 1, 1, Activation::Identity);
        let a = b.one("add", Op::Binary(BinaryOp::Add), &[x, x]);
        let m = b.one("mul", Op::Binary(BinaryOp::Mul), &[x, x]);
        let p = b.one("avg", Op::AveragePool { window: window(3, 1, 1), ceil_mode: false, count_include_pad: false }, &[x]);
        let gap = b.one("gap", Op::GlobalAveragePool, &[x]);
        let w = b.konst("w", &[50, 4], 1.0, 0.0);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 50] }, &[x]);
        let fc = b.one("fc", Op::MatMul, &[flat, w]);
        let (mut g, mut rng) = b.finish(&[c, a, m, p, gap, fc]);
        let data = inputs(&g, &mut rng, -1.0, 1.0);
        annotate(&mut g, &data, INT8, &[]);
        // Outputs far finer than their input: multipliers beyond what the kernels hold.
        let tiny = QuantParams { scale: 1e-30, zero_point: 0, bits: 8, signed: true, symmetric: false };
        for name in ["conv:0", "add:0", "mul:0", "avg:0", "gap:0", "fc:0"] {
            set_quant(&mut g, name, Some(tiny));
        }
        set_quant(&mut g, "x", Some(QuantParams { scale: 1e10, ..tiny }));
        set_quant(&mut g, "flat:0", Some(QuantParams { scale: 1e10, ..tiny }));
        let cmp = compare(&g, &data);
        let reasons = float_reasons(&cmp.engine);
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        assert!(reasons.iter().all(|r| r.contains("multiplier")), "{reasons:?}");
        cmp.check(0.0, 1.0, "extreme scales");
        // Requantizers that fit but would shift large accumulators out of i32.
        assert!(requantizer(1000.0, 1 << 25).is_err());
        assert!(requantizer(1000.0, 1 << 20).is_ok());
    }

    #[test]
    fn bad_annotations_and_inputs_are_errors() {
        let mut b = Builder::new(9);
        let x = b.input("x", &[1, 2, 4, 4]);
        let y = b.conv("conv", x, 3, [3, 3], 1, [1; 4], 1, 1, Activation::Identity);
        let (mut g, mut rng) = b.finish(&[y]);
        let data = inputs(&g, &mut rng, -1.0, 1.0);
        annotate(&mut g, &data, INT8, &[]);
        let e = Int8Engine::new(g.clone()).unwrap();
        assert!(e.run(&[]).unwrap_err().to_string().contains("takes 1 inputs"));
        assert!(e.run(&[&[0.0; 3]]).unwrap_err().to_string().contains("input 'x'"));
        let good = g.values[x].quant.clone();
        for bad in [
            QuantParams { bits: 9, ..from_range(-1.0, 1.0, 8, false) },
            QuantParams { scale: 0.0, ..from_range(-1.0, 1.0, 8, false) },
            QuantParams { zero_point: 300, ..from_range(-1.0, 1.0, 8, false) },
        ] {
            g.values[x].quant = Some(Quant::Tensor(bad));
            let err = Int8Engine::new(g.clone()).err().expect("invalid parameters").to_string();
            assert!(err.contains("tensor 'x'"), "{err}");
        }
        g.values[x].quant = good;
        let w = g.find_value("conv.w").unwrap();
        let Some(Quant::Weight(mut wp)) = g.values[w].quant.clone() else { panic!("weight annotated") };
        wp.scales.pop();
        g.values[w].quant = Some(Quant::Weight(wp));
        let err = Int8Engine::new(g.clone()).err().expect("bad weight scales").to_string();
        assert!(err.contains("conv.w") && err.contains("do not fit shape"), "{err}");
    }

    #[test]
    fn int8_weights_are_recovered_exactly() {
        // The annotation's invariant: quantizing the dequantized data again gives the integers.
        let mut rng = Rng(0x77);
        let shape = [5, 3, 3, 3];
        let w: Vec<f32> = (0..135).map(|_| rng.gaussian() as f32).collect();
        for bits in [2, 4, 8] {
            for axis in [Some(0), None] {
                let (p, q) = quantize_weights(&w, &shape, axis, bits, WeightRange::Mse);
                let mut g = Graph::default();
                let v = g.add_const("w", shape.to_vec(), p.dequantize(&q, &shape));
                g.values[v].quant = Some(Quant::Weight(p.clone()));
                let (back, scales) = weight_q(&g, v, 0).unwrap();
                assert_eq!(back, q, "{bits} bits axis {axis:?}");
                assert_eq!(scales, (0..5).map(|c| p.scale(c)).collect::<Vec<_>>());
            }
        }
    }
}
