//! The simulation of a quantized graph's integer nodes: the FP32 engine computes, for every node
//! the int8 engine runs with integer kernels, the very integers that engine computes, while
//! staying a float executor (f32 buffers, FP32 kernels, every value observable as f32).
//!
//! # How
//! Each node gets the int8 engine's own integer plan ([`plan_node`]: same weights, biases,
//! requantizers, clamps and tables, derived by the same code), so the two cannot drift apart.
//! An annotated input holds values on its grid, `s · (q - z)`, and `quantize` recovers `q`
//! exactly (the relative error of `s · (q - z) / s` is far below `0.5 / 255`).
//! - **Conv, in wasm**: the int8 engine's own kernels (GEMM, pair-plane depthwise) on the
//!   input's integers, stopped before requantization (`PackedQs8Conv2d::run_accumulators`, the
//!   i32 accumulators without bias, which fit i32 wherever `255 · Σ|w| < 2^31`); in SIMD128
//!   they are about twice as fast as the FP32 kernels. Natively the int8 kernels are the
//!   portable fallbacks, slower than the autovectorised FP32 ones, so convolutions there take
//!   the path below (both give the same integers; `train::tape`'s tests run both).
//! - **Gemm, MatMul** (and every Conv natively): the FP32 kernels run on integer operands, `q - zx` for the input
//!   (padding reads 0, the real 0, as the int8 kernels read the zero point) and the weights'
//!   integers, without bias or activation. Every product and partial sum is an integer; f32
//!   holds all integers up to `2^24` exactly, and every partial sum of output channel `c`, in
//!   whatever order a kernel adds, is bounded by `Σ_k |w[c][k]| · max|q - zx|`. Where that bound
//!   can pass `2^24` for some channel, the reduction is cut at plan time into ranges that keep it
//!   below (one masked copy of the weights per range, summed in i64): the accumulator is exact
//!   on every path. The int32 bias is added and [`requantize_clamped`] (the kernels'
//!   fixed-point multiplier, single rounding and fused clamp) gives the output integer; it is
//!   computed in f64 for the channels where that is exact, as the int8 depthwise kernels do
//!   (see [`Epilogue::new`]), which vectorises.
//! - **Add, Sub, Mul, average pools, activations and PRelu as tables**: the int8 engine's own
//!   kernels on the integers ([`qs8_add`], [`qs8_mul`], [`qs8_lut`], [`Qs8AvgPool2d`],
//!   [`qs8_global_avg_pool`]; PRelu's per-channel tables), called as the engine calls them.
//! - **Max pools, Concat, data movement, nearest Resize** need nothing here: the int8 engine
//!   moves integers and rescales them with a table of `quantize_f32(sx · (q - zx))`, which is
//!   the float path's fake quantization of the moved (dequantized, monotonically ordered)
//!   values, so the plain FP32 node followed by fake quantization gives the same integers.
//! - Nodes the int8 engine runs in float run the same FP32 kernel on the same dequantized
//!   values in both (for the units onnxruntime leaves unfused in a foreign QDQ graph, the same
//!   MLAS-order Conv, `engine::ort_fusion`).
//!
//! Outputs are dequantized with the simulation's expression `s · (q - z)`, which is what the
//! int8 engine's observer and outputs give too: the two agree bit for bit.
//!
//! # Users
//! `Fp32Engine::new` on an annotated graph, and QAT's tape (`train::tape`), which takes the
//! values its consumers read from [`SimNode::run_into`] so that training sees the int8 engine's
//! numbers. For Conv and Gemm the tape also takes the values before rounding from it
//! ([`SimNode::gives_real`]: the exact accumulator scaled by `sx · sw`, fused clamp applied),
//! the float node's output without running the float node.
//!
//! # Cost
//! Planned once per graph, and only for an annotated one (an FP32 graph plans and runs exactly
//! as before): the weights' integers are packed for the kernels in place of their float
//! values. A run adds, per integer node, the product of each input element by its inverse
//! scale (to recover its integer) and a fixed-point requantization per output element, in
//! place of the fake quantization of each output element. In wasm the int8 sums make the
//! simulated EfficientNet-Lite0 about as fast as its FP32 forward (`node bench/run.mjs
//! qat-profile`); natively it is within about 15% of the plain fake-quantized graph
//! (`tests/sim_vs_int8.rs` prints both). QAT plans again after every optimizer step (the
//! integers follow the parameters) through a [`PlanCache`], which keeps each node's weight
//! integers and packed weights while the weight's data, annotation and node are unchanged: a
//! re-plan in scales mode then compares the weights with their copies and derives biases,
//! requantizers and tables, about 4 ms natively on EfficientNet-Lite0 against 77 ms without.
//! In full mode every weight changes and is quantized and packed again: 33-42 ms natively
//! (`replan_cost` below; the weights' quantization was 70% of it before it vectorised).

use std::ops::Range;
use std::sync::Arc;

use super::ort_fusion;
use super::qplan::{plan_node_with, quant_params, weight_ints, Clamp, IntOp, IntWeights, Qp, WeightInts};
use crate::ir::{Activation, Graph, Node, Op};
use crate::kernels::conv::PackedConv2d;
use crate::kernels::gemm::{gemm, GemmBias, PackedA, PackedB};
use crate::kernels::int8::{qs8_add, qs8_global_avg_pool, qs8_lut, qs8_mul, requantize_clamped, PackedQs8Conv2d, Qs8AvgPool2d, Requantizer};
use crate::kernels::layout;
use crate::quant::Quant;
use crate::Result;

/// Integers whose every partial sum stays at most this are exact in f32.
const F32_EXACT: i64 = 1 << 24;

/// The integer plans of a graph's nodes, by node index: `None` for a node that runs as a plain
/// FP32 node (followed by fake quantization, that gives the int8 engine's values there). `None`
/// overall for a graph without annotations (nothing to simulate) or with annotations no integer
/// plan holds (the int8 engine rejects those graphs; the float path still fake-quantizes them
/// value by value).
pub(crate) fn plan(graph: &Graph) -> Option<Vec<Option<SimNode>>> {
    plan_reusing(graph, &mut PlanCache { keep: false, ..PlanCache::default() })
}

/// Whether convolutions take their sums from the int8 kernels by default: in wasm, where those
/// are SIMD128 and twice as fast as the FP32 ones; natively they are the portable fallbacks,
/// slower than the autovectorised FP32 kernels. Both give the same exact integers.
const INT8_SUMS: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

/// What a plan keeps for the next one: per node, the weight integers and their packed form,
/// with the weight data, annotation and node they came from. QAT plans again after every
/// optimizer step; in scales mode the weights do not change, and quantizing and packing every
/// weight again was most of a step's fixed cost. A copy of the weights is the price (about the
/// size of the float weights).
pub(crate) struct PlanCache {
    /// False for a one-off plan ([`plan`]), which keeps nothing.
    keep: bool,
    /// Convolutions sum with the int8 kernels (`ConvSums::Int8`).
    int8_sums: bool,
    nodes: Vec<Option<CachedWeights>>,
}

impl Default for PlanCache {
    fn default() -> Self {
        PlanCache { keep: true, int8_sums: INT8_SUMS, nodes: Vec::new() }
    }
}

struct CachedWeights {
    op: Op,
    data: Vec<f32>,
    quant: Option<Quant>,
    ints: Arc<WeightInts>,
    /// The packed reduction, for inputs with this zero point: of the input's parameters, the
    /// sums depend on that alone (the int8 kernels fold it into the packed weights; the plans
    /// take their accumulators, never their requantization). So a step size that changes (QAT
    /// learns them at every step) keeps the packing.
    packed: Option<(i32, Arc<Packed>)>,
}

/// A Conv's or Gemm's packed reduction.
enum Packed {
    Conv(ConvSums),
    /// One packed `[k][n]` weight per exact range of the reduction.
    Gemm(Vec<PackedB>),
}

/// Equal as the quantizer sees them: a weight compared with its copy, in blocks that vectorise.
fn same_data(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.chunks(64).zip(b.chunks(64)).all(|(x, y)| x.iter().zip(y).fold(true, |same, (p, q)| same & (p == q)))
}

impl PlanCache {
    /// A cache whose plans sum pointwise and im2col convolutions with the int8 kernels or not
    /// (the default follows the target).
    #[cfg(test)]
    pub(crate) fn with_int8_sums(int8_sums: bool) -> PlanCache {
        PlanCache { int8_sums, ..PlanCache::default() }
    }

    /// Per node, the address of its kept packed weights (0 for none), and what holds them (so
    /// that, while it lives, a new packing cannot reuse an address): what a test compares
    /// between plans.
    #[cfg(test)]
    pub(crate) fn packed_ids(&self) -> (Vec<usize>, Box<dyn std::any::Any>) {
        let kept: Vec<Option<Arc<Packed>>> = self.nodes.iter().map(|c| c.as_ref().and_then(|c| c.packed.as_ref()).map(|(_, p)| p.clone())).collect();
        (kept.iter().map(|p| p.as_ref().map_or(0, |p| Arc::as_ptr(p) as usize)).collect(), Box::new(kept))
    }

    /// Bytes kept besides the packed weights (which the plans count): the weights' copies and
    /// integers.
    pub(crate) fn bytes(&self) -> usize {
        self.nodes.iter().flatten().map(|c| 4 * c.data.len() + c.ints.q.len()).sum()
    }

    /// The weight integers of `node` (index `n`), kept when its weight and node are unchanged.
    fn weights(&mut self, g: &Graph, n: usize, node: &Node) -> std::result::Result<Arc<WeightInts>, String> {
        if !self.keep {
            return weight_ints(g, node).map(Arc::new);
        }
        let v = &g.values[node.inputs[1]];
        let data = v.data.as_deref().map_or(&[][..], |d| d.as_slice());
        if self.nodes.len() != g.nodes.len() {
            self.nodes = (0..g.nodes.len()).map(|_| None).collect();
        }
        if let Some(c) = &self.nodes[n] {
            if c.op == node.op && c.quant == v.quant && same_data(&c.data, data) {
                return Ok(c.ints.clone());
            }
        }
        let ints = Arc::new(weight_ints(g, node)?);
        // The old copy's buffer takes the new data: in full mode every weight changes every step.
        let mut copy = self.nodes[n].take().map_or_else(Vec::new, |c| c.data);
        copy.clear();
        copy.extend_from_slice(data);
        self.nodes[n] = Some(CachedWeights { op: node.op.clone(), data: copy, quant: v.quant.clone(), ints: ints.clone(), packed: None });
        Ok(ints)
    }

    /// The packed reduction of `w` (the integers [`weights`](Self::weights) gave for node
    /// `n`), packed by `pack` unless kept.
    fn packed(&mut self, n: usize, w: &IntWeights, pack: impl FnOnce() -> Packed) -> Arc<Packed> {
        if !self.keep {
            return Arc::new(pack());
        }
        let c = self.nodes[n].as_mut().expect("weights came first");
        match &c.packed {
            Some((zero_point, p)) if Arc::ptr_eq(&c.ints, &w.ints) && *zero_point == w.x.zero_point => p.clone(),
            _ => {
                let p = Arc::new(pack());
                c.packed = Some((w.x.zero_point, p.clone()));
                p
            }
        }
    }
}

/// [`plan`], keeping weight integers and packed weights in `cache` from one call to the next.
pub(crate) fn plan_reusing(graph: &Graph, cache: &mut PlanCache) -> Option<Vec<Option<SimNode>>> {
    if graph.values.iter().all(|v| v.quant.is_none()) || graph.validate().is_err() {
        return None;
    }
    let (qparams, _) = quant_params(graph).ok()?;
    let unfused = ort_fusion::unfused(graph);
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for (n, node) in graph.nodes.iter().enumerate() {
        // Nodes onnxruntime runs in float run as it runs them, in both engines.
        if unfused[n].is_some() {
            nodes.push(None);
            continue;
        }
        let Ok(op) = plan_node_with(graph, &qparams, node, &mut |node| cache.weights(graph, n, node)) else {
            nodes.push(None);
            continue;
        };
        let x = qparams[node.inputs[0]].expect("integer plans have int8 inputs");
        let y = qparams[node.outputs[0]].expect("integer plans have int8 outputs");
        let inputs = node.inputs.iter().map(|&i| qparams[i]).collect();
        // The fused activation, which the integer plans hold only as the output clamp.
        let act = match &node.op {
            Op::Conv(c) => c.activation,
            Op::Gemm { activation, .. } => *activation,
            _ => Activation::Identity,
        };
        let op = match op {
            IntOp::Conv { shape, w } => {
                let int8_sums = cache.int8_sums;
                let packed = cache.packed(n, &w, || {
                    Packed::Conv(match int8_sums.then(|| int8_accumulators(&shape, &w)).flatten() {
                        Some(conv) => ConvSums::Int8(Box::new(conv)),
                        None => ConvSums::Float(exact_ranges(&w).into_iter().map(|r| PackedConv2d::new(shape, &masked(&w, r), None, Activation::Identity)).collect()),
                    })
                });
                SimOp::Conv { packed, plane: (shape.out_h * shape.out_w).max(1), epilogue: Epilogue::new(w, act) }
            }
            IntOp::Gemm { w, trans_a, m, k } => {
                let packed = cache.packed(n, &w, || Packed::Gemm(exact_ranges(&w).into_iter().map(|r| PackedB::pack_transposed(&masked(&w, r), w.k, w.n, w.k)).collect()));
                SimOp::Gemm { packed, trans_a, m, k, epilogue: Epilogue::new(w, act) }
            }
            IntOp::AvgPool { shape, count_include_pad, x, y, convention } => {
                SimOp::AvgPool(Box::new(Qs8AvgPool2d::new(shape, count_include_pad, x.scale, x.zero_point, y.scale, y.zero_point, y.qmin, y.qmax, convention)))
            }
            op @ (IntOp::Add { .. } | IntOp::Mul { .. } | IntOp::Lut(_) | IntOp::PRelu { .. } | IntOp::GlobalAvg { .. }) => SimOp::Int(op),
            IntOp::MaxPool { .. } | IntOp::GlobalMax { .. } | IntOp::Concat { .. } | IntOp::Move { .. } | IntOp::ResizeNearest { .. } => {
                nodes.push(None);
                continue;
            }
        };
        nodes.push(Some(SimNode { op, x, y, inputs }));
    }
    Some(nodes)
}

/// One node simulated on its integers.
pub(crate) struct SimNode {
    op: SimOp,
    /// The parameters of input 0 and output 0, and of every input (`None` for f32 ones).
    x: Qp,
    y: Qp,
    inputs: Vec<Option<Qp>>,
}

enum SimOp {
    /// `packed` is a `Packed::Conv`.
    Conv { packed: Arc<Packed>, plane: usize, epilogue: Epilogue },
    /// `packed` is a `Packed::Gemm`.
    Gemm { packed: Arc<Packed>, trans_a: bool, m: usize, k: usize, epilogue: Epilogue },
    AvgPool(Box<Qs8AvgPool2d>),
    /// Add/Sub, Mul, tables and global average pools, straight from the integer plan.
    Int(IntOp),
}

/// How a Conv computes its exact sums `Σ (x - zx) · w`.
enum ConvSums {
    /// The int8 engine's own kernels, stopped before requantization
    /// (`PackedQs8Conv2d::run_accumulators`), where the accumulators stay inside i32 without
    /// the bias.
    Int8(Box<PackedQs8Conv2d>),
    /// One packed FP32 convolution per exact range of the reduction.
    Float(Vec<PackedConv2d>),
}

/// The int8 convolution that gives the accumulators of `w` without bias (its requantizers and
/// clamp are `w`'s, unused), where the int8 kernels have them and they fit i32:
/// `|Σ (x - zx) · w| <= 255 · Σ |w|`. The plan checked the accumulators with the bias, which
/// can cancel part of the zero-point term, so this bound is checked again.
fn int8_accumulators(shape: &crate::kernels::conv::Conv2dShape, w: &IntWeights) -> Option<PackedQs8Conv2d> {
    let fits = w.ints.abs_sums.iter().all(|&s| 255 * s <= i32::MAX as i64);
    fits.then(|| PackedQs8Conv2d::new(*shape, &w.ints.q, None, w.x.zero_point, w.requant.clone(), w.out.zero_point, w.out.qmin, w.out.qmax))
}

/// Buffers of simulated runs, reused across nodes and frames.
#[derive(Default)]
pub(crate) struct SimScratch {
    /// The FP32 kernels' scratch.
    f32s: Vec<f32>,
    /// Input 0 as centred integers in f32 (FP32 kernels) or as int8 (int8 kernels).
    centred: Vec<f32>,
    ints: Vec<i8>,
    /// The int8 kernels' scratch and accumulators.
    packing: Vec<i8>,
    sums: Vec<i32>,
}

/// Accumulators of a Conv or Gemm: in the output buffer as exact f32 integers, or beside it.
#[derive(Clone, Copy)]
enum Sums<'a> {
    InPlace,
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> Sums<'a> {
    fn range(self, start: usize, len: usize) -> Sums<'a> {
        match self {
            Sums::InPlace => Sums::InPlace,
            Sums::I32(s) => Sums::I32(&s[start..][..len]),
            Sums::I64(s) => Sums::I64(&s[start..][..len]),
        }
    }
}

/// Bias, requantization and clamp of a Conv or Gemm output channel.
struct Epilogue {
    /// Length of the reduction.
    k: usize,
    bias: Vec<i32>,
    requant: Vec<Requantizer>,
    /// Per channel, where it is exact: the requantization as `(scale, half)` of the f64 formula
    /// (see [`Epilogue::new`]); never in the f32 convention, whose own formula vectorises.
    exact_f64: Vec<Option<(f64, f64)>>,
    out: Clamp,
    /// The fused activation, for the values before rounding (the clamp above is its integer form).
    act: Activation,
}

/// `1.5 · 2^52`: adding it to a double of magnitude below `2^51` rounds it to an integer.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

impl Epilogue {
    /// The requantization `apply(acc) = floor(acc · multiplier · 2^-t + 1/2)` (`t = 31 - shift`)
    /// is computed in f64 where that is exact, as the int8 depthwise kernels do (proof in
    /// `kernels::int8::requant::PreparedRequant`): when every accumulator of the channel has
    /// `|acc| · multiplier < 2^52`, `x = acc · (multiplier · 2^-t)` is exact, so is
    /// `x + 2^-(t+1)`, which lies strictly between two half-integers (`x` is a multiple of
    /// `2^-t`), and adding `1.5 · 2^52` rounds it to `apply(acc)` without a tie. This vectorises
    /// where the i64 product does not (a third of the time natively); other channels keep the
    /// integer `apply`. `|acc| <= |bias| + Σ_k |w[c][k]| · max|x - zx|`.
    fn new(w: IntWeights, act: Activation) -> Epilogue {
        let spread = (w.x.qmax as i64 - w.x.zero_point as i64).max(w.x.zero_point as i64 - w.x.qmin as i64);
        let exact_f64 = w
            .ints
            .abs_sums
            .iter()
            .zip(&w.bias)
            .zip(&w.requant)
            .map(|((&abs_sum, &bias), rq)| {
                if rq.fp32_scale().is_some() {
                    return None;
                }
                let bound = (bias as i64).abs() + spread * abs_sum;
                let t = 31 - rq.shift();
                ((bound as i128) * (rq.multiplier() as i128) < 1i128 << 52).then(|| (rq.multiplier() as f64 * 2f64.powi(-t), 2f64.powi(-t - 1)))
            })
            .collect();
        Epilogue { k: w.k, bias: w.bias, requant: w.requant, exact_f64, out: w.out, act }
    }

    /// Replaces the outputs of `out` by their values dequantized with `y`, from the sums
    /// `Σ (x - zx) · w` in `sums` (in `out` itself as f32, or beside it), channels in turn in
    /// runs of `run` elements. With `real`, also writes there the real values those outputs are
    /// the rounding of, activation applied: `act(y.scale · m_c · (bias_c + sum))`, where `m_c`
    /// is the multiplier the requantizer of channel `c` holds, so that `y.scale · m_c` is the
    /// accumulator's scale `sx · sw[c]` (within `2^-31`) and `real / y.scale` what the kernels
    /// round. In f32: an integer within `2^31` times a scale, two roundings, no more than the
    /// float node's own error.
    fn finish(&self, out: &mut [f32], sums: Sums, run: usize, y: Qp, mut real: Option<&mut [f32]>) {
        let Clamp { zero_point, qmin, qmax } = self.out;
        let (zp, lo, hi) = (zero_point as f64, qmin as f64, qmax as f64);
        for (i, chunk) in out.chunks_mut(run).enumerate() {
            let c = i % self.bias.len();
            let (bias, rq) = (self.bias[c], &self.requant[c]);
            let sums = sums.range(i * run, chunk.len());
            if let Some(r) = real.as_deref_mut() {
                let (scale, b) = ((y.scale as f64 * rq.real()) as f32, bias as f32);
                let r = &mut r[i * run..][..chunk.len()];
                match sums {
                    Sums::InPlace => r.iter_mut().zip(chunk.iter()).for_each(|(r, &v)| *r = scale * (v + b)),
                    Sums::I32(s) => r.iter_mut().zip(s).for_each(|(r, &s)| *r = scale * s.wrapping_add(bias) as f32),
                    Sums::I64(s) => r.iter_mut().zip(s).for_each(|(r, &s)| *r = scale * (s + bias as i64) as f32),
                }
            }
            // The int8 plan checked that the accumulator with its bias fits i32 (its kernels
            // hold it there); a sum in f32 is an exact integer below 2^24. Every form gives the
            // same f32 as `y.dequantize(requantize_clamped(acc, ..))`.
            match self.exact_f64[c] {
                Some((scale, half)) => {
                    let output = |acc: f64| {
                        let q = ((acc * scale + half + ROUND_MAGIC) - ROUND_MAGIC) + zp;
                        let q = if q < lo { lo } else { q };
                        let q = if q > hi { hi } else { q };
                        y.scale * (q - zp) as f32
                    };
                    let b = bias as f64;
                    match sums {
                        Sums::InPlace => chunk.iter_mut().for_each(|v| *v = output(*v as f64 + b)),
                        Sums::I32(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output(s.wrapping_add(bias) as f64)),
                        Sums::I64(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output((s + bias as i64) as f64)),
                    }
                }
                None if rq.fp32_scale().is_some() => {
                    // `requantize_clamped` of the f32 convention: the same f32 product, clamped
                    // to the (integer) bounds before rounding, which commutes with the rounding;
                    // adding and subtracting 1.5 · 2^23 then rounds half to even in range.
                    const ROUND: f32 = 12_582_912.0;
                    let s = rq.fp32_scale().expect("matched");
                    let (lo, hi) = ((qmin as i32 - zero_point) as f32, (qmax as i32 - zero_point) as f32);
                    let output = |acc: f32| {
                        let v = (acc * s).max(lo).min(hi);
                        y.scale * ((v + ROUND) - ROUND)
                    };
                    // An f64 or i64 sum within i32 converts to the same f32 as the i32 does.
                    match sums {
                        Sums::InPlace => chunk.iter_mut().for_each(|v| *v = output((bias as f64 + *v as f64) as f32)),
                        Sums::I32(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output(s.wrapping_add(bias) as f32)),
                        Sums::I64(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output((bias as i64 + s) as i32 as f32)),
                    }
                }
                None => {
                    let output = |acc: i32| y.dequantize(requantize_clamped(acc, rq, zero_point, qmin, qmax));
                    match sums {
                        Sums::InPlace => chunk.iter_mut().for_each(|v| *v = output(bias.wrapping_add(*v as i32))),
                        Sums::I32(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output(s.wrapping_add(bias))),
                        Sums::I64(s) => chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = output((bias as i64 + s) as i32)),
                    }
                }
            }
        }
        if let Some(r) = real {
            self.act.apply(r);
        }
    }
}

/// Contiguous ranges of the reduction index `k` over which `Σ |w[c][k]| · max|x - zx|` stays
/// within [`F32_EXACT`] for every channel `c`: one range for all but very long reductions of
/// large weights. A single term is at most `127 · 255 < 2^24`, so every range is non-empty.
fn exact_ranges(w: &IntWeights) -> Vec<Range<usize>> {
    let zx = w.x.zero_point as i64;
    let spread = (w.x.qmax as i64 - zx).max(zx - w.x.qmin as i64);
    // The usual case, in one pass along the rows: no channel's whole reduction can pass it.
    if w.ints.abs_sums.iter().all(|&s| s * spread <= F32_EXACT) {
        return std::iter::once(0..w.k).collect();
    }
    let mut bound = vec![0i64; w.n];
    let mut ranges = Vec::new();
    let mut start = 0;
    for r in 0..w.k {
        let term = |c: usize| (w.ints.q[c * w.k + r] as i64).abs() * spread;
        if (0..w.n).any(|c| bound[c] + term(c) > F32_EXACT) {
            ranges.push(start..r);
            start = r;
            bound.fill(0);
        }
        for (c, b) in bound.iter_mut().enumerate() {
            *b += term(c);
        }
    }
    ranges.push(start..w.k);
    ranges
}

/// The weights' integers as f32, zero outside the reduction range `keep`.
fn masked(w: &IntWeights, keep: Range<usize>) -> Vec<f32> {
    let mut out = vec![0f32; w.ints.q.len()];
    for (o, q) in out.chunks_mut(w.k.max(1)).zip(w.ints.q.chunks(w.k.max(1))) {
        o[keep.clone()].iter_mut().zip(&q[keep.clone()]).for_each(|(o, &q)| *o = q as f32);
    }
    out
}

/// Runs the FP32 kernels of a reduction over its weight ranges. With one range (the usual
/// case) `out` holds the exact integer sums; with several, each range's sums are exact in f32
/// but their total need not be, so it is returned in i64.
fn sum_parts<P>(parts: &[P], out: &mut [f32], mut run: impl FnMut(&P, &mut [f32])) -> Option<Vec<i64>> {
    if let [part] = parts {
        run(part, out);
        return None;
    }
    let mut sums = vec![0i64; out.len()];
    for part in parts {
        out.fill(0.0);
        run(part, out);
        sums.iter_mut().zip(out.iter()).for_each(|(s, &p)| *s += p as i64);
    }
    Some(sums)
}

/// The integer `q - zero_point` of `v`, a computed value on the grid of `p`, given
/// `inv_scale = 1 / p.scale` (rounded). `v` is `scale · n` rounded once, `n` an integer in
/// `[-255, 255]`, so `v · inv_scale` is `n` within three relative roundings of `2^-24`, about
/// `5e-5` at most: any rounding to nearest gives `n`, and a product is several times cheaper
/// than a quotient. Adding `1.5 · 2^23` rounds it into the low mantissa bits, which vectorises,
/// where `round_ties_even` is a library call on targets without a rounding instruction.
#[inline]
fn centred_int(v: f32, inv_scale: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v * inv_scale + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32)
}

impl SimNode {
    /// The node's output on inputs on their grids (or f32 where not quantized), dequantized.
    pub(crate) fn run(&self, g: &Graph, node: &Node, args: &[&[f32]], scratch: &mut Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![0f32; g.values[node.outputs[0]].len()];
        let mut buffers = SimScratch { f32s: std::mem::take(scratch), ..SimScratch::default() };
        let done = self.run_into(g, node, args, &mut buffers, &mut out, None);
        *scratch = buffers.f32s;
        done?;
        Ok(vec![out])
    }

    /// Bytes of the packed weights (about: the kernels pad their panels).
    pub(crate) fn packed_bytes(&self) -> usize {
        match &self.op {
            SimOp::Conv { packed, epilogue, .. } | SimOp::Gemm { packed, epilogue, .. } => {
                let weights = epilogue.bias.len() * epilogue.k;
                match &**packed {
                    Packed::Conv(ConvSums::Int8(_)) => 2 * weights,
                    Packed::Conv(ConvSums::Float(parts)) => 4 * parts.len() * weights,
                    Packed::Gemm(parts) => 4 * parts.len() * weights,
                }
            }
            SimOp::AvgPool(_) | SimOp::Int(_) => 0,
        }
    }

    /// True when [`run_into`](Self::run_into) can also give the real values its outputs round
    /// (Conv, Gemm and MatMul: the exact accumulator scaled, then the fused activation).
    pub(crate) fn gives_real(&self) -> bool {
        matches!(self.op, SimOp::Conv { .. } | SimOp::Gemm { .. })
    }

    /// [`run`](Self::run) into `out` (the node's only output), with buffers from `scratch`
    /// (any contents). With `real` (only where [`gives_real`](Self::gives_real)), also the value
    /// before rounding, `act(sx · sw[c] · (acc + bias))`: what the float node computes, from the
    /// exact accumulator.
    pub(crate) fn run_into(&self, g: &Graph, node: &Node, args: &[&[f32]], scratch: &mut SimScratch, out: &mut [f32], mut real: Option<&mut [f32]>) -> Result<()> {
        let (x, y) = (self.x, self.y);
        debug_assert_eq!(out.len(), g.values[node.outputs[0]].len());
        assert!(real.is_none() || self.gives_real(), "only Conv, Gemm and MatMul give their real values");
        // The integers of input `i`, exactly those the int8 engine stores: a constant's from
        // its data as the int8 engine quantizes it, a computed value's from its grid.
        let q = |i: usize| -> Vec<i8> {
            let p = self.inputs[i].expect("the integer plan reads int8 inputs");
            if g.values[node.inputs[i]].is_const() {
                args[i].iter().map(|&v| p.quantize(v)).collect()
            } else {
                let inv = 1.0 / p.scale;
                args[i].iter().map(|&v| (centred_int(v, inv) + p.zero_point) as i8).collect()
            }
        };
        // Conv and Gemm read input 0, which is computed (a constant one was folded away).
        let inv = 1.0 / x.scale;
        let centred_x = |centred: &mut Vec<f32>| {
            centred.resize(args[0].len(), 0.0);
            centred.iter_mut().zip(args[0]).for_each(|(c, &v)| *c = centred_int(v, inv) as f32);
        };
        let batch = g.values[node.inputs[0]].shape.first().copied().unwrap_or(1).max(1);
        let (per_x, per_y) = ((args[0].len() / batch).max(1), (out.len() / batch).max(1));
        match &self.op {
            SimOp::Conv { packed, plane, epilogue } => match &**packed {
                Packed::Conv(ConvSums::Int8(conv)) => {
                    let SimScratch { ints, packing, sums, .. } = scratch;
                    ints.resize(args[0].len(), 0);
                    ints.iter_mut().zip(args[0]).for_each(|(q, &v)| *q = (centred_int(v, inv) + x.zero_point) as i8);
                    sums.resize(per_y, 0);
                    for (n, (xn, yn)) in ints.chunks_exact(per_x).zip(out.chunks_exact_mut(per_y)).enumerate() {
                        conv.run_accumulators(xn, sums, packing);
                        let rn = real.as_deref_mut().map(|r| &mut r[n * per_y..][..per_y]);
                        epilogue.finish(yn, Sums::I32(sums), *plane, y, rn);
                    }
                }
                Packed::Conv(ConvSums::Float(parts)) => {
                    centred_x(&mut scratch.centred);
                    let xc = &scratch.centred[..];
                    for (n, (xn, yn)) in xc.chunks_exact(per_x).zip(out.chunks_exact_mut(per_y)).enumerate() {
                        let sums = sum_parts(parts, yn, |p, acc| p.run(xn, acc, &mut scratch.f32s));
                        let rn = real.as_deref_mut().map(|r| &mut r[n * per_y..][..per_y]);
                        epilogue.finish(yn, sums.as_deref().map_or(Sums::InPlace, Sums::I64), *plane, y, rn);
                    }
                }
                Packed::Gemm(_) => unreachable!("a Conv packs a convolution"),
            },
            SimOp::Gemm { packed, trans_a, m, k, epilogue } => {
                let Packed::Gemm(parts) = &**packed else { unreachable!("a Gemm packs a matrix") };
                centred_x(&mut scratch.centred);
                let xc = &scratch.centred[..];
                let pa = if *trans_a {
                    let mut t = vec![0f32; xc.len()];
                    layout::transpose(xc, &[*k, *m], &[1, 0], &mut t);
                    PackedA::pack(&t, *m, *k, *k)
                } else {
                    PackedA::pack(xc, *m, *k, *k)
                };
                let n = epilogue.bias.len();
                let sums = sum_parts(parts, out, |b, acc| gemm(&pa, b, acc, n, GemmBias::None, Activation::Identity));
                // Rows of `n` channels: each channel is a run of one element.
                for (r, row) in out.chunks_exact_mut(n.max(1)).enumerate() {
                    let rr = real.as_deref_mut().map(|v| &mut v[r * n..][..n]);
                    let s = sums.as_deref().map_or(Sums::InPlace, |s| Sums::I64(&s[r * n..][..n]));
                    epilogue.finish(row, s, 1, y, rr);
                }
            }
            SimOp::AvgPool(pool) => {
                let mut yq = vec![0i8; out.len()];
                pool.run(&q(0), &mut yq);
                out.iter_mut().zip(yq).for_each(|(o, v)| *o = y.dequantize(v));
            }
            SimOp::Int(op) => {
                let yq = self.int_op(op, &q, out.len());
                out.iter_mut().zip(yq).for_each(|(o, v)| *o = y.dequantize(v));
            }
        }
        Ok(())
    }

    /// The int8 engine's kernels for Add/Sub, Mul, tables and global averages, called as it
    /// calls them.
    fn int_op(&self, op: &IntOp, q: &dyn Fn(usize) -> Vec<i8>, len: usize) -> Vec<i8> {
        let mut y = vec![0i8; len];
        match op {
            IntOp::Add { params, broadcast: bc, complement_b } => {
                let (a, mut b) = (q(0), q(1));
                if *complement_b {
                    b.iter_mut().for_each(|v| *v = !*v);
                }
                bc.for_each(|o, ia, ib| qs8_add(&a[ia..][..bc.a_len], &b[ib..][..bc.b_len], params, &mut y[o..][..bc.inner]));
            }
            IntOp::Mul { requant, zero_points: [za, zb], broadcast: bc, out } => {
                let (a, b) = (q(0), q(1));
                bc.for_each(|o, ia, ib| {
                    let (a, b) = (&a[ia..][..bc.a_len], &b[ib..][..bc.b_len]);
                    qs8_mul(a, *za, b, *zb, requant, out.zero_point, out.qmin, out.qmax, &mut y[o..][..bc.inner])
                });
            }
            IntOp::Lut(lut) => qs8_lut(&q(0), lut, &mut y),
            IntOp::PRelu { luts, slope_lut, broadcast: bc } => {
                let x = q(0);
                bc.for_each(|o, ix, is| {
                    let (x, y) = (&x[ix..][..bc.inner], &mut y[o..][..bc.inner]);
                    match &slope_lut[is..][..bc.b_len] {
                        [t] => qs8_lut(x, &luts[*t as usize], y),
                        ts => y.iter_mut().zip(x).zip(ts).for_each(|((y, &x), &t)| *y = luts[t as usize][x as u8 as usize]),
                    }
                });
            }
            IntOp::GlobalAvg { channels, spatial, x, y: p, convention } => {
                qs8_global_avg_pool(*channels, *spatial, &q(0), x.scale, x.zero_point, p.scale, p.zero_point, p.qmin, p.qmax, *convention, &mut y)
            }
            _ => unreachable!("planned as a plain FP32 node or packed"),
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The epilogue against `y.dequantize(requantize_clamped(bias + acc))` bit for bit, on both
    /// of its forms (f64 where exact, else the integer one), with sums in f32, i32 and i64, over
    /// random channels, accumulators up to their bound, and ties (multipliers that are powers of
    /// two put every odd accumulator on one).
    #[test]
    fn the_epilogue_requantizes_as_the_kernels_do() {
        let mut rng = Rng::seeded(12);
        let (mut exact, mut integer, mut fp32) = (0, 0, 0);
        for trial in 0..400 {
            let k = rng.int(1, 600) as usize;
            let zx = rng.int(-128, 127) as i32;
            let x = Qp { scale: 0.02, zero_point: zx, qmin: -128, qmax: 127 };
            let q = rng.i8s(k, -127, 127);
            let m = match trial % 3 {
                0 => 2f64.powi(-(rng.int(0, 20) as i32)),
                1 => rng.uniform(1e-4, 1.0),
                _ => rng.uniform(1.0, 300.0),
            };
            // Every fourth trial in the f32 convention.
            let rq = if trial % 4 == 3 { Requantizer::fp32(m as f32) } else { Requantizer::from_real(m) };
            let bias = rng.int(-(1 << 20), 1 << 20) as i32;
            let out = Clamp { zero_point: rng.int(-20, 20) as i32, qmin: -128 + rng.int(0, 100) as i8, qmax: 127 };
            let y = Qp { scale: 0.05, zero_point: out.zero_point, qmin: -128, qmax: 127 };
            let spread = (127 - zx as i64).max(zx as i64 + 128);
            let bound = q.iter().map(|&w| (w as i64).abs()).sum::<i64>() * spread;
            // The plan refuses channels whose accumulators could requantize past i32.
            let bound = bound.min((2f64.powi(30) / rq.real()) as i64 - bias.unsigned_abs() as i64).max(0);
            let e = Epilogue::new(IntWeights { ints: Arc::new(WeightInts::new(q, k, vec![1.0])), n: 1, k, bias: vec![bias], x, requant: vec![rq], out }, Activation::Identity);
            match e.exact_f64[0] {
                Some(_) => exact += 1,
                None if rq.fp32_scale().is_some() => fp32 += 1,
                None => integer += 1,
            }
            let sums: Vec<i64> = (0..256).map(|i| if i < 16 { [0, 1, -1, bound, -bound][i % 5] } else { rng.int(-bound, bound) }).collect();
            let want: Vec<f32> = sums.iter().map(|&s| y.dequantize(requantize_clamped(bias + s as i32, &rq, out.zero_point, out.qmin, out.qmax))).collect();
            let mut got = vec![0f32; sums.len()];
            e.finish(&mut got, Sums::I64(&sums), sums.len(), y, None);
            assert_eq!(got, want, "trial {trial}: {rq:?}, bias {bias}");
            let sums32: Vec<i32> = sums.iter().map(|&s| s as i32).collect();
            e.finish(&mut got, Sums::I32(&sums32), sums.len(), y, None);
            assert_eq!(got, want, "trial {trial} from i32: {rq:?}, bias {bias}");
            if bound <= F32_EXACT {
                let mut got: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
                e.finish(&mut got, Sums::InPlace, sums.len(), y, None);
                assert_eq!(got, want, "trial {trial} in f32: {rq:?}, bias {bias}");
            }
        }
        assert!(exact > 100 && integer > 20 && fp32 == 100, "{exact} exact, {integer} integer, {fp32} f32");
    }

    /// What a full-mode QAT re-plan costs on EfficientNet-Lite0 (every weight changed), with the
    /// int8 sums of wasm (`cargo test --release --lib replan_cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn replan_cost() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/efficientnet_lite0.onnx")).unwrap();
        let model = crate::Model::load(&bytes, &Default::default()).unwrap();
        let g = model.engine.graph();
        let len = g.values[g.inputs[0]].len();
        let mut rng = Rng::seeded(3);
        let frame: Vec<f32> = (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let mut cal = crate::quant::ptq::Calibrator::new(g, Default::default()).unwrap();
        cal.observe(&[&frame]).unwrap();
        let mut q = cal.quantize().unwrap();
        let mut cache = PlanCache::with_int8_sums(true);
        for round in 0..6 {
            for v in q.values.iter_mut().filter(|v| matches!(v.quant, Some(Quant::Weight(_)))) {
                if let Some(d) = v.data.as_mut() {
                    Arc::make_mut(d)[0] += 1e-4;
                }
            }
            let t = std::time::Instant::now();
            plan_reusing(&q, &mut cache).unwrap();
            eprintln!("round {round}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
}
