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
//!
//! Frames given as images ([`Session::calibrate_image`]) keep their RGBA with the kept tensor,
//! so that QAT can train on random views of them ([`Session::training_frame`]), preprocessed
//! as calibration was: the same augmentation as the CLI's. Frames given as tensors are only
//! mirrored. Labelled images for QAT ([`Session::add_labelled_image`], the page's folder per
//! class) are kept as images too, apart from calibration, and preprocessed as the calibration
//! images were ([`Session::view_of_labelled`]); QAT draws its batches from both
//! ([`Session::qat_batch`]). The sensitivity analysis can run at once ([`Session::sensitivity`])
//! or in steps ([`Session::sensitivity_begin`], [`Session::sensitivity_step`]) that the page's
//! worker slices.

use serde::Serialize;

use crate::augment::{mirror_width, Augment, View};
use crate::engine::{Fp32Engine, Int8Engine};
use crate::ir::{Graph, ValueId};
use crate::model::{Model, Output};
use crate::quant::metrics::{Fidelity, FidelityAcc, LayerError, LayerSqnr};
use crate::quant::observer::Histogram;
use crate::quant::ptq::{Calibrator, QuantConfig};
use crate::preprocess::{preprocess, Preprocess};
use crate::quant::sensitivity::{sensitivity, Sensitivity, SensitivityRun};
use crate::quant::Quant;
use crate::rng::Rng;
use crate::train::labels::ClassMap;
use crate::{Error, Result};

/// Calibration frames kept for reports (a uniform sample of all frames seen, so memory stays
/// bounded however long the webcam runs).
pub const KEPT_FRAMES: usize = 32;

/// Labelled images kept for QAT: at most this many, of at most [`LABELLED_PIXELS`] each, so
/// that they hold at most 59 MB (the page's calibration frames are at most 480 pixels a side,
/// and it decodes labelled images the same way). A few dozen are plenty for the hundreds of
/// frames a default QAT run draws.
pub const LABELLED_FRAMES: usize = 64;
/// Pixels of one labelled image at most (480 x 480).
pub const LABELLED_PIXELS: usize = 480 * 480;

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

/// The image a kept calibration frame was made from, and how it was preprocessed.
#[derive(Clone, Debug)]
pub struct FrameSource {
    pub rgba: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub preprocess: Preprocess,
}

/// An image with its class (an output index of the classifier), for QAT with labels.
#[derive(Clone, Debug)]
pub struct LabelledImage {
    pub rgba: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub class: usize,
}

/// Where a stepped sensitivity analysis is ([`Session::sensitivity_step`]).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SensitivityProgress {
    /// Steps done and in all (a step: one simulated run on one frame, or one quantization).
    pub done: usize,
    pub total: usize,
    pub layers_done: usize,
    pub layers: usize,
    /// The layer being measured, once past the references.
    pub layer: Option<String>,
    pub finished: bool,
}

pub struct Session {
    pub model: Model,
    calibrator: Option<Calibrator>,
    kept: Vec<Vec<Vec<f32>>>,
    /// Per kept frame: its image, when it was given as one.
    sources: Vec<Option<FrameSource>>,
    rng: Rng,
    ptq: Option<Quantized>,
    qat: Option<Quantized>,
    /// A stepped sensitivity analysis; dropped when the calibration changes.
    sensitivity: Option<SensitivityRun>,
    /// Labelled images for QAT. Not part of the calibration (a new calibration keeps them):
    /// they take its preprocessing when they are trained on.
    labelled: Vec<LabelledImage>,
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
        Session {
            model,
            calibrator: None,
            kept: Vec::new(),
            sources: Vec::new(),
            rng: Rng::seeded(0x5eed),
            ptq: None,
            qat: None,
            sensitivity: None,
            labelled: Vec::new(),
        }
    }

    /// Starts (or restarts) calibration with `config`; drops the frames seen so far.
    pub fn begin_calibration(&mut self, config: QuantConfig) -> Result<()> {
        self.calibrator = Some(Calibrator::new(self.model.engine.graph(), config)?);
        self.kept.clear();
        self.sources.clear();
        self.sensitivity = None;
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
        self.calibrate_from(inputs, None)
    }

    /// Feeds one RGBA image to calibration (a single-input model), preprocessed by `p`; the
    /// image is kept with the frame if the frame is kept (for QAT's random views). Returns the
    /// frame count.
    pub fn calibrate_image(&mut self, rgba: &[u8], width: usize, height: usize, p: &Preprocess) -> Result<u64> {
        let x = preprocess(rgba, width, height, p)?;
        let source = FrameSource { rgba: rgba.to_vec(), width, height, preprocess: p.clone() };
        self.calibrate_from(&[&x], Some(source))
    }

    fn calibrate_from(&mut self, inputs: &[&[f32]], source: Option<FrameSource>) -> Result<u64> {
        let cal = self.calibrator.as_mut().ok_or_else(|| Error::Invalid("calibration has not started: begin calibration first".into()))?;
        check_inputs(cal.graph(), inputs)?;
        cal.observe(inputs)?;
        self.sensitivity = None;
        let frame: Vec<Vec<f32>> = inputs.iter().map(|x| x.to_vec()).collect();
        let n = cal.frames() as usize;
        // Reservoir sampling: every frame seen has the same chance to be kept.
        if self.kept.len() < KEPT_FRAMES {
            self.kept.push(frame);
            self.sources.push(source);
        } else {
            let j = (self.rng.next_u64() % n as u64) as usize;
            if j < KEPT_FRAMES {
                self.kept[j] = frame;
                self.sources[j] = source;
            }
        }
        Ok(cal.frames())
    }

    /// Whether kept frame `i` was given as an image (else as tensors).
    pub fn kept_has_image(&self, i: usize) -> bool {
        matches!(self.sources.get(i), Some(Some(_)))
    }

    /// Kept frame `i` as seen through `view`: its image viewed and preprocessed as it was for
    /// calibration, or, for a frame given as tensors, the tensors mirrored when the view flips
    /// (the only change that needs no image).
    pub fn view_of_kept(&self, i: usize, view: &View) -> Result<Vec<Vec<f32>>> {
        let frame = self.kept.get(i).ok_or_else(|| Error::Invalid(format!("there is no kept frame {i}: {} are kept", self.kept.len())))?;
        match &self.sources[i] {
            Some(s) => {
                let (px, w, h) = view.apply(&s.rgba, s.width, s.height);
                Ok(vec![preprocess(&px, w, h, &s.preprocess)?])
            }
            None if view.flip => Ok(frame.iter().zip(&self.model.meta.inputs).map(|(x, input)| mirror_width(x, &input.shape)).collect()),
            None => Ok(frame.clone()),
        }
    }

    /// A training example from kept frame `i`: a random view (crop and scale, flip,
    /// brightness, contrast), as the CLI's QAT trains on.
    pub fn training_frame(&self, i: usize, rng: &mut Rng, augment: &Augment) -> Result<Vec<Vec<f32>>> {
        self.view_of_kept(i, &View::random(rng, augment))
    }

    pub fn kept_frames(&self) -> &[Vec<Vec<f32>>] {
        &self.kept
    }

    /// Folder names to classes for this model (see [`ClassMap`]), with the class names of a
    /// labels text (one per line) when given. An error when the model is not a classifier.
    pub fn class_map(&self, labels: Option<&str>) -> Result<ClassMap> {
        ClassMap::new(self.model.engine.graph(), labels)
    }

    /// Keeps an RGBA image labelled with `class` for QAT; returns how many are kept. The model
    /// must be a classifier and `class` one of its outputs; at most [`LABELLED_FRAMES`]
    /// images of at most [`LABELLED_PIXELS`] each are kept (an error past either).
    pub fn add_labelled_image(&mut self, rgba: &[u8], width: usize, height: usize, class: usize) -> Result<usize> {
        let classes = self.class_map(None)?.classes();
        if class >= classes {
            return Err(Error::Invalid(format!("label {class} is not a class: the classifier has {classes} (0..{})", classes - 1)));
        }
        if width == 0 || height == 0 || rgba.len() != width * height * 4 {
            return Err(Error::Invalid(format!("a labelled image of {width}x{height} pixels needs {} RGBA bytes, it has {}", width * height * 4, rgba.len())));
        }
        if width * height > LABELLED_PIXELS {
            return Err(Error::Invalid(format!(
                "a labelled image of {width}x{height} pixels is larger than the {LABELLED_PIXELS} pixels (480x480) kept per image: scale it down first"
            )));
        }
        if self.labelled.len() >= LABELLED_FRAMES {
            return Err(Error::Invalid(format!("at most {LABELLED_FRAMES} labelled images are kept, and there are already {LABELLED_FRAMES}")));
        }
        self.labelled.push(LabelledImage { rgba: rgba.to_vec(), width, height, class });
        Ok(self.labelled.len())
    }

    pub fn labelled(&self) -> &[LabelledImage] {
        &self.labelled
    }

    pub fn clear_labelled(&mut self) {
        self.labelled = Vec::new();
    }

    /// The preprocessing labelled images get: the one the kept calibration frames' images were
    /// given, so that labelled frames are made exactly as calibration (and QAT's other) frames.
    pub fn labelled_preprocess(&self) -> Result<&Preprocess> {
        let mut given = self.sources.iter().flatten().map(|s| &s.preprocess);
        let Some(p) = given.next() else {
            return Err(Error::Invalid(
                "labelled images are preprocessed as the calibration images were, and the calibration has none (its frames were given as tensors, or it has not started): calibrate on images first".into(),
            ));
        };
        if given.any(|other| other != p) {
            return Err(Error::Invalid(
                "the calibration images were preprocessed in different ways, so labelled images have no one preprocessing to follow: calibrate again with one".into(),
            ));
        }
        Ok(p)
    }

    /// Labelled image `i` as seen through `view`, preprocessed as the calibration images were
    /// ([`Session::labelled_preprocess`]).
    pub fn view_of_labelled(&self, i: usize, view: &View) -> Result<Vec<Vec<f32>>> {
        let image = self.labelled.get(i).ok_or_else(|| Error::Invalid(format!("there is no labelled image {i}: {} are kept", self.labelled.len())))?;
        let p = self.labelled_preprocess()?;
        let (px, w, h) = view.apply(&image.rgba, image.width, image.height);
        Ok(vec![preprocess(&px, w, h, p)?])
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

    /// Starts a stepped sensitivity analysis on the kept frames (replacing one in progress).
    pub fn sensitivity_begin(&mut self) -> Result<SensitivityProgress> {
        let run = SensitivityRun::new(self.calibrator_or_err()?, &self.kept)?;
        Ok((&*self.sensitivity.insert(run)).into())
    }

    /// Does up to `n` steps of the analysis begun by [`Session::sensitivity_begin`].
    pub fn sensitivity_step(&mut self, n: usize) -> Result<SensitivityProgress> {
        let run = self.sensitivity.as_mut().ok_or_else(|| {
            Error::Invalid("no sensitivity analysis is running (it was never started, or the calibration changed since): start it again".into())
        })?;
        let cal = self.calibrator.as_ref().expect("a running analysis has its calibrator");
        for _ in 0..n.max(1) {
            if run.finished() {
                break;
            }
            run.step(cal, &self.kept)?;
        }
        Ok((&*run).into())
    }

    /// The ranking of a finished stepped analysis.
    pub fn sensitivity_result(&self) -> Result<Sensitivity> {
        let run = self.sensitivity.as_ref().ok_or_else(|| Error::Invalid("no sensitivity analysis was run on this calibration".into()))?;
        run.result(self.calibrator_or_err()?)
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

impl From<&SensitivityRun> for SensitivityProgress {
    fn from(run: &SensitivityRun) -> SensitivityProgress {
        SensitivityProgress {
            done: run.done(),
            total: run.total(),
            layers_done: run.layers_done(),
            layers: run.layers(),
            layer: run.current_layer().map(str::to_string),
            finished: run.finished(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::ImportOptions;
    use crate::preprocess::Layout;
    use crate::augment::ViewPool;
    use crate::train::QatConfig;

    const BLAZEFACE: &[u8] = include_bytes!("../../models/blazeface_front_128.onnx");
    const PPOCR: &[u8] = include_bytes!("../../models/ppocr_cls_mobile_v2.onnx");

    /// A small RGBA image with a pattern of its own (`seed`), not square.
    fn image(seed: u64, w: usize, h: usize) -> Vec<u8> {
        let mut rng = Rng::seeded(seed);
        let (a, b) = (rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3));
        (0..w * h).flat_map(|i| {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            let v = |c: f64| (127.5 + 120.0 * (a * x + b * y + c).sin()) as u8;
            [v(0.0), v(1.0), v(2.0), 255]
        })
        .collect()
    }

    /// The kept frames' images stay with their tensors through the reservoir; a view of a kept
    /// frame is its image viewed, then preprocessed as calibration did (NHWC BlazeFace with a
    /// stretch, NCHW BGR PP-OCR padded right); frames given as tensors are only mirrored.
    #[test]
    fn views_of_kept_frames_are_their_images_viewed_then_preprocessed() {
        let ppocr_options = ImportOptions { input_shapes: [("x".to_string(), vec![1, 3, 48, 192])].into(), ..ImportOptions::default() };
        let cases = [
            (BLAZEFACE, ImportOptions::default(), Preprocess::preset("signed", 128, 128, Layout::Nhwc).unwrap()),
            (PPOCR, ppocr_options, Preprocess::preset("ppocr", 192, 48, Layout::Nchw).unwrap()),
        ];
        for (bytes, options, p) in cases {
            let mut s = Session::new(Model::load(bytes, &options).unwrap());
            s.begin_calibration(QuantConfig::default()).unwrap();
            let sizes: Vec<(usize, usize)> = (0..KEPT_FRAMES as u64 + 8).map(|i| (40 + (i as usize % 7) * 5, 30 + (i as usize % 5) * 4)).collect();
            for (i, &(w, h)) in sizes.iter().enumerate() {
                s.calibrate_image(&image(i as u64, w, h), w, h, &p).unwrap();
            }
            assert_eq!(s.kept_frames().len(), KEPT_FRAMES);
            for i in 0..KEPT_FRAMES {
                assert!(s.kept_has_image(i));
                assert_eq!(s.view_of_kept(i, &View::identity()).unwrap(), s.kept_frames()[i], "frame {i}: its image is another frame's");
            }
            let mut rng = Rng::seeded(5);
            for i in [0, 7, KEPT_FRAMES - 1] {
                let view = View::random(&mut rng, &Augment::default());
                let source = s.sources[i].as_ref().unwrap();
                let (px, w, h) = view.apply(&source.rgba, source.width, source.height);
                let expected = preprocess(&px, w, h, &p).unwrap();
                assert_eq!(s.view_of_kept(i, &view).unwrap(), vec![expected]);
                assert_ne!(s.view_of_kept(i, &view).unwrap(), s.kept_frames()[i]);
            }
            // A training frame is one random view.
            let mut a = Rng::seeded(9);
            let mut b = Rng::seeded(9);
            let view = View::random(&mut b, &Augment::default());
            assert_eq!(s.training_frame(3, &mut a, &Augment::default()).unwrap(), s.view_of_kept(3, &view).unwrap());

            // Tensors have no image: a flip mirrors them, nothing else changes them.
            s.begin_calibration(QuantConfig::default()).unwrap();
            let x = preprocess(&image(1, 50, 40), 50, 40, &p).unwrap();
            s.calibrate(&[&x]).unwrap();
            assert!(!s.kept_has_image(0));
            let shape = &s.model.meta.inputs[0].shape;
            let crop = View { crop: [0.1, 0.2, 0.5, 0.5], brightness: 30.0, contrast: 1.2, ..View::identity() };
            assert_eq!(s.view_of_kept(0, &crop).unwrap(), vec![x.clone()]);
            let mirrored = s.view_of_kept(0, &View { flip: true, ..crop }).unwrap();
            assert_eq!(mirrored, vec![mirror_width(&x, shape)]);
            assert_eq!(mirror_width(&mirrored[0], shape), x);
            assert_ne!(mirrored[0], x);
            // Mirroring the tensor of a stretched image is preprocessing the mirrored image
            // (BlazeFace: a stretch; PP-OCR's right padding is not symmetric, so only there).
            if shape[3] == 3 {
                let flipped = View { flip: true, ..View::identity() }.apply(&image(1, 50, 40), 50, 40).0;
                let direct = preprocess(&flipped, 50, 40, &p).unwrap();
                let diff = direct.iter().zip(&mirrored[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-5, "{diff}");
            }
            assert!(s.view_of_kept(1, &crop).unwrap_err().to_string().contains("there is no kept frame 1: 1 are kept"));
        }
    }

    fn ppocr() -> Session {
        let options = ImportOptions { input_shapes: [("x".to_string(), vec![1, 3, 48, 192])].into(), ..ImportOptions::default() };
        Session::new(Model::load(PPOCR, &options).unwrap())
    }

    /// Views that change nothing: a draw is then exactly a kept frame or a labelled image.
    fn no_change() -> Augment {
        Augment { min_area: 1.0, aspect: [1.0, 1.0], flip: false, brightness: 0.0, contrast: 0.0 }
    }

    /// Labelled images (PP-OCR's two classes) are kept as images and made into frames as the
    /// calibration images were: viewed, then preprocessed with the calibration's preprocessing
    /// (the page's labelled folders get no preprocessing of their own). Bad labels, sizes and
    /// counts are refused by name, and so is a calibration that gives no one preprocessing.
    #[test]
    fn labelled_images_are_viewed_and_preprocessed_as_the_calibration_images() {
        let p = Preprocess::preset("ppocr", 192, 48, Layout::Nchw).unwrap();
        let mut s = ppocr();
        assert_eq!(s.class_map(None).unwrap().classes(), 2);
        assert_eq!(s.add_labelled_image(&image(20, 60, 30), 60, 30, 1).unwrap(), 1);
        let e = s.view_of_labelled(0, &View::identity()).unwrap_err().to_string();
        assert!(e.contains("calibrate on images first"), "{e}");
        let e = s.add_labelled_image(&image(21, 60, 30), 60, 30, 2).unwrap_err().to_string();
        assert!(e.contains("label 2 is not a class: the classifier has 2 (0..1)"), "{e}");
        let e = s.add_labelled_image(&image(21, 60, 30), 60, 31, 0).unwrap_err().to_string();
        assert!(e.contains("60x31 pixels needs 7440 RGBA bytes, it has 7200"), "{e}");
        let e = s.add_labelled_image(&image(21, 481, 480), 481, 480, 0).unwrap_err().to_string();
        assert!(e.contains("481x480 pixels is larger than the 230400 pixels (480x480)"), "{e}");
        assert_eq!(s.labelled().len(), 1, "refused images are not kept");

        s.begin_calibration(QuantConfig::default()).unwrap();
        for i in 0..3 {
            s.calibrate_image(&image(i, 50 + 10 * i as usize, 40), 50 + 10 * i as usize, 40, &p).unwrap();
        }
        assert_eq!(s.labelled().len(), 1, "a new calibration keeps the labelled images");
        let rgba = image(20, 60, 30);
        assert_eq!(s.view_of_labelled(0, &View::identity()).unwrap(), vec![preprocess(&rgba, 60, 30, &p).unwrap()]);
        let view = View::random(&mut Rng::seeded(3), &Augment::default());
        let (px, w, h) = view.apply(&rgba, 60, 30);
        let viewed = s.view_of_labelled(0, &view).unwrap();
        assert_eq!(viewed, vec![preprocess(&px, w, h, &p).unwrap()]);
        assert_ne!(viewed, s.view_of_labelled(0, &View::identity()).unwrap());
        assert!(s.view_of_labelled(1, &view).unwrap_err().to_string().contains("there is no labelled image 1: 1 are kept"));

        // The cap: LABELLED_FRAMES images, then a clear error.
        for i in 1..LABELLED_FRAMES {
            s.add_labelled_image(&image(30 + i as u64, 8, 6), 8, 6, i % 2).unwrap();
        }
        let e = s.add_labelled_image(&image(99, 8, 6), 8, 6, 0).unwrap_err().to_string();
        assert!(e.contains(&format!("at most {LABELLED_FRAMES} labelled images are kept")), "{e}");
        s.clear_labelled();
        assert!(s.labelled().is_empty());

        // No one preprocessing to follow: images preprocessed two ways, or only tensors.
        s.add_labelled_image(&rgba, 60, 30, 0).unwrap();
        let other = Preprocess { mean: [100.0; 3], ..p.clone() };
        s.calibrate_image(&image(5, 50, 40), 50, 40, &other).unwrap();
        let e = s.view_of_labelled(0, &View::identity()).unwrap_err().to_string();
        assert!(e.contains("preprocessed in different ways"), "{e}");
        s.begin_calibration(QuantConfig::default()).unwrap();
        s.calibrate(&[&preprocess(&image(6, 50, 40), 50, 40, &p).unwrap()]).unwrap();
        let e = s.view_of_labelled(0, &View::identity()).unwrap_err().to_string();
        assert!(e.contains("given as tensors") && e.contains("calibrate on images first"), "{e}");
        // QAT refuses them at its start, not at the first batch that draws one.
        s.quantize_ptq().unwrap();
        let e = s.qat_trainer(QatConfig::default()).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("calibrate on images first"), "{e}");
    }

    /// A model that is not a classifier takes no labels: the classifier test's error, which
    /// the page shows as it is.
    #[test]
    fn a_detector_refuses_labels_with_the_reason() {
        let mut s = Session::new(Model::load(BLAZEFACE, &ImportOptions::default()).unwrap());
        let e = s.class_map(Some("face\n")).unwrap_err().to_string();
        assert!(e.contains("labels need a classifier output") && e.contains("the model's outputs are"), "{e}");
        let e = s.add_labelled_image(&image(1, 8, 6), 8, 6, 0).unwrap_err().to_string();
        assert!(e.contains("labels need a classifier output"), "{e}");
        assert!(s.labelled().is_empty());
    }

    /// QAT batches come from a pool of views of the training frames and the labelled images
    /// together (as the CLI's --qat-labels): a labelled draw is a view of the image with its
    /// class, an unlabelled one a view of a kept frame; each source is in the pool as often
    /// as the others (give or take one), and each view is drawn once per epoch. The trainer
    /// then reports the label loss.
    #[test]
    fn qat_batches_mix_labelled_images_with_their_classes() {
        let p = Preprocess::preset("ppocr", 192, 48, Layout::Nchw).unwrap();
        let mut s = ppocr();
        s.begin_calibration(QuantConfig::default()).unwrap();
        for i in 0..3 {
            s.calibrate_image(&image(i, 70, 40), 70, 40, &p).unwrap();
        }
        s.quantize_ptq().unwrap();
        let (train, augment) = (0..3, Augment::default());

        // No labelled images: the pool's views of the kept frames, in the pool's order.
        let (mut a, mut b) = (Rng::seeded(11), Rng::seeded(11));
        let mut views = s.qat_views(train.clone(), 4, &augment).unwrap();
        let (frames, labels) = s.qat_batch(train.clone(), &mut views, 6, &mut a).unwrap();
        let mut expected = ViewPool::new(3, 4, &augment);
        let before: Vec<_> = (0..6).map(|_| {
            let (i, v) = expected.draw(&mut b).unwrap();
            s.view_of_kept(*i, v).unwrap()
        }).collect();
        assert_eq!(frames, before);
        assert_eq!(labels, vec![None; 6]);
        // A second epoch meets the same views: at most 4 distinct frames in 8 draws.
        let (more, _) = s.qat_batch(train.clone(), &mut views, 2, &mut a).unwrap();
        let mut distinct = frames.into_iter().chain(more).collect::<Vec<_>>();
        distinct.sort_by(|x, y| x[0].partial_cmp(&y[0]).unwrap());
        distinct.dedup();
        assert!(distinct.len() <= 4, "{} distinct frames from a pool of 4 views", distinct.len());

        // Class 0, then class 1.
        let labelled = [(image(40, 90, 30), 90, 30), (image(41, 60, 40), 60, 40)];
        for (class, (rgba, w, h)) in labelled.iter().enumerate() {
            s.add_labelled_image(rgba, *w, *h, class).unwrap();
        }
        let kept: Vec<Vec<f32>> = s.kept_frames().iter().map(|f| f[0].clone()).collect();
        let images: Vec<Vec<f32>> = labelled.iter().map(|(rgba, w, h)| preprocess(rgba, *w, *h, &p).unwrap()).collect();
        let mut rng = Rng::seeded(12);
        // 50 views of 5 sources: 10 of each; two epochs of them.
        let mut views = s.qat_views(train.clone(), 50, &no_change()).unwrap();
        let mut counts = [0usize; 2];
        for _ in 0..25 {
            let (frames, labels) = s.qat_batch(train.clone(), &mut views, 4, &mut rng).unwrap();
            assert_eq!((frames.len(), labels.len()), (4, 4));
            for (f, label) in frames.iter().zip(&labels) {
                match label {
                    None => assert!(kept.contains(&f[0]), "an unlabelled draw is a kept frame"),
                    Some(c) => {
                        assert_eq!(f[0], images[*c], "a labelled draw is its image, preprocessed as calibration was");
                        counts[*c] += 1;
                    }
                }
            }
        }
        assert_eq!(counts, [20, 20]);

        let mut trainer = s.qat_trainer(QatConfig { steps: Some(2), ..QatConfig::default() }).unwrap();
        let mut views = s.qat_views(train.clone(), trainer.views(), &augment).unwrap();
        let (frames, mut labels) = s.qat_batch(train.clone(), &mut views, 3, &mut rng).unwrap();
        labels[0] = Some(1); // at least one labelled frame in the step
        let stats = trainer.step_labelled(&frames, &labels).unwrap();
        assert!(stats.label_loss.is_some_and(f64::is_finite), "{stats:?}");
        assert!(trainer.losses().contains(&"cross-entropy"));

        assert!(s.qat_views(0..0, 2, &augment).unwrap_err().to_string().contains("QAT needs calibration frames"));
        assert!(s.qat_views(0..4, 2, &augment).unwrap_err().to_string().contains("kept frames 0..4, and 3 are kept"));
        assert!(s.qat_batch(0..4, &mut views, 2, &mut rng).unwrap_err().to_string().contains("kept frames 0..4, and 3 are kept"));
    }

    /// The stepped analysis is dropped when the calibration changes, and gives the one-shot
    /// ranking when run through.
    #[test]
    fn stepped_sensitivity_follows_the_calibration() {
        let p = Preprocess::preset("signed", 128, 128, Layout::Nhwc).unwrap();
        let mut s = Session::new(Model::load(BLAZEFACE, &ImportOptions::default()).unwrap());
        assert!(s.sensitivity_begin().unwrap_err().to_string().contains("calibration has not started"));
        s.begin_calibration(QuantConfig::default()).unwrap();
        for i in 0..2 {
            s.calibrate_image(&image(i, 64, 48), 64, 48, &p).unwrap();
        }
        let start = s.sensitivity_begin().unwrap();
        assert_eq!((start.done, start.finished, start.layer), (0, false, None));
        assert!(start.layers > 10, "{} layers", start.layers);
        assert_eq!(start.total, 2 + (start.layers + 2) * 3);
        let mid = s.sensitivity_step(start.total / 2).unwrap();
        assert_eq!(mid.done, start.total / 2);
        assert!(mid.layer.is_some() && mid.layers_done > 0 && !mid.finished);
        assert!(s.sensitivity_result().unwrap_err().to_string().contains("not finished yet"));
        let end = s.sensitivity_step(start.total).unwrap();
        assert!(end.finished && end.done == end.total && end.layers_done == end.layers);
        let ranking = s.sensitivity_result().unwrap();
        assert_eq!(ranking, s.sensitivity(&mut |_, _| true).unwrap());
        // The page keeps the top layers in float: the next PTQ lists them.
        let top = ranking.most_sensitive(2, 0.0);
        let report = s.quantize_ptq_keeping_float(&top).unwrap();
        assert!(top.iter().all(|n| report.float_nodes.iter().any(|f| &f.name == n)));
        // A new frame changes the calibration: the analysis must start again.
        s.calibrate_image(&image(7, 64, 48), 64, 48, &p).unwrap();
        assert!(s.sensitivity_step(1).unwrap_err().to_string().contains("start it again"));
    }
}
