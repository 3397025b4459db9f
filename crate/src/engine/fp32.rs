//! The FP32 engine: a plan built once per graph (weights packed for the GEMM
//! microkernels at load, never per call) and run on any number of inputs.
//!
//! Buffers are freed after their last reader, so peak memory is the live
//! set of activations, not the sum of all of them. An observer can see every
//! computed value (calibration and per-layer error use this).
//!
//! # The simulation
//! On a quantized graph (values annotated by PTQ or QDQ import) the same engine is the
//! simulation of the int8 engine, still in float: every annotated activation holds values on
//! its grid, `scale · (q - zero_point)` ([`fake_quantize`]), and every node the int8 engine
//! runs with integer kernels computes that engine's integers (`engine::sim`: the FP32 kernels
//! on the integers, exact, then the kernels' own fixed-point requantization). The simulation
//! and the int8 engine therefore agree bit for bit (`tests/sim_vs_int8.rs`), while the page can
//! still observe and plot every value in float.
//!
//! [`Fp32Engine::fake_quantized`] is the plain fake-quantized float graph instead: each node in
//! f32, each annotated output rounded once by `quantize_f32`. It differs from the simulation
//! where rounding an f32 result once and requantizing an exact accumulator with a 31-bit
//! multiplier land on different integers, rare one-step flips that then travel through the
//! network (which is why QAT's training forward takes its values from the simulation).

use crate::ir::{Graph, Node, Op, ValueId};
use crate::kernels::conv::{ConvTranspose2dShape, PackedConv2d, PackedConvTranspose2d};
use crate::kernels::conv_mlas::MlasOrderConv2d;
use crate::kernels::elementwise::{binary, prelu, unary};
use crate::kernels::gemm::{gemm, GemmBias, PackedA, PackedB};
use crate::kernels::pool::{avg_pool2d, global_avg_pool, global_max_pool, max_pool2d, reduce};
use crate::kernels::softmax::{log_softmax, softmax};
use crate::kernels::int8::quantize_f32;
use crate::kernels::{layout, resize, Activation};
use super::ort_fusion;
use super::sim::{self, SimNode};
use super::{conv_shape, pool_shape};
use crate::{Error, Result};

/// What a step precomputed at plan time.
enum Prepared {
    Conv(PackedConv2d),
    /// A Conv onnxruntime runs in float on a foreign QDQ graph, in its summation order.
    ConvMlasOrder(MlasOrderConv2d),
    ConvTranspose(PackedConvTranspose2d),
    /// Gemm or 2-D MatMul with a constant right operand: B packed, alpha
    /// folded in, C folded into a per-column bias when it is one.
    ConstB { b: PackedB, bias: Option<Vec<f32>>, activation: Activation },
    /// A node of a quantized graph computed on its integers, as the int8 engine does.
    Quantized(Box<SimNode>),
    None,
}

struct Step {
    node: usize,
    prepared: Prepared,
}

pub struct Fp32Engine {
    graph: Graph,
    steps: Vec<Step>,
    /// For each value, the index of the last step that reads it (usize::MAX: a graph output).
    last_use: Vec<usize>,
}

/// Bias of a Gemm's C when it is constant and broadcasts along rows.
fn per_column_bias(graph: &Graph, node: &Node, n: usize, beta: f32) -> Option<Option<Vec<f32>>> {
    let Some(&c) = node.inputs.get(2) else { return Some(None) };
    let data = graph.const_data(c)?;
    let shape = &graph.values[c].shape;
    let per_col = shape.iter().rev().skip(1).all(|&d| d == 1) && (data.len() == n || data.len() == 1);
    per_col.then(|| Some((0..n).map(|j| beta * data[if data.len() == 1 { 0 } else { j }]).collect()))
}

fn prepare(graph: &Graph, node: &Node) -> Prepared {
    let konst = |i: usize| node.inputs.get(i).and_then(|&v| graph.const_data(v));
    match &node.op {
        Op::Conv(c) => match konst(1) {
            Some(w) => Prepared::Conv(PackedConv2d::new(conv_shape(graph, node, &c.window, c.group), w, konst(2), c.activation)),
            None => Prepared::None,
        },
        Op::ConvTranspose(c) => {
            let Some(w) = konst(1) else { return Prepared::None };
            let shape: ConvTranspose2dShape = conv_shape(graph, node, &c.window, c.group);
            Prepared::ConvTranspose(PackedConvTranspose2d::new(shape, w, konst(2), c.activation))
        }
        Op::Gemm { trans_b, alpha, beta, activation, .. } => {
            let Some(b) = konst(1) else { return Prepared::None };
            let bs = &graph.values[node.inputs[1]].shape;
            let (k, n) = if *trans_b { (bs[1], bs[0]) } else { (bs[0], bs[1]) };
            let Some(bias) = per_column_bias(graph, node, n, *beta) else { return Prepared::None };
            let scaled: Vec<f32>;
            let b = if *alpha != 1.0 {
                scaled = b.iter().map(|v| v * alpha).collect();
                &scaled[..]
            } else {
                b
            };
            let packed = if *trans_b { PackedB::pack_transposed(b, k, n, k) } else { PackedB::pack(b, k, n, n) };
            Prepared::ConstB { b: packed, bias, activation: *activation }
        }
        Op::MatMul => match konst(1) {
            Some(b) if graph.values[node.inputs[1]].shape.len() == 2 => {
                let bs = &graph.values[node.inputs[1]].shape;
                Prepared::ConstB { b: PackedB::pack(b, bs[0], bs[1], bs[1]), bias: None, activation: Activation::Identity }
            }
            _ => Prepared::None,
        },
        _ => Prepared::None,
    }
}

/// [`prepare`] for a node onnxruntime runs in float (`engine::ort_fusion`): a Conv adds in its
/// order (`kernels::conv_mlas`), so that the quantized output is onnxruntime's.
fn prepare_as_onnxruntime(graph: &Graph, node: &Node) -> Prepared {
    let konst = |i: usize| node.inputs.get(i).and_then(|&v| graph.const_data(v));
    match (&node.op, konst(1)) {
        (Op::Conv(c), Some(w)) => Prepared::ConvMlasOrder(MlasOrderConv2d::new(conv_shape(graph, node, &c.window, c.group), w, konst(2), c.activation)),
        _ => prepare(graph, node),
    }
}

impl Fp32Engine {
    /// The plan of `graph`; on an annotated graph, its simulation (see the module docs).
    pub fn new(graph: Graph) -> Fp32Engine {
        let mut integer = sim::plan(&graph).unwrap_or_default();
        let unfused = ort_fusion::unfused(&graph);
        let steps = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let prepared = match integer.get_mut(i).and_then(Option::take) {
                    Some(s) => Prepared::Quantized(Box::new(s)),
                    None if unfused[i].is_some() => prepare_as_onnxruntime(&graph, node),
                    None => prepare(&graph, node),
                };
                Step { node: i, prepared }
            })
            .collect();
        Self::with_steps(graph, steps)
    }

    /// The plain fake-quantized graph: float nodes, annotated outputs rounded by
    /// [`fake_quantize`]; see the module docs for how it relates to the simulation
    /// [`new`](Self::new) plans.
    pub fn fake_quantized(graph: Graph) -> Fp32Engine {
        let steps = graph.nodes.iter().enumerate().map(|(i, node)| Step { node: i, prepared: prepare(&graph, node) }).collect();
        Self::with_steps(graph, steps)
    }

    fn with_steps(graph: Graph, steps: Vec<Step>) -> Fp32Engine {
        let mut last_use = vec![0usize; graph.values.len()];
        for (s, step) in steps.iter().enumerate() {
            for &i in &graph.nodes[step.node].inputs {
                last_use[i] = s;
            }
        }
        for &o in &graph.outputs {
            last_use[o] = usize::MAX;
        }
        Fp32Engine { graph, steps, last_use }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the graph on one tensor per graph input; returns one per output.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        self.run_observed(inputs, &mut |_, _| {})
    }

    /// Like [`run`](Self::run), calling `observe(value, data)` for every
    /// value a node computes, in execution order.
    pub fn run_observed(&self, inputs: &[&[f32]], observe: &mut dyn FnMut(ValueId, &[f32])) -> Result<Vec<Vec<f32>>> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Invalid(format!("the model takes {} inputs, {} were given", g.inputs.len(), inputs.len())));
        }
        let mut buffers: Vec<Option<Vec<f32>>> = vec![None; g.values.len()];
        for (&id, data) in g.inputs.iter().zip(inputs) {
            let v = &g.values[id];
            if data.len() != v.len() {
                return Err(Error::Input { name: v.name.clone(), msg: format!("has {} values, shape {:?} needs {}", data.len(), v.shape, v.len()) });
            }
            let mut data = data.to_vec();
            fake_quantize(g, id, &mut data);
            buffers[id] = Some(data);
        }
        let mut scratch = Vec::new();
        for (s, step) in self.steps.iter().enumerate() {
            let node = &g.nodes[step.node];
            let outputs = {
                let args: Vec<&[f32]> = node
                    .inputs
                    .iter()
                    .map(|&i| g.const_data(i).or(buffers[i].as_deref()).expect("validated graph: inputs computed before use"))
                    .collect();
                // A Reshape whose input dies here moves the buffer instead of copying it.
                let movable = matches!(node.op, Op::Reshape { .. }) && self.last_use[node.inputs[0]] == s && buffers[node.inputs[0]].is_some();
                if movable {
                    drop(args);
                    vec![buffers[node.inputs[0]].take().expect("checked")]
                } else {
                    execute(g, node, &step.prepared, &args, &mut scratch)?
                }
            };
            // Integer nodes give values on their grids already.
            let on_grid = matches!(step.prepared, Prepared::Quantized(_));
            for (&o, mut data) in node.outputs.iter().zip(outputs) {
                if !on_grid {
                    fake_quantize(g, o, &mut data);
                }
                observe(o, &data);
                buffers[o] = Some(data);
            }
            for &i in &node.inputs {
                if self.last_use[i] == s {
                    buffers[i] = None;
                }
            }
        }
        Ok(g.outputs.iter().map(|&o| g.const_data(o).map(|d| d.to_vec()).or_else(|| buffers[o].take()).unwrap_or_default()).collect())
    }
}

/// Fake quantization of a computed value: an activation annotated `Quant::Tensor` is replaced by
/// `dequantize(quantize(x))` as soon as it is computed, the grid the int8 engine stores it on.
/// In the simulation this rounds the outputs of nodes the int8 engine also runs in float (and
/// of data movement, where it gives the int8 engine's rescale tables exactly); nodes with an
/// integer form produce their grid values themselves. Weights need nothing here: their data
/// already is dequantized (see `quant`).
fn fake_quantize(g: &Graph, id: ValueId, data: &mut [f32]) {
    if let Some(p) = g.values[id].quant.as_ref().and_then(|q| q.tensor()) {
        let (qmin, qmax) = (p.qmin(), p.qmax());
        for x in data {
            *x = p.scale * (quantize_f32(*x, p.scale, p.zero_point, qmin, qmax) - p.zero_point) as f32;
        }
    }
}

/// Evaluates one node on concrete inputs. Used by the plan and by constant folding.
pub fn eval_node(graph: &Graph, node: &Node, args: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
    execute(graph, node, &prepare(graph, node), args, &mut Vec::new())
}

/// One node prepared once (weights packed) for repeated evaluation outside an `Fp32Engine`:
/// the int8 engine runs its float layers with it, so they pack nothing per call either.
pub struct PreparedNode(Prepared);

impl PreparedNode {
    pub fn new(graph: &Graph, node: &Node) -> PreparedNode {
        PreparedNode(prepare(graph, node))
    }

    /// A node onnxruntime runs in float, computed as it does: a Conv in MLAS's summation order
    /// (`kernels::conv_mlas`).
    pub fn as_onnxruntime(graph: &Graph, node: &Node) -> PreparedNode {
        PreparedNode(prepare_as_onnxruntime(graph, node))
    }

    /// [`eval_node`] with the packing done; `scratch` is reused across calls.
    pub fn run(&self, graph: &Graph, node: &Node, args: &[&[f32]], scratch: &mut Vec<f32>) -> Result<Vec<Vec<f32>>> {
        execute(graph, node, &self.0, args, scratch)
    }
}

/// `run(x, y)` on each image of a batch: `x` of shape `x_shape`, `y` as many images.
fn per_image(x: &[f32], x_shape: &[usize], y: &mut [f32], mut run: impl FnMut(&[f32], &mut [f32])) {
    let images = x_shape[0];
    if images == 0 || x.is_empty() || y.is_empty() {
        return;
    }
    for (x, y) in x.chunks_exact(x.len() / images).zip(y.chunks_exact_mut(y.len() / images)) {
        run(x, y);
    }
}

fn execute(g: &Graph, node: &Node, prepared: &Prepared, args: &[&[f32]], scratch: &mut Vec<f32>) -> Result<Vec<Vec<f32>>> {
    if let Prepared::Quantized(s) = prepared {
        return s.run(g, node, args, scratch);
    }
    let shape = |i: usize| g.values[node.inputs[i]].shape.as_slice();
    let out_shape = |i: usize| g.values[node.outputs[i]].shape.as_slice();
    let out_len = |i: usize| g.values[node.outputs[i]].len();
    let mut y = vec![0f32; out_len(0)];
    match (&node.op, prepared) {
        (Op::Conv(_), Prepared::Conv(conv)) => per_image(args[0], shape(0), &mut y, |x, y| conv.run(x, y, scratch)),
        (Op::Conv(_), Prepared::ConvMlasOrder(conv)) => per_image(args[0], shape(0), &mut y, |x, y| conv.run(x, y, scratch)),
        (Op::ConvTranspose(_), Prepared::ConvTranspose(conv)) => per_image(args[0], shape(0), &mut y, |x, y| conv.run(x, y, scratch)),
        (Op::Conv(_) | Op::ConvTranspose(_), _) => {
            return Err(Error::node(&node.name, node.op.name(), "weights computed at run time are not supported; they must be constants"))
        }
        (Op::Gemm { trans_a, .. }, Prepared::ConstB { b, bias, activation }) => {
            let a = shape(0);
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let pa = if *trans_a { PackedA::pack(&transpose2d(args[0], a[0], a[1]), m, k, k) } else { PackedA::pack(args[0], m, k, k) };
            let bias = bias.as_deref().map_or(GemmBias::None, GemmBias::PerCol);
            gemm(&pa, b, &mut y, b.n(), bias, *activation);
        }
        (Op::MatMul, Prepared::ConstB { b, .. }) => {
            let a = shape(0);
            let k = *a.last().expect("rank >= 1");
            let m = args[0].len() / k;
            gemm(&PackedA::pack(args[0], m, k, k), b, &mut y, b.n(), GemmBias::None, Activation::Identity);
        }
        (Op::Gemm { trans_a, trans_b, alpha, beta, activation }, _) => {
            let (a, bs) = (shape(0), shape(1));
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let n = if *trans_b { bs[0] } else { bs[1] };
            let at = if *trans_a { transpose2d(args[0], a[0], a[1]) } else { args[0].to_vec() };
            let pb = if *trans_b { PackedB::pack_transposed(args[1], k, n, k) } else { PackedB::pack(args[1], k, n, n) };
            gemm(&PackedA::pack(&at, m, k, k), &pb, &mut y, n, GemmBias::None, Activation::Identity);
            if *alpha != 1.0 {
                y.iter_mut().for_each(|v| *v *= alpha);
            }
            if node.inputs.len() > 2 && *beta != 0.0 {
                let c: Vec<f32> = args[2].iter().map(|v| v * beta).collect();
                let acc = y.clone();
                binary(crate::kernels::elementwise::BinaryOp::Add, &acc, &[m, n], &c, shape(2), &mut y, &[m, n]);
            }
            activation.apply(&mut y);
        }
        (Op::MatMul, _) => matmul(args[0], shape(0), args[1], shape(1), &mut y, out_shape(0)),
        (Op::Binary(op), _) => binary(*op, args[0], shape(0), args[1], shape(1), &mut y, out_shape(0)),
        (Op::Unary(op), _) => {
            y.copy_from_slice(args[0]);
            unary(*op, &mut y);
        }
        (Op::Activation(act), _) => act.apply_to(args[0], &mut y),
        (Op::PRelu, _) => {
            y.copy_from_slice(args[0]);
            prelu(&mut y, shape(0), args[1], shape(1));
        }
        (Op::Softmax { axis, log }, _) => {
            y.copy_from_slice(args[0]);
            let s = shape(0);
            let (outer, inner) = (s[..*axis].iter().product(), s[axis + 1..].iter().product());
            if *log {
                log_softmax(&mut y, outer, s[*axis], inner)
            } else {
                softmax(&mut y, outer, s[*axis], inner)
            }
        }
        (Op::MaxPool { window, .. }, _) => max_pool2d(&pool_shape(shape(0), out_shape(0), window), args[0], &mut y),
        (Op::AveragePool { window, count_include_pad, .. }, _) => {
            avg_pool2d(&pool_shape(shape(0), out_shape(0), window), *count_include_pad, args[0], &mut y)
        }
        (Op::GlobalAveragePool | Op::GlobalMaxPool, _) => {
            let s = shape(0);
            let (channels, spatial) = (s[0] * s[1], s[2..].iter().product());
            if matches!(node.op, Op::GlobalAveragePool) {
                global_avg_pool(channels, spatial, args[0], &mut y)
            } else {
                global_max_pool(channels, spatial, args[0], &mut y)
            }
        }
        (Op::Reduce { op, axes, .. }, _) => reduce(*op, args[0], shape(0), axes, &mut y),
        (Op::Reshape { .. }, _) => y.copy_from_slice(args[0]),
        (Op::Transpose { perm }, _) => layout::transpose(args[0], shape(0), perm, &mut y),
        (Op::Concat { axis }, _) => {
            let parts: Vec<(&[f32], &[usize])> = args.iter().enumerate().map(|(i, a)| (*a, shape(i))).collect();
            layout::concat(&parts, *axis, &mut y);
        }
        (Op::Split { axis, sizes }, _) => {
            let mut outs: Vec<Vec<f32>> = (0..node.outputs.len()).map(|i| vec![0f32; out_len(i)]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
            layout::split(args[0], shape(0), *axis, sizes, &mut views);
            return Ok(outs);
        }
        (Op::Slice { starts, steps, .. }, _) => layout::slice(args[0], shape(0), starts, steps, &mut y, out_shape(0)),
        (Op::Pad { begin, end, mode }, _) => layout::pad(args[0], shape(0), begin, end, *mode, &mut y),
        (Op::Resize { mode, coord, nearest, scales, .. }, _) => {
            resize::resize(args[0], shape(0), &mut y, out_shape(0), scales.as_deref(), *mode, *coord, *nearest)
        }
        (Op::Gather { axis, indices, .. }, _) => layout::gather(args[0], shape(0), *axis, indices, &mut y),
    }
    Ok(vec![y])
}

fn transpose2d(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    layout::transpose(a, &[rows, cols], &[1, 0], &mut t);
    t
}

/// numpy matmul with batch broadcasting, for operands computed at run time.
fn matmul(a: &[f32], sa: &[usize], b: &[f32], sb: &[usize], y: &mut [f32], sy: &[usize]) {
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
    let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch_a = &a2[..a2.len() - 2];
    let batch_b = &b2[..b2.len() - 2];
    let batch: Vec<usize> = crate::kernels::elementwise::broadcast_shape(batch_a, batch_b).expect("checked by shape inference");
    let count: usize = batch.iter().product();
    debug_assert_eq!(count * m * n, sy.iter().product::<usize>());
    // Flat offset of batch index `i` in an operand whose batch dims broadcast to `batch`.
    let offset = |shape: &[usize], i: usize| -> usize {
        let mut rem = i;
        let mut off = 0;
        let mut stride = 1;
        for a in (0..batch.len()).rev() {
            let idx = rem % batch[a];
            rem /= batch[a];
            let k = a as isize - (batch.len() - shape.len()) as isize;
            if k >= 0 {
                let d = shape[k as usize];
                off += if d == 1 { 0 } else { idx * stride };
                stride *= d;
            }
        }
        off
    };
    for i in 0..count {
        let ao = offset(batch_a, i) * m * k;
        let bo = offset(batch_b, i) * k * n;
        let pa = PackedA::pack(&a[ao..ao + m * k], m, k, k);
        let pb = PackedB::pack(&b[bo..bo + k * n], k, n, n);
        gemm(&pa, &pb, &mut y[i * m * n..(i + 1) * m * n], n, GemmBias::None, Activation::Identity);
    }
}
