//! A working session on one model: the float model, its calibration and its quantized
//! variants. The state behind the page (through `api`) and the `quantize` command, so both do
//! exactly the same thing.
//!
//! ```text
//! Session::new(model)
//!   .begin_calibration(config)      fresh observers
//!   .calibrate(frame) x N           observers fed; a bounded sample of frames kept
//!   .quantize_ptq()                 the PTQ variant + its report (fidelity, per-layer SQNR)
//!   .run(Variant::Ptq, frame)       any variant on any frame
//! ```

use serde::Serialize;

use crate::engine::{Fp32Engine, Int8Engine};
use crate::ir::{Graph, ValueId};
use crate::model::{Model, Output};
use crate::quant::metrics::{Fidelity, FidelityAcc, LayerError, LayerSqnr};
use crate::quant::observer::Histogram;
use crate::quant::ptq::{Calibrator, QuantConfig};
use crate::quant::sensitivity::{sensitivity, Sensitivity};
use crate::quant::Quant;
use crate::rng::Rng;
use crate::{Error, Result};

/// Calibration frames kept for reports (a uniform sample of all frames seen, so memory stays
/// bounded however long the webcam runs).
pub const KEPT_FRAMES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Fp32,
    Ptq,
    Qat,
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Variant> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float" => Ok(Variant::Fp32),
            "ptq" => Ok(Variant::Ptq),
            "qat" => Ok(Variant::Qat),
            _ => Err(Error::Invalid(format!("unknown variant '{s}': fp32, ptq or qat"))),
        }
    }
}

/// A node that runs in float in a quantized variant, and why.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FloatNode {
    pub name: String,
    pub op: String,
    pub why: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuantReport {
    pub config: QuantConfig,
    pub calibration_frames: u64,
    /// Fidelity to the FP32 model on the kept calibration frames (the CLI adds held-out
    /// frames when given some).
    pub fidelity: Fidelity,
    /// SQNR of every quantized tensor on the same frames, in graph order.
    pub layers: Vec<LayerError>,
    pub float_nodes: Vec<FloatNode>,
    pub quantized_tensors: usize,
    pub quantized_weights: usize,
    /// Bytes of the weights as stored: int8 weights, int32 biases, float for the rest.
    pub weight_bytes: usize,
    /// The same weights in float.
    pub float_weight_bytes: usize,
}

/// A quantized variant: its annotated graph, the int8 engine that deploys it and the
/// simulation (the FP32 engine on the same graph: the int8 engine's integers, computed with
/// float kernels).
pub struct Quantized {
    pub graph: Graph,
    pub int8: Int8Engine,
    pub simulation: Fp32Engine,
    pub report: QuantReport,
}

impl Quantized {
    /// Runs the int8 engine.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        self.int8.run(inputs)
    }

    pub fn run_observed(&self, inputs: &[&[f32]], observe: &mut dyn FnMut(ValueId, &[f32])) -> Result<Vec<Vec<f32>>> {
        self.int8.run_observed(inputs, observe)
    }
}

/// A quantized variant's annotation and constants, value by value in graph order
/// ([`Session::variant_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VariantState {
    pub values: Vec<ValueState>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueState {
    pub name: String,
    pub quant: Option<Quant>,
    /// A constant's data.
    pub data: Option<Vec<f32>>,
}

pub struct Session {
    pub model: Model,
    calibrator: Option<Calibrator>,
    kept: Vec<Vec<Vec<f32>>>,
    rng: Rng,
    ptq: Option<Quantized>,
    qat: Option<Quantized>,
}

/// Fidelity and per-layer SQNR of `candidate` against `reference` (same value ids) on frames.
pub fn evaluate(
    reference: &Fp32Engine,
    candidate: &dyn Fn(&[&[f32]], &mut dyn FnMut(ValueId, &[f32])) -> Result<Vec<Vec<f32>>>,
    quantized: &Graph,
    frames: &[Vec<Vec<f32>>],
    progress: &mut dyn FnMut(usize),
) -> Result<(Fidelity, Vec<LayerError>)> {
    let mut fidelity = FidelityAcc::for_graph(quantized);
    let mut layers = LayerSqnr::new(quantized);
    let mut kept: Vec<Vec<f32>> = vec![Vec::new(); quantized.values.len()];
    for (done, frame) in frames.iter().enumerate() {
        progress(done);
        let inputs: Vec<&[f32]> = frame.iter().map(|v| v.as_slice()).collect();
        for (&id, data) in reference.graph().inputs.iter().zip(&inputs) {
            if layers.tracks(id) {
                kept[id] = data.to_vec();
            }
        }
        let r = reference.run_observed(&inputs, &mut |v, d| {
            if layers.tracks(v) {
                kept[v].clear();
                kept[v].extend_from_slice(d);
            }
        })?;
        let mut quantized_inputs = Vec::new();
        let c = candidate(&inputs, &mut |v, d| {
            if layers.tracks(v) {
                layers.add(v, &kept[v], d);
            }
        })?;
        // Inputs are not reported by the engines' observers: compare them here.
        for (&id, data) in reference.graph().inputs.iter().zip(&inputs) {
            if let Some(Quant::Tensor(p)) = &quantized.values[id].quant {
                quantized_inputs.clear();
                quantized_inputs.extend(data.iter().map(|&x| p.fake_quantize(x)));
                layers.add(id, data, &quantized_inputs);
            }
        }
        fidelity.add(&r, &c);
    }
    Ok((fidelity.finish(), layers.finish(quantized)))
}

/// Bytes of a graph's constants as a deployed file stores them: quantized ones in one byte per
/// value, the rest (int32 biases included) in four.
fn weight_bytes(g: &Graph, quantized: bool) -> usize {
    let mut seen = vec![false; g.values.len()];
    let mut bytes = 0;
    for node in &g.nodes {
        for &i in &node.inputs {
            let v = &g.values[i];
            if v.is_const() && !seen[i] {
                seen[i] = true;
                bytes += v.len() * if quantized && v.quant.is_some() { 1 } else { 4 };
            }
        }
    }
    bytes
}

impl Session {
    pub fn new(model: Model) -> Session {
        Session { model, calibrator: None, kept: Vec::new(), rng: Rng::seeded(0x5eed), ptq: None, qat: None }
    }

    /// Starts (or restarts) calibration with `config`; drops the frames seen so far.
    pub fn begin_calibration(&mut self, config: QuantConfig) -> Result<()> {
        self.calibrator = Some(Calibrator::new(self.model.engine.graph(), config)?);
        self.kept.clear();
        Ok(())
    }

    pub fn calibrator(&self) -> Option<&Calibrator> {
        self.calibrator.as_ref()
    }

    fn calibrator_or_err(&self) -> Result<&Calibrator> {
        self.calibrator.as_ref().ok_or_else(|| Error::Invalid("calibration has not started: begin calibration first".into()))
    }

    /// Feeds one frame (one tensor per model input) to calibration. Returns the frame count.
    pub fn calibrate(&mut self, inputs: &[&[f32]]) -> Result<u64> {
        let cal = self.calibrator.as_mut().ok_or_else(|| Error::Invalid("calibration has not started: begin calibration first".into()))?;
        check_inputs(cal.graph(), inputs)?;
        cal.observe(inputs)?;
        let frame: Vec<Vec<f32>> = inputs.iter().map(|x| x.to_vec()).collect();
        let n = cal.frames() as usize;
        // Reservoir sampling: every frame seen has the same chance to be kept.
        if self.kept.len() < KEPT_FRAMES {
            self.kept.push(frame);
        } else {
            let j = (self.rng.next_u64() % n as u64) as usize;
            if j < KEPT_FRAMES {
                self.kept[j] = frame;
            }
        }
        Ok(cal.frames())
    }

    pub fn kept_frames(&self) -> &[Vec<Vec<f32>>] {
        &self.kept
    }

    /// Builds the PTQ variant from the calibration so far and measures it on the kept frames.
    pub fn quantize_ptq(&mut self) -> Result<&QuantReport> {
        self.quantize_ptq_keeping_float(&[])
    }

    /// As `quantize_ptq`, with `nodes` kept in float besides the configuration's keep-float
    /// list (the choice of [`Session::sensitivity`]); the report's configuration lists them.
    pub fn quantize_ptq_keeping_float(&mut self, nodes: &[String]) -> Result<&QuantReport> {
        let cal = self.calibrator_or_err()?;
        let graph = cal.quantize_keeping_float(nodes)?;
        let mut q = self.make_variant(graph)?;
        q.report.config.keep_float.extend(nodes.iter().cloned());
        for f in &mut q.report.float_nodes {
            if nodes.contains(&f.name) {
                f.why = "kept in float: among the most sensitive layers".into();
            }
        }
        self.qat = None;
        Ok(&self.ptq.insert(q).report)
    }

    /// Layer sensitivity on the kept calibration frames (see [`crate::quant::sensitivity`]).
    pub fn sensitivity(&self, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Sensitivity> {
        sensitivity(self.calibrator_or_err()?, &self.kept, progress)
    }

    /// Wraps an annotated graph with the same value ids as the calibrator's graph as a variant.
    pub fn make_variant(&self, graph: Graph) -> Result<Quantized> {
        let cal = self.calibrator_or_err()?;
        let int8 = Int8Engine::new(graph.clone())?;
        let run = |x: &[&[f32]], o: &mut dyn FnMut(ValueId, &[f32])| int8.run_observed(x, o);
        let (fidelity, layers) = evaluate(cal.engine(), &run, &graph, &self.kept, &mut |_| {})?;
        let float_nodes = int8
            .float_nodes()
            .into_iter()
            .map(|(name, op, why)| {
                let why = if cal.config().keep_float.contains(&name) { "kept in float".to_string() } else { why };
                FloatNode { name, op, why }
            })
            .collect();
        let report = QuantReport {
            config: cal.config().clone(),
            calibration_frames: cal.frames(),
            fidelity,
            layers,
            float_nodes,
            quantized_tensors: graph.values.iter().filter(|v| matches!(v.quant, Some(Quant::Tensor(_)))).count(),
            quantized_weights: graph.values.iter().filter(|v| matches!(v.quant, Some(Quant::Weight(_)))).count(),
            weight_bytes: weight_bytes(&graph, true),
            float_weight_bytes: weight_bytes(&graph, false),
        };
        Ok(Quantized { simulation: Fp32Engine::new(graph.clone()), graph, int8, report })
    }

    pub fn set_qat(&mut self, q: Quantized) {
        self.qat = Some(q);
    }

    /// What makes a variant what it is, relative to the PTQ graph it was made from: every
    /// value's annotation and every constant's data (weights and biases, which QAT changes).
    /// The page keeps it so that a restarted engine gets the QAT result back
    /// ([`Session::restore_variant`]) instead of the user training again.
    pub fn variant_state(&self, v: Variant) -> Result<VariantState> {
        let Some(q) = self.variant(v)? else { return Err(Error::Invalid("the FP32 model has no quantized state".into())) };
        let values = q
            .graph
            .values
            .iter()
            .map(|value| ValueState { name: value.name.clone(), quant: value.quant.clone(), data: value.data.as_ref().map(|d| d.to_vec()) })
            .collect();
        Ok(VariantState { values })
    }

    /// Installs a variant from [`Session::variant_state`] taken in another session on the same
    /// model: the PTQ variant must exist (rebuilt from the same frames and configuration), and
    /// the state must describe the same graph, value by value (names, constants and their
    /// lengths). Its report is measured anew on this session's kept frames.
    pub fn restore_variant(&mut self, v: Variant, state: VariantState) -> Result<&QuantReport> {
        if v != Variant::Qat {
            return Err(Error::Invalid(format!("only the QAT variant can be restored from a saved state, not {v:?}")));
        }
        let ptq = self.variant(Variant::Ptq)?.expect("ptq is quantized");
        let mut graph = ptq.graph.clone();
        if state.values.len() != graph.values.len() {
            return Err(Error::Invalid(format!(
                "the saved QAT state describes {} values, the PTQ graph has {}: it belongs to another model or configuration",
                state.values.len(),
                graph.values.len()
            )));
        }
        for (value, saved) in graph.values.iter_mut().zip(state.values) {
            let fits = value.name == saved.name
                && match (&value.data, &saved.data) {
                    (Some(d), Some(s)) => d.len() == s.len(),
                    (None, None) => true,
                    _ => false,
                };
            if !fits {
                return Err(Error::Invalid(format!("the saved QAT state does not match tensor '{}' of the PTQ graph", value.name)));
            }
            value.quant = saved.quant;
            if let Some(data) = saved.data {
                value.data = Some(std::sync::Arc::new(data));
            }
        }
        let q = self.make_variant(graph)?;
        self.qat = Some(q);
        Ok(&self.variant(Variant::Qat)?.expect("just set").report)
    }

    pub fn variant(&self, v: Variant) -> Result<Option<&Quantized>> {
        match v {
            Variant::Fp32 => Ok(None),
            Variant::Ptq => self.ptq.as_ref().map(Some).ok_or_else(|| Error::Invalid("there is no PTQ model yet: calibrate and quantize first".into())),
            Variant::Qat => self.qat.as_ref().map(Some).ok_or_else(|| Error::Invalid("there is no QAT model yet: run quantization-aware training first".into())),
        }
    }

    /// Runs a variant on one frame; outputs named as the model's.
    pub fn run(&self, variant: Variant, inputs: &[&[f32]]) -> Result<Vec<Output>> {
        let Some(q) = self.variant(variant)? else { return self.model.run(inputs) };
        check_inputs(&q.graph, inputs)?;
        let g = &q.graph;
        Ok(g.outputs.iter().zip(q.run(inputs)?).map(|(&o, data)| Output { name: g.values[o].name.clone(), shape: g.values[o].shape.clone(), data }).collect())
    }

    /// The calibration histogram of the tensor named `name`, with the clip range chosen for it.
    pub fn histogram(&self, name: &str) -> Result<(Histogram, Option<(f32, f32)>)> {
        let cal = self.calibrator_or_err()?;
        let g = cal.graph();
        let v = g.find_value(name).ok_or_else(|| Error::Invalid(format!("the model has no tensor named '{name}'")))?;
        let root = cal.plan().observed_root(v).ok_or_else(|| Error::Invalid(format!("tensor '{name}' is not quantized, so it has no calibration histogram")))?;
        let observer = cal.observer(root).expect("observed values have observers");
        Ok((observer.histogram(), cal.activation_params(v).map(|p| p.real_range())))
    }
}

fn check_inputs(g: &Graph, inputs: &[&[f32]]) -> Result<()> {
    if inputs.len() != g.inputs.len() {
        return Err(Error::Invalid(format!("the model takes {} inputs, {} were given", g.inputs.len(), inputs.len())));
    }
    for (&id, x) in g.inputs.iter().zip(inputs) {
        let v = &g.values[id];
        if x.len() != v.len() {
            return Err(Error::Input { name: v.name.clone(), msg: format!("has {} values, shape {:?} needs {}", x.len(), v.shape, v.len()) });
        }
    }
    Ok(())
}
