//! Post-training quantization: calibrate on frames, one at a time, then turn the float graph
//! into an annotated (quantized) one.
//!
//! ```text
//! Calibrator::new(graph, config)      split non-foldable fused activations, plan (plan.rs)
//!   .observe(frame) x N               one Observer per calibrated value: fixed memory
//!   .quantize()                       ranges -> QuantParams, weights per channel, optional
//!                                     bias correction, int32 biases -> annotated Graph
//! ```
//!
//! The annotated graph is what the simulation, the int8 engine and QDQ export read (see the
//! annotation in `quant`). ReLU/ReLU6/Clip fused into a Conv/Gemm need nothing special: the
//! calibrated value is the activation's output, so its range already starts at the clip.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::observer::{CalibrationMethod, Observer};
use super::params::{check_bits, from_range, quantize_weights, ChannelParams, QuantParams, WeightRange};
use super::plan::{fold_clamps_into_producers, keep_outputs_float, plan, split_fused_activations, weight_axis, QuantPlan, ValuePlan};
use super::Quant;
use crate::engine::Fp32Engine;
use crate::ir::{Fusion, Graph, Node, Op, Requantization, ValueId};
use crate::{Error, Result};

/// Everything that decides how a model is quantized. Serialized in reports and accepted from
/// the page and the CLI; every field has a default, so `{}` is the default config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QuantConfig {
    /// Width of weights, `2..=8`.
    pub weight_bits: u32,
    /// One scale per output channel (true) or per tensor.
    pub per_channel: bool,
    /// How each weight channel's range is chosen; `None`: max-abs at 8 bits, MSE below, where
    /// clipping the largest weights pays off.
    pub weight_range: Option<WeightRange>,
    /// Width of activations, `2..=8`.
    pub activation_bits: u32,
    /// Activations exported as int8 (true) or uint8 (false, the default; the same reals, see
    /// `params`: the int8 engine stores both as int8). uint8 by default because onnxruntime
    /// fuses a QDQ graph into its integer kernels fully only with uint8 activations: with int8
    /// it leaves Adds, and the Convs next to them, in float (its profiler on EfficientNet-Lite0
    /// and BlazeFace, onnxruntime-web 1.30), which is slower and parts from our int8 engine
    /// by a rounding here and there.
    pub activation_signed: bool,
    /// Symmetric activation ranges (zero point 0 in int8) instead of asymmetric.
    pub activation_symmetric: bool,
    pub calibration: CalibrationMethod,
    /// Node names to leave in float.
    pub keep_float: Vec<String>,
    /// Per-node weight width and granularity, by node name.
    pub overrides: BTreeMap<String, LayerOverride>,
    /// Leave the model's outputs (and the last op computing each) in float; see
    /// `plan::keep_outputs_float`.
    pub float_outputs: bool,
    /// Correct each output channel's bias by the mean error its quantized weights add on the
    /// calibration frames (Nagel et al. 2019, with measured input means).
    pub bias_correction: bool,
    /// Cross-layer equalization of consecutive convolutions before calibration (see
    /// [`super::equalize`]).
    pub equalize: bool,
    /// How the int8 model rounds: `fp32` (onnxruntime's, the default) or `fixed-point`
    /// (TFLite's); see [`Requantization`]. Exports record it.
    pub requantization: Requantization,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LayerOverride {
    pub weight_bits: Option<u32>,
    pub per_channel: Option<bool>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            weight_bits: 8,
            per_channel: true,
            weight_range: None,
            activation_bits: 8,
            activation_signed: false,
            activation_symmetric: false,
            calibration: CalibrationMethod::default(),
            keep_float: Vec::new(),
            overrides: BTreeMap::new(),
            bias_correction: true,
            float_outputs: false,
            equalize: false,
            requantization: Requantization::default(),
        }
    }
}

impl QuantConfig {
    pub fn validate(&self) -> Result<()> {
        check_bits(self.weight_bits)?;
        check_bits(self.activation_bits)?;
        for (name, o) in &self.overrides {
            if let Some(bits) = o.weight_bits {
                check_bits(bits).map_err(|e| Error::Invalid(format!("override of '{name}': {e}")))?;
            }
        }
        if let CalibrationMethod::Percentile { percentile } = self.calibration {
            if !(50.0..=100.0).contains(&percentile) {
                return Err(Error::Invalid(format!("percentile {percentile} is outside [50, 100]")));
            }
        }
        Ok(())
    }

    fn weight_bits_of(&self, node: &str) -> u32 {
        self.overrides.get(node).and_then(|o| o.weight_bits).unwrap_or(self.weight_bits)
    }

    fn per_channel_of(&self, node: &str) -> bool {
        self.overrides.get(node).and_then(|o| o.per_channel).unwrap_or(self.per_channel)
    }
}

/// Running per-channel means of a weighted layer's input (for bias correction).
#[derive(Clone, Debug)]
struct ChannelMeans {
    /// The channel axis of the input: 1 for NCHW convolutions, the last for Gemm/MatMul.
    axis: usize,
    sums: Vec<f64>,
    frames: u64,
}

impl ChannelMeans {
    fn add(&mut self, data: &[f32], shape: &[usize]) {
        let channels = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        let mut sums = vec![0f64; channels];
        for (i, chunk) in data.chunks(inner.max(1)).enumerate() {
            sums[i % channels] += chunk.iter().map(|&v| v as f64).sum::<f64>();
        }
        let per_channel = (data.len() / channels.max(1)) as f64;
        for (s, v) in self.sums.iter_mut().zip(sums) {
            *s += v / per_channel;
        }
        self.frames += 1;
    }

    fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| s / self.frames.max(1) as f64).collect()
    }
}

/// Calibration state: the prepared float graph, its plan and one observer per calibrated value.
pub struct Calibrator {
    engine: Fp32Engine,
    plan: QuantPlan,
    config: QuantConfig,
    observers: Vec<Option<Observer>>,
    means: Vec<Option<ChannelMeans>>,
    frames: u64,
}

impl Calibrator {
    pub fn new(graph: &Graph, config: QuantConfig) -> Result<Calibrator> {
        config.validate()?;
        if graph.values.iter().any(|v| v.quant.is_some()) {
            return Err(Error::Invalid("the model is already quantized; load its float version to quantize it again".into()));
        }
        let mut graph = graph.clone();
        split_fused_activations(&mut graph);
        if config.equalize {
            super::equalize::equalize(&mut graph);
        }
        graph.validate()?;
        let plan = plan_for(&graph, &config, &[])?;
        let observers = plan.values.iter().map(|p| (*p == ValuePlan::Observed).then(|| Observer::new(config.calibration))).collect();
        let mut means: Vec<Option<ChannelMeans>> = vec![None; graph.values.len()];
        if config.bias_correction {
            for node in &graph.nodes {
                if let (Some(axis), Some(&x)) = (input_channel_axis(&graph, node), node.inputs.first()) {
                    let channels = graph.values[x].shape[axis];
                    means[x] = Some(ChannelMeans { axis, sums: vec![0.0; channels], frames: 0 });
                }
            }
        }
        Ok(Calibrator { engine: Fp32Engine::new(graph), plan, config, observers, means, frames: 0 })
    }

    /// The float graph being calibrated (fused activations that do not fold into a range are
    /// split out; value ids are those of the quantized graph).
    pub fn graph(&self) -> &Graph {
        self.engine.graph()
    }

    /// The FP32 engine of [`graph`](Self::graph): the reference of the quantized variants.
    pub fn engine(&self) -> &Fp32Engine {
        &self.engine
    }

    pub fn plan(&self) -> &QuantPlan {
        &self.plan
    }

    pub fn config(&self) -> &QuantConfig {
        &self.config
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The observer of a calibrated value (`None` for values that follow another or stay float).
    pub fn observer(&self, value: ValueId) -> Option<&Observer> {
        self.observers.get(value)?.as_ref()
    }

    /// Runs the float model on one frame (one tensor per graph input) and feeds every observer.
    /// Returns the model's outputs, which callers use as the reference of that frame.
    pub fn observe(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let g = self.engine.graph();
        for (&id, data) in g.inputs.iter().zip(inputs) {
            if let Some(o) = &mut self.observers[id] {
                o.observe(data);
            }
            if let Some(m) = &mut self.means[id] {
                m.add(data, &g.values[id].shape);
            }
        }
        let (observers, means) = (&mut self.observers, &mut self.means);
        let outputs = self.engine.run_observed(inputs, &mut |id, data| {
            if let Some(o) = &mut observers[id] {
                o.observe(data);
            }
            if let Some(m) = &mut means[id] {
                m.add(data, &g.values[id].shape);
            }
        })?;
        self.frames += 1;
        Ok(outputs)
    }

    /// The calibrated parameters of value `v` (an activation to quantize), else None.
    pub fn activation_params(&self, v: ValueId) -> Option<QuantParams> {
        self.activation_params_in(&self.plan, v)
    }

    /// As `activation_params`, under another plan: values it observes that calibration did not
    /// have no parameters (they stay float).
    fn activation_params_in(&self, plan: &QuantPlan, v: ValueId) -> Option<QuantParams> {
        let root = plan.observed_root(v)?;
        let observer = self.observers[root].as_ref()?;
        let (bits, symmetric) = (self.config.activation_bits, self.config.activation_symmetric);
        let (lo, hi) = observer.range(bits, symmetric);
        Some(from_range(lo, hi, bits, symmetric).with_storage(self.config.activation_signed))
    }

    /// The quantized model: the prepared graph with every planned value annotated, weights
    /// replaced by their dequantized integers, biases put on their int32 grid.
    pub fn quantize(&self) -> Result<Graph> {
        self.quantize_with(&self.plan)
    }

    /// The quantized model with `nodes` kept in float too, from the same calibration: what
    /// sensitivity analysis ([`super::sensitivity`]) compares, and how its choice is applied.
    pub fn quantize_keeping_float(&self, nodes: &[String]) -> Result<Graph> {
        self.quantize_with(&plan_for(self.graph(), &self.config, nodes)?)
    }

    fn quantize_with(&self, plan: &QuantPlan) -> Result<Graph> {
        if self.frames == 0 {
            return Err(Error::Invalid("calibrate on at least one frame before quantizing".into()));
        }
        let mut g = self.graph().clone();
        g.requantization = self.config.requantization;
        g.fusion = Fusion::Integer;
        for v in 0..g.values.len() {
            if let Some(p) = self.activation_params_in(plan, v) {
                g.values[v].quant = Some(Quant::Tensor(p));
            } else if plan.values[v] == ValuePlan::Constant {
                let data = g.const_data(v).expect("planned constants are constants");
                let (lo, hi) = data.iter().filter(|x| x.is_finite()).fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
                let (bits, symmetric) = (self.config.activation_bits, self.config.activation_symmetric);
                let p = from_range(lo, hi, bits, symmetric).with_storage(self.config.activation_signed);
                let fq: Vec<f32> = data.iter().map(|&x| p.fake_quantize(x)).collect();
                g.values[v].data = Some(Arc::new(fq));
                g.values[v].quant = Some(Quant::Tensor(p));
            }
        }
        for n in 0..g.nodes.len() {
            let node = &g.nodes[n];
            let Some(&w) = node.inputs.get(1) else { continue };
            let ValuePlan::Weight { axis } = plan.values[w] else { continue };
            if g.values[w].quant.is_some() {
                continue; // shared with an earlier node, already quantized
            }
            let (name, shape) = (node.name.clone(), g.values[w].shape.clone());
            let bits = self.config.weight_bits_of(&name);
            let range = self.config.weight_range.unwrap_or(if bits < 8 { WeightRange::Mse } else { WeightRange::MaxAbs });
            let axis = self.config.per_channel_of(&name).then_some(axis);
            let float_w = g.const_data(w).expect("weights are constants").to_vec();
            let (params, q) = quantize_weights(&float_w, &shape, axis, bits, range);
            let deq = params.dequantize(&q, &shape);
            if self.config.bias_correction {
                if let Some(means) = g.nodes[n].inputs.first().and_then(|&x| self.means[x].as_ref()) {
                    correct_bias(&mut g, n, &float_w, &deq, &means.means());
                }
            }
            g.values[w].data = Some(Arc::new(deq));
            g.values[w].quant = Some(Quant::Weight(params));
        }
        for n in 0..g.nodes.len() {
            snap_bias_to_int32_grid(&mut g, n);
        }
        g.validate()?;
        Ok(g)
    }
}

/// The plan of `config` on `graph`, with `extra` nodes kept in float as well.
fn plan_for(graph: &Graph, config: &QuantConfig, extra: &[String]) -> Result<QuantPlan> {
    let keep: Vec<String> = config.keep_float.iter().chain(extra).cloned().collect();
    let mut plan = plan(graph, &keep)?;
    if config.float_outputs {
        keep_outputs_float(graph, &mut plan);
    }
    if !config.activation_symmetric {
        fold_clamps_into_producers(graph, &mut plan);
    }
    Ok(plan)
}

/// The channel axis of a weighted node's input 0 that its weight contracts over, when bias
/// correction knows the layer (Conv; Gemm and 2-D MatMul with constant weights).
fn input_channel_axis(g: &Graph, node: &Node) -> Option<usize> {
    weight_axis(g, node)?;
    match node.op {
        Op::Conv(_) => Some(1),
        Op::Gemm { trans_a: false, beta, .. } if beta == 1.0 => Some(1),
        Op::MatMul if g.values[node.inputs[0]].shape.len() == 2 && g.values[node.inputs[1]].shape.len() == 2 => Some(1),
        _ => None,
    }
}

/// `bias[c] += Σ_k (W - Wq)[c][k] · E[x_k]`: the mean output error of the quantized weights on
/// the calibration frames, removed (padding counted as the mean, a small approximation at borders).
fn correct_bias(g: &mut Graph, n: usize, w: &[f32], wq: &[f32], means: &[f64]) {
    let node = &g.nodes[n];
    let shape = g.values[node.inputs[1]].shape.clone();
    let (channels, delta): (usize, Vec<f64>) = match &node.op {
        Op::Conv(c) => {
            let (m, icg) = (shape[0], shape[1]);
            let per = w.len() / m;
            let spatial = per / icg;
            let ocg = m / c.group;
            let delta = (0..m)
                .map(|o| {
                    let group = o / ocg;
                    (0..per).map(|k| (w[o * per + k] - wq[o * per + k]) as f64 * means[group * icg + k / spatial]).sum()
                })
                .collect();
            (m, delta)
        }
        Op::Gemm { trans_b: true, .. } => {
            let (nn, k) = (shape[0], shape[1]);
            (nn, (0..nn).map(|o| (0..k).map(|i| (w[o * k + i] - wq[o * k + i]) as f64 * means[i]).sum()).collect())
        }
        Op::Gemm { .. } | Op::MatMul => {
            let (k, nn) = (shape[0], shape[1]);
            (nn, (0..nn).map(|o| (0..k).map(|i| (w[i * nn + o] - wq[i * nn + o]) as f64 * means[i]).sum()).collect())
        }
        _ => return,
    };
    if matches!(node.op, Op::MatMul) {
        return; // no bias input to carry the correction
    }
    let bias: Vec<f32> = match node.inputs.get(2).map(|&b| g.const_data(b)) {
        None => vec![0.0; channels],
        Some(Some(b)) if b.len() == channels => b.to_vec(),
        Some(_) => return, // a bias computed at run time or broadcast differently
    };
    let corrected: Vec<f32> = bias.iter().zip(&delta).map(|(&b, &d)| (b as f64 + d) as f32).collect();
    let name = format!("{}.bias_corrected", g.nodes[n].name);
    let id = g.add_const(name, vec![channels], corrected);
    let node = &mut g.nodes[n];
    node.inputs.truncate(2);
    node.inputs.push(id);
}

/// A bias whose layer has a quantized input and quantized weights becomes int32 at scale
/// `s_x · s_w[c]`: its data is replaced by `s_x · s_w[c] · round(b / (s_x · s_w[c]))`.
fn snap_bias_to_int32_grid(g: &mut Graph, n: usize) {
    let node = &g.nodes[n];
    if !node.op.has_weights() || node.inputs.len() < 3 {
        return;
    }
    let (x, w, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
    let (Some(Quant::Tensor(xp)), Some(Quant::Weight(wp))) = (&g.values[x].quant, &g.values[w].quant) else { return };
    let Some(data) = g.const_data(b) else { return };
    let channels = data.len();
    if !wp.is_per_tensor() && wp.scales.len() != channels {
        return;
    }
    let snapped = snap_bias(data, xp.scale, wp);
    g.values[b].data = Some(Arc::new(snapped));
}

/// The reals of the int32 bias `round(b / (s_x · s_w[c]))`, clamped to `±2^30` (far beyond
/// real layers; keeps the int8 engine's accumulators inside i32).
pub fn snap_bias(b: &[f32], input_scale: f32, w: &ChannelParams) -> Vec<f32> {
    b.iter()
        .enumerate()
        .map(|(c, &v)| {
            let s = input_scale * w.scale(c);
            let q = (v / s).round_ties_even().clamp(-(1 << 30) as f32, (1 << 30) as f32);
            q * s
        })
        .collect()
}

/// The int32 integers of a bias snapped by [`snap_bias`] (what the int8 engine and export use).
pub fn bias_integers(b: &[f32], input_scale: f32, w: &ChannelParams) -> Vec<i32> {
    b.iter().enumerate().map(|(c, &v)| (v / (input_scale * w.scale(c))).round_ties_even() as i32).collect()
}
