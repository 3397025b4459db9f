//! The int8 engine: runs a quantized (annotated) graph with integer kernels end to end.
//!
//! # Plan
//! [`Int8Engine::new`] decides once per node how it runs, and prepares everything a run needs:
//! weights quantized from their data with their `ChannelParams` (the annotation's invariant
//! makes this exact) and packed, biases as i32 at scale `s_x · s_w[c]`, requantizers, lookup
//! tables, index maps. A run packs nothing. The decision and every integer parameter come from
//! `engine::qplan`, which the simulation plans with too; this module packs them for the kernels.
//!
//! Values annotated `Quant::Tensor` are stored as int8 (uint8-storage parameters are converted
//! exactly, `QuantParams::with_storage`; widths below 8 bits clamp to their own
//! `[qmin, qmax]`); every other value is f32. A node runs with integer kernels when its
//! activation inputs and outputs are all int8 and its op has an integer form:
//! - Conv (`PackedQs8Conv2d`; a fused Relu/Clip is the output clamp), Gemm and MatMul with a
//!   constant 2-D weight (`qs8_gemm`; alpha folded into the requantizer, beta·C into the bias);
//! - Add, Sub (Add of the bitwise complement, exact: `!q = -q - 1` with zero point `-z - 1`) and
//!   Mul with any broadcast (`qplan::Broadcast` cuts the output into blocks where each operand is a
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
//! annotated outputs are quantized. So do, on a foreign QDQ graph (`Fusion::Onnxruntime`),
//! the Conv, Add and Mul units onnxruntime leaves unfused (`engine::ort_fusion`), a Conv then
//! adding in onnxruntime's order (`kernels::conv_mlas`), so that they give its integers.
//! Requantizations the kernels cannot hold (a multiplier of `2^29` or more, accumulators that
//! could overflow i32 after the requantizer's left shift) also fall back to float instead of
//! panicking in a kernel.
//!
//! # Agreement with the simulation
//! The FP32 engine on the same annotated graph is the simulation, and computes the same
//! integers on every value (`engine::sim`): Conv/Gemm/MatMul accumulate exactly (the FP32
//! kernels on integer operands, or in wasm these int8 GEMM kernels stopped before
//! requantization) and requantize with the same `Requantizer`s; Add/Sub/Mul, average pools and
//! tables run these very kernels; data movement, Concat and max
//! pools rescale with a table of `quantize_f32(sx · (q - zx))`, which is the simulation's own
//! fake quantization (`qs8_rescale`'s fixed-point multiplier could differ from it by one step,
//! so it is not used); float fallbacks run the same FP32 kernel in both.
//!
//! # Memory
//! As in the FP32 engine: a buffer is freed after its last reader, a Reshape whose input dies
//! moves the buffer, and kernel scratch is reused across the nodes of a run.
//!
//! # Tests
//! Small annotated graphs for every op path (odd sizes, nonzero zero points, uint8 storage,
//! 4-bit weights and activations, fused Relu6, every broadcast form) against the simulation,
//! equal on every value; float fallbacks and their reasons; errors instead of panics on bad
//! annotations and extreme scales.
//! `tests/int8_engine.rs` runs the shipped models.

use std::borrow::Cow;

use super::ort_fusion;
use super::qplan::{plan_node, quant_params, Clamp, IntOp, IntWeights, Qp};
use crate::engine::fp32::PreparedNode;
use crate::ir::{Graph, Node, Op, ValueId};
use crate::kernels::int8::{qs8_add, qs8_gemm, qs8_global_avg_pool, qs8_lut, qs8_max_pool2d, qs8_mul, PackedQs8Conv2d, PackedWeightsQs8, Qs8AvgPool2d, Requantizer};
use crate::kernels::layout;
use crate::{Error, Result};

fn lut_in_place(x: &mut [i8], lut: &[i8; 256]) {
    x.iter_mut().for_each(|v| *v = lut[*v as u8 as usize]);
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
    AvgPool(Box<Qs8AvgPool2d>),
    /// Every other integer form runs from its plan as is.
    Int(IntOp),
}

impl Exec {
    /// Packs the weights of an integer plan for the kernels.
    fn pack(op: IntOp) -> Exec {
        match op {
            IntOp::Conv { shape, w: IntWeights { ints, bias, x, requant, out, .. } } => {
                Exec::Conv(Box::new(PackedQs8Conv2d::new(shape, &ints.q, Some(&bias), x.zero_point, requant, out.zero_point, out.qmin, out.qmax)))
            }
            IntOp::Gemm { w: IntWeights { ints, n, k: wk, bias, x, requant, out }, trans_a, m, k } => {
                Exec::Gemm { w: PackedWeightsQs8::for_rows(m, &ints.q, n, wk, Some(&bias), x.zero_point), requant, trans_a, m, k, out }
            }
            IntOp::AvgPool { shape, count_include_pad, x, y, convention } => {
                Exec::AvgPool(Box::new(Qs8AvgPool2d::new(shape, count_include_pad, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax, convention)))
            }
            op => Exec::Int(op),
        }
    }
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
    /// int8 buffers no longer read, to hold later outputs (see `Int8Engine::free`).
    free: Vec<Vec<i8>>,
}

impl Scratch {
    /// A buffer of `len` values for a node's output, every one of which the node writes: the
    /// smallest free buffer that holds it, with its stale contents (no zero fill), or a new one.
    fn output(&mut self, len: usize) -> Vec<i8> {
        let best = (0..self.free.len()).filter(|&i| self.free[i].capacity() >= len).min_by_key(|&i| self.free[i].capacity());
        match best {
            Some(i) => {
                let mut v = self.free.swap_remove(i);
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0);
                }
                v
            }
            None => vec![0i8; len],
        }
    }
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
    /// The int8 buffers of the last run, reused by the next one: a fresh zeroed allocation per
    /// node output cost a pass over every activation (7 MB a frame on EfficientNet-Lite0).
    free: std::sync::Mutex<Vec<Vec<i8>>>,
}

impl Int8Engine {
    /// Plans `graph` (see the module docs). Errors on a graph that does not validate and on
    /// invalid annotations; nodes without an integer form run in float, never fail here.
    pub fn new(graph: Graph) -> Result<Int8Engine> {
        graph.validate()?;
        let n = graph.values.len();
        let (qparams, const_q) = quant_params(&graph)?;
        let unfused = ort_fusion::unfused(&graph);
        let steps = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let exec = match &unfused[i] {
                    Some(why) => Exec::Float { prepared: PreparedNode::as_onnxruntime(&graph, node), why: why.clone() },
                    None => match plan_node(&graph, &qparams, node) {
                        Ok(op) => Exec::pack(op),
                        Err(why) => Exec::Float { prepared: PreparedNode::new(&graph, node), why },
                    },
                };
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
        Ok(Int8Engine { graph, qparams, const_q, steps, last_use, free: Default::default() })
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
        let mut scratch = Scratch { free: std::mem::take(&mut *self.free.lock().unwrap_or_else(|e| e.into_inner())), ..Scratch::default() };
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
                    if let Some(Buf::I8(v)) = buffers[i].take() {
                        scratch.free.push(v);
                    }
                }
            }
        }
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) = scratch.free;
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
            Some(qp) => Buf::I8(quantize_all(&data, qp)),
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
        let mut y = scratch.output(if matches!(step.exec, Exec::Float { .. }) { 0 } else { out_len(0) });
        let Scratch { kernel, tmp, f32: fscratch, .. } = scratch;
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
            Exec::Int(IntOp::Add { params, broadcast: bc, complement_b }) => {
                let (a, mut b) = (q(0)?, q(1)?);
                if *complement_b {
                    tmp.clear();
                    tmp.extend(b.iter().map(|v| !v));
                    b = tmp;
                }
                bc.for_each(|o, ia, ib| qs8_add(&a[ia..][..bc.a_len], &b[ib..][..bc.b_len], params, &mut y[o..][..bc.inner]));
            }
            Exec::Int(IntOp::Mul { requant, zero_points: [za, zb], broadcast: bc, out }) => {
                let (a, b) = (q(0)?, q(1)?);
                bc.for_each(|o, ia, ib| {
                    let (a, b) = (&a[ia..][..bc.a_len], &b[ib..][..bc.b_len]);
                    qs8_mul(a, *za, b, *zb, requant, out.zero_point, out.qmin, out.qmax, &mut y[o..][..bc.inner])
                });
            }
            Exec::Int(IntOp::Lut(lut)) => qs8_lut(q(0)?, lut, &mut y),
            Exec::Int(IntOp::PRelu { luts, slope_lut, broadcast: bc }) => {
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
            Exec::Int(IntOp::MaxPool { shape: s, rescale }) => {
                qs8_max_pool2d(s, q(0)?, &mut y);
                if let Some(t) = rescale {
                    lut_in_place(&mut y, t);
                }
            }
            Exec::AvgPool(pool) => pool.run(q(0)?, &mut y),
            Exec::Int(IntOp::Conv { .. } | IntOp::Gemm { .. } | IntOp::AvgPool { .. }) => unreachable!("packed by Exec::pack"),
            Exec::Int(IntOp::GlobalAvg { channels, spatial, x, y: py, convention }) => {
                qs8_global_avg_pool(*channels, *spatial, q(0)?, x.scale, x.zero_point, py.scale, py.zero_point, py.qmin, py.qmax, *convention, &mut y)
            }
            Exec::Int(IntOp::GlobalMax { channels, spatial, rescale }) => {
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
            Exec::Int(IntOp::Concat { rescale }) => {
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
            Exec::Int(IntOp::Move { pre, post, pad }) => {
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
            Exec::Int(IntOp::ResizeNearest { source, rescale }) => {
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

/// `qp.quantize` of every element (the model input, float nodes' outputs). On wasm32 with
/// simd128, 16 at a time with the same operations, bit for bit: the IEEE division, round half
/// to even, the saturating conversion (NaN to 0), then i16 and i8 saturation around the zero
/// point, which clamp exactly as the scalar saturating add and clamp (a saturated lane stays
/// beyond the int8 range).
fn quantize_all(x: &[f32], qp: Qp) -> Vec<i8> {
    let mut out = vec![0i8; x.len()];
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        use core::arch::wasm32::*;
        let (scale, zp) = (f32x4_splat(qp.scale), i16x8_splat(qp.zero_point as i16));
        let (lo, hi) = (i8x16_splat(qp.qmin), i8x16_splat(qp.qmax));
        for (c, o) in x.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
            // SAFETY: 16-byte loads at c + 0, 4, 8, 12 (16 floats) and a 16-byte store into o.
            unsafe {
                let q = |k: usize| {
                    let v = v128_load(c.as_ptr().add(4 * k) as *const v128);
                    i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_div(v, scale)))
                };
                let ab = i16x8_add_sat(i16x8_narrow_i32x4(q(0), q(1)), zp);
                let cd = i16x8_add_sat(i16x8_narrow_i32x4(q(2), q(3)), zp);
                let v = i8x16_min(i8x16_max(i8x16_narrow_i16x8(ab, cd), lo), hi);
                v128_store(o.as_mut_ptr() as *mut v128, v);
            }
        }
        x.len() / 16 * 16
    };
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = qp.quantize(v);
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::sync::Arc;

    use super::*;
    use crate::engine::qplan::{requantizer, weight_q, weight_requantizers, Broadcast};
    use crate::engine::Fp32Engine;
    use crate::ir::{infer_shapes, Activation, BinaryOp, Conv, CoordTransform, NearestMode, PadMode, Quant, ReduceOp, ResizeMode, UnaryOp, Window2d};
    use crate::quant::params::QuantParams;
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

        /// Every int8 element equal to the simulation's (the simulation computes the int8
        /// engine's integers, `engine::sim`).
        fn check(&self, what: &str) {
            assert!(self.total > 0, "{what}: nothing int8 to compare");
            assert!(self.max_steps == 0.0, "{what}: {} steps apart", self.max_steps);
            assert!(self.exact == self.total, "{what}: only {:.4} exact", self.exact_fraction());
        }
    }

    fn compare(g: &Graph, inputs: &[Vec<f32>]) -> Comparison {
        let n = g.values.len();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let mut want: Vec<Option<Vec<f32>>> = vec![None; n];
        let sim_out = Fp32Engine::new(g.clone()).run_observed(&refs, &mut |v, d| want[v] = Some(d.to_vec())).unwrap();
        let engine = Int8Engine::new(g.clone()).unwrap();
        // A first run on other data leaves stale values in the buffers the engine reuses: an
        // output element a kernel fails to write would show below.
        let other: Vec<Vec<f32>> = inputs.iter().map(|v| v.iter().rev().map(|x| -x - 0.37).collect()).collect();
        engine.run(&other.iter().map(|v| v.as_slice()).collect::<Vec<_>>()).unwrap();
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
                cmp.check(&format!("case {i} {cfg:?}"));
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
        cmp.check("float Conv");
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
                cmp.check(&format!("gemm case {i} {cfg:?}"));
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
            cmp.check(&format!("matmul {xs:?}"));
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
        cmp.check("float gemm");
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
                    cmp.check(&format!("{op:?} {sa:?} {sb:?} {cfg:?}"));
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
            compare(&g, &data).check(&format!("sub with b in [{lo}, {hi}]"));
        }
    }

    #[test]
    fn pools_and_reductions() {
        let ops: Vec<(&str, Op)> = vec![
            ("maxpool", Op::MaxPool { window: window(3, 2, 1), ceil_mode: true }),
            ("maxpool2", Op::MaxPool { window: window(2, 2, 0), ceil_mode: false }),
            ("avgpool", Op::AveragePool { window: window(3, 2, 1), ceil_mode: false, count_include_pad: false }),
            ("avgpool_pad", Op::AveragePool { window: window(3, 2, 1), ceil_mode: true, count_include_pad: true }),
            ("gap", Op::GlobalAveragePool),
            ("gmp", Op::GlobalMaxPool),
            ("mean", Op::Reduce { op: ReduceOp::Mean, axes: vec![3, 2], keep_dims: true }),
            ("max", Op::Reduce { op: ReduceOp::Max, axes: vec![1, 2, 3], keep_dims: false }),
        ];
        for (name, op) in ops {
            for cfg in VARIANTS {
                let mut b = Builder::new(0x9001);
                let x = b.input("x", &[2, 5, 9, 11]);
                let y = b.one(name, op.clone(), &[x]);
                let (mut g, mut rng) = b.finish(&[y]);
                let data = inputs(&g, &mut rng, -1.0, 3.0);
                annotate(&mut g, &data, cfg, &[]);
                let cmp = compare(&g, &data);
                assert!(cmp.engine.float_nodes().is_empty(), "{name}: {:?}", float_reasons(&cmp.engine));
                cmp.check(&format!("{name} {cfg:?}"));
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
            compare(&g, &data).check(&format!("{name} rescaled"));
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
        cmp.check("float reduce");
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
                cmp.check(&format!("{op:?} {cfg:?}"));
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
            cmp.check(&format!("prelu {slope_shape:?}"));
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
            cmp.check(&format!("{cfg:?}"));
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
        cmp.check("rescaled");
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
        cmp.check("float ops");
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
            cmp.check(&format!("{cfg:?}"));
            // The float Softmax reads equal logits.
            assert_eq!(cmp.max_float, 0.0, "{cfg:?}: softmax differs");
        }
    }

    #[test]
    fn ptq_annotated_graphs_run_in_int8() {
        // The real pipeline: fused HardSwish split out, Follow ops sharing parameters, biases
        // snapped, MSE weight ranges at 4 bits, int8 and uint8 storage, symmetric activations, both requantizations.
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
            QuantConfig { weight_bits: 4, activation_signed: true, ..QuantConfig::default() },
            QuantConfig { activation_symmetric: true, per_channel: false, ..QuantConfig::default() },
            QuantConfig { requantization: crate::ir::Requantization::FixedPoint, ..QuantConfig::default() },
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
            cmp.check(&format!("{config:?}"));
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
        cmp.check("extreme scales");
        // Requantizers that fit but would shift large accumulators out of i32.
        for convention in [crate::ir::Requantization::Fp32, crate::ir::Requantization::FixedPoint] {
            assert!(requantizer(1000.0, 1000.0, 1 << 25, convention).is_err());
            assert!(requantizer(1000.0, 1000.0, 1 << 20, convention).is_ok());
        }
        // A weight multiplier just below the limit in f64 whose f32 value rounds up to it:
        // (1 + 2^-23) · (2^29 - 64) is 2^29 - 2^-17 exactly, and 2^29 in f32.
        let q = |scale: f32| Qp { scale, zero_point: 0, qmin: -128, qmax: 127 };
        for convention in [crate::ir::Requantization::Fp32, crate::ir::Requantization::FixedPoint] {
            let why = weight_requantizers(q(1.0 + f32::EPSILON), &[(1u32 << 29) as f32 - 64.0], 1.0, q(1.0), convention).unwrap_err();
            assert!(why.contains("multiplier 5.36870912e8 is out of range"), "{why}");
        }
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

    /// `quantize_all` (SIMD128 on wasm32) is `Qp::quantize` element by element, bit for bit:
    /// ties, NaN, infinities, huge values, both ends of the zero point and narrow ranges.
    #[test]
    fn quantize_all_matches_the_scalar_quantizer() {
        let mut rng = Rng(0x9a);
        let mut x: Vec<f32> = (0..1000).map(|_| rng.unit() as f32 * 600.0 - 300.0).collect();
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e9, -3e9, 1e20, -1e20, 0.5, 1.5, 2.5, -0.5, -1.5, 0.0, -0.0]);
        x.extend((-40..40).map(|i| i as f32 * 0.5));
        for (scale, zero_point, qmin, qmax) in [(0.5f32, 0, -128i8, 127i8), (1.0, -128, -128, 127), (0.7, 127, -128, 127), (2.0, 5, -127, 127), (0.01, -3, -8, 7)] {
            let qp = Qp { scale, zero_point, qmin, qmax };
            for n in [x.len(), 17, 16, 15, 1, 0] {
                let got = quantize_all(&x[..n], qp);
                let want: Vec<i8> = x[..n].iter().map(|&v| qp.quantize(v)).collect();
                assert_eq!(got, want, "scale {scale} zero point {zero_point} n {n}");
            }
        }
    }
}
