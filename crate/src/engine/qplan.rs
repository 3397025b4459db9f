//! The integer plan of a node in a quantized (annotated) graph, shared by the int8 engine and
//! the simulation so that they cannot drift apart.
//!
//! [`plan_node`] decides whether a node has an integer form (the int8 engine runs every other
//! node in float, and so does the simulation) and derives everything that fixes its integers:
//! weight integers, int32 biases, requantizers, output clamps (fused ReLU/Clip), lookup tables,
//! rescale tables and index maps. [`IntOp`] holds them unpacked; the int8 engine packs them
//! for its kernels (`engine::int8`), the simulation runs the FP32 kernels on them
//! (`engine::sim`). Both start from [`quant_params`], the parameters of every value.

use std::sync::Arc;

use crate::ir::{activation_name, Activation, BinaryOp, Conv, Fusion, Graph, Node, Op, PadMode, Quant, ReduceOp, ResizeMode, ValueId};
use crate::kernels::conv::Conv2dShape;
use crate::kernels::int8::{lut_from_fn, quantize_f32, quantize_symmetric_into, Qs8AddParams, Requantization, Requantizer};
use crate::kernels::pool::Pool2dShape;
use crate::kernels::{layout, resize};
use crate::quant::params::{check_bits, ChannelParams, QuantParams};
use super::{conv_shape, ort_fusion, pool_shape};
use crate::{Error, Result};

/// The int8 form of a value's [`QuantParams`]: int8 storage, the width's integer range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Qp {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i8,
    pub qmax: i8,
}

impl Qp {
    /// From validated parameters.
    pub fn new(p: &QuantParams) -> Qp {
        let p = p.with_storage(true);
        Qp { scale: p.scale, zero_point: p.zero_point, qmin: p.qmin() as i8, qmax: p.qmax() as i8 }
    }

    /// The simulation's quantizer (`fp32::fake_quantize`) in int8 storage: the same integer
    /// shifted by the storage offset, so dequantizing gives the same f32.
    #[inline]
    pub fn quantize(&self, x: f32) -> i8 {
        quantize_f32(x, self.scale, self.zero_point, self.qmin as i32, self.qmax as i32) as i8
    }

    /// `scale · (q - zero_point)`, the simulation's expression bit for bit.
    #[inline]
    pub fn dequantize(&self, q: i8) -> f32 {
        self.scale * (q as i32 - self.zero_point) as f32
    }
}

/// A table from one quantization to another, when they differ (see the module docs).
pub(crate) type Rescale = Option<Box<[i8; 256]>>;

pub(crate) fn rescale(x: Qp, y: Qp) -> Rescale {
    (x != y).then(|| Box::new(lut_from_fn(|v| v, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax)))
}

/// The output clamp and zero point of a kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clamp {
    pub zero_point: i32,
    pub qmin: i8,
    pub qmax: i8,
}

/// How two operands broadcast to an output: `outer` blocks of `inner` output elements, in each
/// of which an operand is a contiguous slice of `inner` values (`*_len == inner`) or a single
/// value (`*_len == 1`). Same shapes are one block; a per-channel operand of NCHW is one block
/// per channel.
#[derive(Clone, Debug)]
pub(crate) struct Broadcast {
    pub inner: usize,
    pub a_len: usize,
    pub b_len: usize,
    /// The outer axes and each operand's strides along them (0 where it is broadcast).
    pub outer: Vec<usize>,
    a_strides: Vec<usize>,
    b_strides: Vec<usize>,
}

impl Broadcast {
    /// For shapes that broadcast (numpy rules) to `out`.
    pub fn new(a: &[usize], b: &[usize], out: &[usize]) -> Broadcast {
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
    pub fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
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

/// The integers of a Conv, Gemm or MatMul weight as the kernels read them, with what the plan
/// derives from them alone. They depend only on the weight's data and annotation and on the
/// node (Gemm's layout and alpha), so a re-plan after a change of activations' step sizes or
/// biases can keep them ([`plan_node_with`]).
pub(crate) struct WeightInts {
    /// `[n][k]` row-major: one row per output channel.
    pub q: Vec<i8>,
    /// Each channel's step size.
    pub scales: Vec<f32>,
    /// Per channel, `Σ_k q[c][k]` and `Σ_k |q[c][k]|`.
    pub sums: Vec<i64>,
    pub abs_sums: Vec<i64>,
}

impl WeightInts {
    /// From `[n][k]` integers and the `n` channels' scales.
    pub(crate) fn new(q: Vec<i8>, k: usize, scales: Vec<f32>) -> WeightInts {
        let rows = || q.chunks(k.max(1)).take(scales.len());
        let sums = rows().map(|row| row.iter().map(|&w| w as i64).sum()).collect();
        let abs_sums = rows().map(|row| row.iter().map(|&w| (w as i64).abs()).sum()).collect();
        WeightInts { sums, abs_sums, q, scales }
    }
}

/// The weight integers of a Conv, Gemm or MatMul node, `[n][k]` (see [`WeightInts`]).
pub(crate) fn weight_ints(g: &Graph, node: &Node) -> std::result::Result<WeightInts, String> {
    let shape = |v: ValueId| g.values[v].shape.as_slice();
    match &node.op {
        Op::Conv(_) => {
            let (q, sw) = weight_q(g, node.inputs[1], 0)?;
            let k = q.len() / sw.len().max(1);
            Ok(WeightInts::new(q, k, sw))
        }
        Op::Gemm { trans_a, trans_b, alpha, .. } => {
            let xs = shape(node.inputs[0]);
            let k = if *trans_a { xs[0] } else { xs[1] };
            let n = shape(node.outputs[0])[1];
            let (mut q, sw) = weight_q(g, node.inputs[1], if *trans_b { 0 } else { 1 })?;
            if !*trans_b {
                q = transpose2d(&q, k, n);
            }
            if *alpha < 0.0 {
                q = q.iter().map(|w| w.checked_neg()).collect::<Option<_>>().ok_or("the weight holds -128, which a negative alpha cannot negate")?;
            }
            Ok(WeightInts::new(q, k, sw))
        }
        Op::MatMul => {
            let b = node.inputs[1];
            if shape(b).len() != 2 {
                return Err(format!("the weight '{}' is not a constant 2-D matrix", g.values[b].name));
            }
            let (k, n) = (shape(b)[0], shape(b)[1]);
            let (q, sw) = weight_q(g, b, 1)?;
            Ok(WeightInts::new(transpose2d(&q, k, n), k, sw))
        }
        op => Err(format!("{} has no weight", op.name())),
    }
}

/// The integers of a Conv, Gemm or MatMul: output channel `c` of an input `x` (integers, zero
/// point `zx`) is `out.clamp(out.zero_point + requant[c].apply(bias[c] + Σ_k (x[k] - zx) · q[c][k]))`.
pub(crate) struct IntWeights {
    /// `q`: `[n][k]` row-major, one row per output channel.
    pub ints: Arc<WeightInts>,
    pub n: usize,
    pub k: usize,
    pub bias: Vec<i32>,
    /// The input's parameters: `zx = x.zero_point`, and `q - zx` lies in `[x.qmin - zx,
    /// x.qmax - zx]`.
    pub x: Qp,
    pub requant: Vec<Requantizer>,
    pub out: Clamp,
}

/// The integer form of a node, unpacked.
pub(crate) enum IntOp {
    /// `[out_c][in_c / group][kh][kw]` weights.
    Conv { shape: Conv2dShape, w: IntWeights },
    /// Gemm, or MatMul with a constant 2-D weight: `[m][k]` input (`[k][m]` when `trans_a`),
    /// weights `[n][k]`.
    Gemm { w: IntWeights, trans_a: bool, m: usize, k: usize },
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
    AvgPool {
        shape: Pool2dShape,
        count_include_pad: bool,
        x: Qp,
        y: Qp,
        convention: Requantization,
    },
    /// GlobalAveragePool and ReduceMean over trailing axes.
    GlobalAvg {
        channels: usize,
        spatial: usize,
        x: Qp,
        y: Qp,
        convention: Requantization,
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

/// The parameters of every value of a validated graph: per value, its int8 parameters when it
/// is stored as int8 (`Quant::Tensor`), and the integers of a constant so annotated. Errors on
/// data that does not fit its shape and on invalid annotations, which no integer plan holds.
#[allow(clippy::type_complexity)]
pub(crate) fn quant_params(graph: &Graph) -> Result<(Vec<Option<Qp>>, Vec<Option<Vec<i8>>>)> {
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
    Ok((qparams, const_q))
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

/// The requantizer of the real multiplier `m` (`fp32`: the same, computed in f32 as the
/// deployment runtime does) in `convention`, or why the kernels cannot use it: `m` must be
/// below `MAX_REAL`, and every accumulator up to `max_acc` in magnitude must stay inside i32
/// after the requantizer's left shift (the kernels wrap there, and debug builds panic).
pub(crate) fn requantizer(m: f64, fp32: f32, max_acc: i64, convention: Requantization) -> std::result::Result<Requantizer, String> {
    for m in [m, fp32 as f64] {
        if !(m.is_finite() && (0.0..Requantizer::MAX_REAL).contains(&m)) {
            return Err(format!("requantization multiplier {m:e} is out of range"));
        }
    }
    let rq = convention.requantizer(m, fp32);
    check_range(&rq, max_acc)?;
    Ok(rq)
}

/// The per-output-channel requantizers of a Conv, Gemm or MatMul, `sx · sw[c] · alpha / sy`
/// (in f32 in that order, as onnxruntime computes them), or why one is out of range: the f32
/// value is checked too, since it can round up to the limit from just below.
pub(crate) fn weight_requantizers(x: Qp, sw: &[f32], alpha: f32, y: Qp, convention: Requantization) -> std::result::Result<Vec<Requantizer>, String> {
    sw.iter().map(|&s| requantizer(x.scale as f64 * s as f64 * alpha as f64 / y.scale as f64, x.scale * s * alpha / y.scale, 0, convention)).collect()
}

fn check_range(rq: &Requantizer, max_acc: i64) -> std::result::Result<(), String> {
    if max_acc > i32::MAX as i64 {
        return Err(format!("its int32 accumulators may overflow (up to {max_acc} in magnitude)"));
    }
    // `Requantizer::apply` returns an i32.
    if max_acc as f64 * rq.real() >= i32::MAX as f64 {
        return Err(format!("requantization multiplier {:e} takes accumulators of up to {max_acc} past int32", rq.real()));
    }
    Ok(())
}

/// The integers of a constant weight and the scale of each of its `shape[channel_axis]` output
/// channels, or why it is not an int8 weight.
pub(crate) fn weight_q(g: &Graph, v: ValueId, channel_axis: usize) -> std::result::Result<(Vec<i8>, Vec<f32>), String> {
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
            // Run by run of one channel's scale, into a buffer of the final size: QAT re-plans
            // every step, and an index division per weight, then a flattening iterator that
            // grew its vector and a `rintf` call per weight, were most of the planning time.
            let mut q = Vec::with_capacity(data.len());
            for (r, run) in data.chunks(inner.max(1)).enumerate() {
                let s = c.scale(r % channels.max(1));
                quantize_symmetric_into(run, s, qmax, &mut q);
            }
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

/// The i32 biases of weights `w` with real biases `bias` at `acc_scales[c]`, checking that
/// no accumulator of channel `c` overflows with `requant[c]`.
///
/// A bias so large that an accumulator could leave int32 is moved toward zero until none can.
/// onnxruntime's quantizer writes such biases (within 2^18 of `i32::MIN`) for channels whose
/// weights are all near zero, so that the bias alone sets the output; moving it by the excess
/// over the accumulator bound (in those files 13,000 to 231,000, at most a ten-thousandth of
/// it) moves those outputs by far less than a step. Refusing the channel instead would put the
/// whole layer in float.
fn channel_biases(w: &WeightInts, bias: Option<&[f32]>, acc_scales: &[f32], zx: i32, requant: &[Requantizer]) -> std::result::Result<Vec<i32>, String> {
    let mut out = Vec::with_capacity(acc_scales.len());
    for (c, &acc_scale) in acc_scales.iter().enumerate() {
        let b = match bias {
            Some(b) => bias_q(b[c], acc_scale)?,
            None => 0,
        };
        let (sum, abs_sum) = (w.sums[c], w.abs_sums[c]);
        // The packers fold the zero point into the bias; inputs then are in [-128, 127].
        let spread = 128 * abs_sum;
        let room = i32::MAX as i64 - spread;
        let folded = (b - zx as i64 * sum).clamp(-room, room);
        let b = folded + zx as i64 * sum;
        if room < 0 || i32::try_from(b).is_err() {
            return Err(format!("its int32 accumulators may overflow (up to {} in magnitude)", (b - zx as i64 * sum).abs() + spread));
        }
        check_range(&requant[c], folded.abs() + spread)?;
        out.push(b as i32);
    }
    Ok(out)
}

/// The integer form of `node`, or why it runs in float. `qparams` are the values' parameters
/// from [`quant_params`]; the graph is validated.
pub(crate) fn plan_node(g: &Graph, qparams: &[Option<Qp>], node: &Node) -> std::result::Result<IntOp, String> {
    plan_node_with(g, qparams, node, &mut |node| weight_ints(g, node).map(Arc::new))
}

/// [`plan_node`] with the weight integers of Conv, Gemm and MatMul from `weights` (which must
/// give [`weight_ints`]'s, or a copy of them kept from an earlier plan).
pub(crate) fn plan_node_with(g: &Graph, qparams: &[Option<Qp>], node: &Node, weights: &mut dyn FnMut(&Node) -> std::result::Result<Arc<WeightInts>, String>) -> std::result::Result<IntOp, String> {
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
    let convention = g.requantization;
    let table = |f: &dyn Fn(f32) -> f32| Box::new(lut_from_fn(f, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax));
    Ok(match &node.op {
        Op::Conv(c) => {
            let out = fused_clamp(c.activation, y)?;
            let s = conv_shape(g, node, &c.window, c.group);
            let ints = weights(node)?;
            let sw = &ints.scales;
            let bias = match node.inputs.get(2) {
                Some(&b) => Some(g.const_data(b).ok_or_else(|| format!("the bias '{}' is computed at run time", g.values[b].name))?),
                None => None,
            };
            let requant = weight_requantizers(x, sw, 1.0, y, convention)?;
            let acc_scales: Vec<f32> = sw.iter().map(|&s| x.scale * s).collect();
            let k = ints.q.len() / s.out_c.max(1);
            let bias = channel_biases(&ints, bias, &acc_scales, x.zero_point, &requant)?;
            IntOp::Conv { shape: s, w: IntWeights { ints, n: s.out_c, k, bias, x, requant, out } }
        }
        // `trans_b` and the sign of alpha are in the weight integers' layout.
        Op::Gemm { trans_a, trans_b: _, alpha, beta, activation } => {
            let out = fused_clamp(*activation, y)?;
            let (m, k) = if *trans_a { (xs[1], xs[0]) } else { (xs[0], xs[1]) };
            let n = ys[1];
            if !(alpha.is_finite() && *alpha != 0.0) {
                return Err(format!("alpha {alpha} has no int8 form"));
            }
            let ints = weights(node)?;
            let sw = &ints.scales;
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
            let requant = weight_requantizers(x, sw, alpha.abs(), y, convention)?;
            let acc_scales: Vec<f32> = sw.iter().map(|&s| x.scale * s * alpha.abs()).collect();
            let bias = channel_biases(&ints, bias.as_deref(), &acc_scales, x.zero_point, &requant)?;
            IntOp::Gemm { w: IntWeights { ints, n, k, bias, x, requant, out }, trans_a: *trans_a, m, k }
        }
        Op::MatMul => {
            let b = node.inputs[1];
            if shape(b).len() != 2 {
                return Err(format!("the weight '{}' is not a constant 2-D matrix", g.values[b].name));
            }
            let (k, n) = (shape(b)[0], shape(b)[1]);
            let m: usize = xs[..xs.len() - 1].iter().product();
            let ints = weights(node)?;
            let sw = &ints.scales;
            let requant = weight_requantizers(x, sw, 1.0, y, convention)?;
            let bias = channel_biases(&ints, None, &vec![1.0; n], x.zero_point, &requant)?;
            let out = Clamp { zero_point: y.zero_point, qmin: y.qmin, qmax: y.qmax };
            IntOp::Gemm { w: IntWeights { ints, n, k, bias, x, requant, out }, trans_a: false, m, k }
        }
        Op::Binary(op) => {
            let b = input(1)?;
            let broadcast = Broadcast::new(xs, shape(node.inputs[1]), ys);
            if *op == BinaryOp::Mul {
                // |(a - za) · (b - zb)| <= 255².
                let requant = requantizer(x.scale as f64 * b.scale as f64 / y.scale as f64, x.scale * b.scale / y.scale, 255 * 255, convention)?;
                IntOp::Mul { requant, zero_points: [x.zero_point, b.zero_point], broadcast, out: Clamp { zero_point: y.zero_point, qmin: y.qmin, qmax: y.qmax } }
            } else {
                let complement_b = *op == BinaryOp::Sub;
                let zb = if complement_b { -b.zero_point - 1 } else { b.zero_point };
                let ratio = x.scale.max(b.scale) as f64 / y.scale as f64;
                if ratio.is_nan() || ratio >= Qs8AddParams::MAX_RATIO {
                    return Err(format!("requantization multiplier {ratio:e} (input over output scale) is out of range for the int8 Add (below 2^19)"));
                }
                let params = match convention {
                    Requantization::FixedPoint => Qs8AddParams::new(x.scale, x.zero_point, b.scale, zb, y.scale, y.zero_point, y.qmin, y.qmax),
                    Requantization::Fp32 => {
                        // onnxruntime fuses an Add (not a Sub) of uint8 tensors into QLinearAdd.
                        let uint8 = !complement_b && [node.inputs[0], node.inputs[1], node.outputs[0]].iter().all(|&v| uint8_in_onnxruntime(g, v));
                        Qs8AddParams::new(x.scale, x.zero_point, b.scale, zb, y.scale, y.zero_point, y.qmin, y.qmax).in_fp32(uint8)
                    }
                };
                IntOp::Add { params, broadcast, complement_b }
            }
        }
        Op::Activation(act) => IntOp::Lut(table(&|v| act.apply_scalar(v))),
        Op::Unary(op) => IntOp::Lut(table(&|v| op.apply_scalar(v))),
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
            IntOp::PRelu { luts, slope_lut, broadcast: Broadcast::new(xs, shape(s), ys) }
        }
        Op::MaxPool { window, .. } => {
            // A window without input taps gives -128, below the range of narrower widths: the
            // identity table clamps it (and maps every other integer to itself).
            let rescale = (x != y || x.qmin > i8::MIN).then(|| table(&|v| v));
            IntOp::MaxPool { shape: pool_shape(xs, ys, window), rescale }
        }
        Op::AveragePool { window, count_include_pad, .. } => {
            let s = pool_shape(xs, ys, window);
            let area = s.kernel_h * s.kernel_w;
            // The kernel indexes its requantizers by u16 and sums in i32.
            if area > u16::MAX as usize {
                return Err(format!("a {}x{} window is too large for the int8 kernel", s.kernel_h, s.kernel_w));
            }
            for count in 1..=area {
                requantizer(x.scale as f64 / (y.scale as f64 * count as f64), x.scale / (y.scale * count as f32), 255 * count as i64, convention)?;
            }
            IntOp::AvgPool { shape: s, count_include_pad: *count_include_pad, x, y, convention }
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
                    requantizer(x.scale as f64 / (y.scale as f64 * spatial as f64), x.scale / (y.scale * spatial as f32), 255 * spatial as i64, convention)?;
                }
                IntOp::GlobalAvg { channels, spatial, x, y, convention }
            } else {
                let rescale = (x != y || x.qmin > i8::MIN).then(|| table(&|v| v));
                IntOp::GlobalMax { channels, spatial, rescale }
            }
        }
        Op::Concat { .. } => IntOp::Concat { rescale: node.inputs.iter().map(|&i| rescale(qparams[i].expect("checked"), y)).collect() },
        Op::Pad { mode, .. } => {
            let pad = match *mode {
                PadMode::Constant(v) => PadMode::Constant(y.quantize(v)),
                PadMode::Reflect => PadMode::Reflect,
                PadMode::Edge => PadMode::Edge,
            };
            IntOp::Move { pre: rescale(x, y), post: vec![None], pad }
        }
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::Split { .. } | Op::Gather { .. } => {
            IntOp::Move { pre: None, post: outs.iter().map(|&o| rescale(x, o)).collect(), pad: PadMode::Constant(0) }
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
            IntOp::ResizeNearest { source: source.iter().map(|&i| i as u32).collect(), rescale: rescale(x, y) }
        }
        Op::ConvTranspose(_) | Op::Softmax { .. } => unreachable!("unsupported ops returned above"),
    })
}

/// Whether onnxruntime's kernels see a value as uint8, which decides how it computes an Add (see
/// `Qs8AddParams::fp32`): as stored (our graphs and exports), or, in a foreign graph, after
/// onnxruntime's own int8 → uint8 conversion (`ort_fusion::storage`).
fn uint8_in_onnxruntime(g: &Graph, v: ValueId) -> bool {
    match g.fusion {
        Fusion::Integer => matches!(&g.values[v].quant, Some(Quant::Tensor(p)) if !p.signed),
        Fusion::Onnxruntime => ort_fusion::storage(g, v, ort_fusion::readers(g, v)) == Some(ort_fusion::Storage::Uint8),
    }
}

fn transpose2d(a: &[i8], rows: usize, cols: usize) -> Vec<i8> {
    let mut t = vec![0i8; a.len()];
    layout::transpose(a, &[rows, cols], &[1, 0], &mut t);
    t
}
