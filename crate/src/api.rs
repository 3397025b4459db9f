//! The wasm-bindgen API: the only module that touches JavaScript. Every
//! export returns `Result<T, JsError>`, so JavaScript receives a real `Error`
//! carrying the message of our [`crate::Error`].
//!
//! Tensors cross the boundary as `Float32Array`s (copied once), structured
//! results (summaries) through serde-wasm-bindgen.

use std::collections::HashMap;

use js_sys::{Array, Float32Array, Object, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::ImageData;

use crate::augment::{Augment, ViewPool};
use crate::model::{Model, Output};
use crate::onnx::ImportOptions;
use crate::preprocess::{preprocess, Preprocess};
use crate::quant::ptq::QuantConfig;
use crate::rng::Rng;
use crate::session::{self, Variant};
use crate::train::qat::{QatConfig, Trainer};

/// Kept calibration frames held out from QAT to pick the best weights (when there are enough).
const QAT_HOLDOUT: usize = 4;

#[wasm_bindgen(start)]
pub fn start() {
    // Only shows what slipped through: every user-caused failure is an Error.
    console_error_panic_hook::set_once();
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EngineInfo {
    version: &'static str,
    simd128: bool,
    /// The relaxed-SIMD build (`www/engine-build.js` chose it).
    relaxed_simd: bool,
    /// Its dot product is exact on this machine, so the int8 GEMM uses it.
    relaxed_dot: bool,
}

/// Version and build features of the engine, shown by the page once loaded.
#[wasm_bindgen(js_name = engineInfo)]
pub fn engine_info() -> Result<JsValue, JsError> {
    let info = EngineInfo {
        version: env!("CARGO_PKG_VERSION"),
        simd128: cfg!(target_feature = "simd128"),
        relaxed_simd: cfg!(qp_relaxed_simd),
        relaxed_dot: crate::kernels::int8::relaxed::unsigned_dot(),
    };
    Ok(serde_wasm_bindgen::to_value(&info)?)
}

fn err(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

fn set(obj: &Object, key: &str, value: &JsValue) {
    Reflect::set(obj, &JsValue::from_str(key), value).expect("setting a property of a plain object");
}

fn outputs_to_js(outputs: Vec<Output>) -> JsValue {
    let list = Array::new();
    for o in outputs {
        let obj = Object::new();
        set(&obj, "name", &JsValue::from_str(&o.name));
        set(&obj, "shape", &o.shape.iter().map(|&d| JsValue::from_f64(d as f64)).collect::<Array>());
        set(&obj, "data", &Float32Array::from(o.data.as_slice()));
        list.push(&obj);
    }
    list.into()
}

/// A loaded model, ready to run, calibrate and quantize.
#[wasm_bindgen]
pub struct Session {
    session: session::Session,
    /// QAT in progress (between `qatBegin` and `qatFinish`) and the views it draws from.
    trainer: Option<(Trainer, ViewPool)>,
    /// Labelled frames that QAT in progress has trained on so far.
    labelled_trained: usize,
    rng: Rng,
}

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    Ok(value.serialize(&serde_wasm_bindgen::Serializer::json_compatible())?)
}

fn optional<T: serde::de::DeserializeOwned + Default>(value: JsValue) -> Result<T, JsError> {
    if value.is_undefined() || value.is_null() {
        Ok(T::default())
    } else {
        Ok(serde_wasm_bindgen::from_value(value)?)
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HistogramReply {
    #[serde(flatten)]
    histogram: crate::quant::observer::Histogram,
    clip: Option<(f32, f32)>,
}

#[wasm_bindgen]
impl Session {
    /// Imports ONNX bytes. `inputShapes` optionally fixes dynamic input
    /// dims: `{ "x": [1, 3, 48, 192] }`; `undefined` takes the defaults
    /// (batch 1, spatial 224), which the summary reports.
    pub fn load(bytes: &[u8], input_shapes: JsValue) -> Result<Session, JsError> {
        let input_shapes: HashMap<String, Vec<usize>> =
            if input_shapes.is_undefined() || input_shapes.is_null() { HashMap::new() } else { serde_wasm_bindgen::from_value(input_shapes)? };
        let options = ImportOptions { input_shapes, ..ImportOptions::default() };
        Ok(Session { session: session::Session::new(Model::load(bytes, &options).map_err(err)?), trainer: None, labelled_trained: 0, rng: Rng::seeded(0x9a7) })
    }

    /// Inputs, outputs, ops, parameters, what will be quantized, a preprocessing guess.
    pub fn summary(&self) -> Result<JsValue, JsError> {
        to_js(&self.session.model.summary())
    }

    /// Runs on tensors given in input order; returns `[{name, shape, data}]`.
    pub fn run(&self, inputs: Vec<Float32Array>) -> Result<JsValue, JsError> {
        let data: Vec<Vec<f32>> = inputs.iter().map(|a| a.to_vec()).collect();
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        Ok(outputs_to_js(self.session.model.run(&refs).map_err(err)?))
    }

    /// Runs a single-image-input model on an RGBA frame (a canvas's
    /// ImageData), preprocessed as `preprocess` says (the summary's guess
    /// when `undefined`).
    #[wasm_bindgen(js_name = runImage)]
    pub fn run_image(&self, image: &ImageData, preprocess: JsValue) -> Result<JsValue, JsError> {
        let rgba = image.data();
        self.run_rgba(&rgba, image.width() as usize, image.height() as usize, preprocess)
    }

    /// Like `runImage`, on raw RGBA bytes (what a worker gets from an ImageBitmap).
    #[wasm_bindgen(js_name = runRgba)]
    pub fn run_rgba(&self, rgba: &[u8], width: usize, height: usize, preprocess_options: JsValue) -> Result<JsValue, JsError> {
        self.run_variant_rgba("fp32", rgba, width, height, preprocess_options)
    }

    /// Runs variant `fp32`, `ptq` or `qat` on an RGBA frame.
    #[wasm_bindgen(js_name = runVariantRgba)]
    pub fn run_variant_rgba(&self, variant: &str, rgba: &[u8], width: usize, height: usize, preprocess_options: JsValue) -> Result<JsValue, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let x = self.frame(rgba, width, height, preprocess_options)?;
        Ok(outputs_to_js(self.session.run(variant, &[&x]).map_err(err)?))
    }

    /// Runs variant `fp32`, `ptq` or `qat` on tensors given in input order.
    #[wasm_bindgen(js_name = runVariant)]
    pub fn run_variant(&self, variant: &str, inputs: Vec<Float32Array>) -> Result<JsValue, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let data: Vec<Vec<f32>> = inputs.iter().map(|a| a.to_vec()).collect();
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        Ok(outputs_to_js(self.session.run(variant, &refs).map_err(err)?))
    }

    /// The `ptq` or `qat` variant as ONNX QDQ bytes (`fp32`: the float model as imported).
    #[wasm_bindgen(js_name = exportOnnx)]
    pub fn export_onnx(&self, variant: &str) -> Result<Vec<u8>, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let graph = match self.session.variant(variant).map_err(err)? {
            Some(q) => &q.graph,
            None => self.session.model.engine.graph(),
        };
        crate::onnx::export::export(graph, &crate::onnx::export::ExportOptions::default()).map_err(err)
    }

    /// Starts calibration with a quantization config (`{}` or `undefined`: the defaults;
    /// fields as in `QuantConfig`: weightBits, perChannel, calibration {method, ...},
    /// activationSigned, activationSymmetric, keepFloat, overrides, biasCorrection).
    #[wasm_bindgen(js_name = calibrationBegin)]
    pub fn calibration_begin(&mut self, config: JsValue) -> Result<(), JsError> {
        let config: QuantConfig = optional(config)?;
        self.session.begin_calibration(config).map_err(err)
    }

    /// Feeds one RGBA frame to calibration; returns `{frames}`. The engine keeps the image of
    /// each kept frame (at most `KEPT_FRAMES` of them: the page sends frames of at most 480
    /// pixels a side, so under 30 MB) so that QAT trains on random views of it.
    #[wasm_bindgen(js_name = calibrateRgba)]
    pub fn calibrate_rgba(&mut self, rgba: &[u8], width: usize, height: usize, preprocess_options: JsValue) -> Result<JsValue, JsError> {
        let p = self.preprocessing(preprocess_options)?;
        let frames = self.session.calibrate_image(rgba, width, height, &p).map_err(err)?;
        to_js(&serde_json::json!({ "frames": frames }))
    }

    /// Feeds one frame given as tensors (one per input, already preprocessed); returns `{frames}`.
    pub fn calibrate(&mut self, inputs: Vec<Float32Array>) -> Result<JsValue, JsError> {
        let data: Vec<Vec<f32>> = inputs.iter().map(|a| a.to_vec()).collect();
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let frames = self.session.calibrate(&refs).map_err(err)?;
        to_js(&serde_json::json!({ "frames": frames }))
    }

    /// Builds the PTQ variant; returns its report (config, fidelity on the kept calibration
    /// frames, per-layer SQNR, float nodes, sizes).
    pub fn quantize(&mut self) -> Result<JsValue, JsError> {
        let report = self.session.quantize_ptq().map_err(err)?;
        to_js(report)
    }

    /// Which class each folder of labelled images holds, for this model (train/labels.rs
    /// `ClassMap`: a class name of `labels`, one per line, line i naming output i, matched
    /// ignoring case with `_` as a space and any comma-separated part of a line; or the class
    /// index). Returns `{classes, maxImages, maxPixels, folders: [{folder, class, name} |
    /// {folder, error}]}`, a folder that matches no class with the error naming it; throws when
    /// the model is not a classifier or `labels` does not name its classes. `maxImages` and
    /// `maxPixels`: what `qatAddLabelledRgba` keeps at most.
    #[wasm_bindgen(js_name = labelFolders)]
    pub fn label_folders(&self, folders: Vec<String>, labels: Option<String>) -> Result<JsValue, JsError> {
        let map = self.session.class_map(labels.as_deref()).map_err(err)?;
        let folders: Vec<serde_json::Value> = folders
            .iter()
            .map(|folder| match map.class_of(folder) {
                Ok(class) => serde_json::json!({ "folder": folder, "class": class, "name": map.name(class) }),
                Err(e) => serde_json::json!({ "folder": folder, "error": e.to_string() }),
            })
            .collect();
        to_js(&serde_json::json!({
            "classes": map.classes(),
            "maxImages": session::LABELLED_FRAMES,
            "maxPixels": session::LABELLED_PIXELS,
            "folders": folders,
        }))
    }

    /// Keeps an RGBA image labelled with `class` (an output index) for the next QAT run, which
    /// trains on random views of it preprocessed as the calibration images were; returns
    /// `{labelled}`, the number kept. At most `maxImages` of at most `maxPixels` each (see
    /// `labelFolders`); a model that is not a classifier refuses them.
    #[wasm_bindgen(js_name = qatAddLabelledRgba)]
    pub fn qat_add_labelled_rgba(&mut self, rgba: &[u8], width: usize, height: usize, class: usize) -> Result<JsValue, JsError> {
        let labelled = self.session.add_labelled_image(rgba, width, height, class).map_err(err)?;
        to_js(&serde_json::json!({ "labelled": labelled }))
    }

    /// Drops the labelled images (QAT then trains without labels).
    #[wasm_bindgen(js_name = qatLabelledClear)]
    pub fn qat_labelled_clear(&mut self) {
        self.session.clear_labelled();
    }

    /// Starts QAT from the PTQ variant, distilling from the FP32 model on random views of the
    /// kept calibration frames (a few held out, unaugmented, to keep the best weights) and of
    /// the labelled images (`qatAddLabelledRgba`), which add the cross-entropy to their class
    /// (weight `labelWeight`). `config` as `QatConfig` (`{}`: the default recipe, mode chosen
    /// by weight width). Returns `{steps, mode, batchSize, augmentation: {augment, frames,
    /// images, heldOut, views, labelled: {images, classes}}}`: the views' ranges (augment.rs
    /// `Augment`), the training frames, how many of them have an image (the others, given as
    /// tensors, are only mirrored), the held-out frames, the random views drawn for the run
    /// (`ViewPool`: each met about steps × batch / views times, its teacher targets computed
    /// once) and the labelled images and their classes.
    #[wasm_bindgen(js_name = qatBegin)]
    pub fn qat_begin(&mut self, config: JsValue) -> Result<JsValue, JsError> {
        let config: QatConfig = optional(config)?;
        let mut trainer = self.session.qat_trainer(config).map_err(err)?;
        let kept = self.session.kept_frames();
        if kept.len() > 2 * QAT_HOLDOUT {
            trainer.set_holdout(&kept[kept.len() - QAT_HOLDOUT..]).map_err(err)?;
        }
        let train = self.training_frames();
        let views = self.session.qat_views(train.clone(), trainer.views(), &Augment::default()).map_err(err)?;
        let images = train.clone().filter(|&i| self.session.kept_has_image(i)).count();
        let held_out = kept.len() - train.len();
        let labelled = self.session.labelled();
        let classes = labelled.iter().map(|l| l.class).collect::<std::collections::BTreeSet<_>>().len();
        let augmentation = serde_json::json!({
            "augment": Augment::default(),
            "frames": train.len(),
            "images": images,
            "heldOut": held_out,
            "views": views.size(),
            "labelled": { "images": labelled.len(), "classes": classes },
        });
        let reply = serde_json::json!({
            "steps": trainer.steps(),
            "mode": trainer.mode(),
            "batchSize": trainer.batch_size(),
            "frozenStem": trainer.frozen_stem(),
            "augmentation": augmentation,
        });
        self.trainer = Some((trainer, views));
        self.labelled_trained = 0;
        to_js(&reply)
    }

    /// Runs up to `n` QAT steps (the worker calls it in small slices so cancel gets through);
    /// returns `{stats, step, loss, distillLoss, holdoutLoss, bestLoss, labelLoss,
    /// labelledFrames, done}`: the last step's figures (`stats`: all of them), except
    /// `labelLoss`, the mean cross-entropy of the labelled frames of this slice's steps (null
    /// when none drew one), and `labelledFrames`, those trained on since `qatBegin`.
    #[wasm_bindgen(js_name = qatStep)]
    pub fn qat_step(&mut self, n: usize) -> Result<JsValue, JsError> {
        let train = self.training_frames();
        let (trainer, views) = self.trainer.as_mut().ok_or_else(|| JsError::new("QAT has not started: call qatBegin first"))?;
        let mut last = None;
        // Per labelled frame, so that a step with more of them counts for more.
        let (mut label_sum, mut label_frames) = (0f64, 0usize);
        for _ in 0..n.max(1) {
            if trainer.steps_done() >= trainer.steps() {
                break;
            }
            let (batch, labels) = self.session.qat_batch(train.clone(), views, trainer.batch_size(), &mut self.rng).map_err(err)?;
            let stats = trainer.step_labelled(&batch, &labels).map_err(err)?;
            let labelled = labels.iter().flatten().count();
            if let Some(l) = stats.label_loss {
                label_sum += l * labelled as f64;
                label_frames += labelled;
            }
            self.labelled_trained += labelled;
            last = Some(stats);
        }
        let done = trainer.steps_done() >= trainer.steps();
        let label_loss = (label_frames > 0).then(|| label_sum / label_frames as f64);
        to_js(&serde_json::json!({
            "stats": last,
            "step": trainer.steps_done(),
            "loss": last.as_ref().map(|s| s.loss),
            "distillLoss": last.as_ref().map(|s| s.distill_loss),
            "holdoutLoss": last.as_ref().and_then(|s| s.holdout_loss),
            "bestLoss": last.as_ref().and_then(|s| s.best_loss),
            "labelLoss": label_loss,
            "labelledFrames": self.labelled_trained,
            "done": done,
        }))
    }

    /// Installs the best weights so far as the `qat` variant (also after a cancel) and returns
    /// its report, measured like PTQ's.
    #[wasm_bindgen(js_name = qatFinish)]
    pub fn qat_finish(&mut self) -> Result<JsValue, JsError> {
        let (trainer, _) = self.trainer.take().ok_or_else(|| JsError::new("QAT has not started: call qatBegin first"))?;
        let report = self.session.finish_qat(&trainer).map_err(err)?;
        to_js(report)
    }

    /// A variant's state (see `Session::variant_state`) as
    /// `{values: [{name, quant, data: Float32Array | null}]}`: the page keeps the QAT result's
    /// so that a restarted engine gets it back through `restoreVariant`.
    #[wasm_bindgen(js_name = variantState)]
    pub fn variant_state(&self, variant: &str) -> Result<JsValue, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let state = self.session.variant_state(variant).map_err(err)?;
        let values = Array::new();
        for v in &state.values {
            let o = Object::new();
            set(&o, "name", &JsValue::from_str(&v.name));
            set(&o, "quant", &to_js(&v.quant)?);
            set(&o, "data", &v.data.as_ref().map_or(JsValue::NULL, |d| Float32Array::from(&d[..]).into()));
            values.push(&o);
        }
        let out = Object::new();
        set(&out, "values", &values);
        Ok(out.into())
    }

    /// Installs a variant from `variantState` (after the PTQ variant was rebuilt from the same
    /// frames and settings) and returns its report.
    #[wasm_bindgen(js_name = restoreVariant)]
    pub fn restore_variant(&mut self, variant: &str, state: JsValue) -> Result<JsValue, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let bad = || JsError::new("a saved variant state is {values: [{name, quant, data}]}");
        let values = Reflect::get(&state, &JsValue::from_str("values")).map_err(|_| bad())?;
        if !Array::is_array(&values) {
            return Err(bad());
        }
        let mut saved = Vec::new();
        for v in Array::from(&values).iter() {
            let get = |key: &str| Reflect::get(&v, &JsValue::from_str(key)).map_err(|_| bad());
            let name = get("name")?.as_string().ok_or_else(bad)?;
            let quant = serde_wasm_bindgen::from_value(get("quant")?)?;
            let data = get("data")?;
            let data = if data.is_null() || data.is_undefined() {
                None
            } else {
                Some(data.dyn_into::<Float32Array>().map_err(|_| bad())?.to_vec())
            };
            saved.push(session::ValueState { name, quant, data });
        }
        let report = self.session.restore_variant(variant, session::VariantState { values: saved }).map_err(err)?;
        to_js(report)
    }

    /// Per-layer SQNR of a quantized variant on the kept calibration frames.
    #[wasm_bindgen(js_name = layerErrors)]
    pub fn layer_errors(&self, variant: &str) -> Result<JsValue, JsError> {
        let variant: Variant = variant.parse().map_err(err)?;
        let q = self.session.variant(variant).map_err(err)?.ok_or_else(|| JsError::new("the FP32 model has no quantization error"))?;
        to_js(&q.report.layers)
    }

    /// Starts a sensitivity analysis on the kept calibration frames (each quantized layer
    /// quantized alone, ranked by its share of the output noise; see quant/sensitivity.rs),
    /// to be stepped with `sensitivityStep`. Returns the progress
    /// `{done, total, layersDone, layers, layer, finished}`.
    #[wasm_bindgen(js_name = sensitivityBegin)]
    pub fn sensitivity_begin(&mut self) -> Result<JsValue, JsError> {
        to_js(&self.session.sensitivity_begin().map_err(err)?)
    }

    /// Does up to `n` steps of the analysis (a step: one simulated run on one frame, or one
    /// quantization; the worker calls it in small slices so cancel gets through); returns the
    /// progress as `sensitivityBegin` does.
    #[wasm_bindgen(js_name = sensitivityStep)]
    pub fn sensitivity_step(&mut self, n: usize) -> Result<JsValue, JsError> {
        to_js(&self.session.sensitivity_step(n).map_err(err)?)
    }

    /// The finished analysis: `{frames, outputSqnrDb, inputsOnlySqnrDb, layers: [{node, op,
    /// outputSqnrDb, noiseShare}]}`, most sensitive first.
    #[wasm_bindgen(js_name = sensitivityResult)]
    pub fn sensitivity_result(&self) -> Result<JsValue, JsError> {
        to_js(&self.session.sensitivity_result().map_err(err)?)
    }

    /// The calibration histogram of a tensor and the clip range chosen for it:
    /// `{start, binWidth, counts, min, max, clip: [lo, hi] | null}`.
    pub fn histogram(&self, tensor: &str) -> Result<JsValue, JsError> {
        let (histogram, clip) = self.session.histogram(tensor).map_err(err)?;
        to_js(&HistogramReply { histogram, clip })
    }
}

impl Session {
    /// The kept frames QAT trains on: all but the held-out ones (when there are enough).
    fn training_frames(&self) -> std::ops::Range<usize> {
        let kept = self.session.kept_frames().len();
        0..if kept > 2 * QAT_HOLDOUT { kept - QAT_HOLDOUT } else { kept }
    }

    /// The preprocessing of a single-image-input model: `preprocess` as given, or (undefined)
    /// the guess from the input shape; it must give the input's shape.
    fn preprocessing(&self, preprocess_options: JsValue) -> Result<Preprocess, JsError> {
        let inputs = &self.session.model.meta.inputs;
        if inputs.len() != 1 {
            return Err(JsError::new(&format!("running on an image needs a model with one input; this one has {}", inputs.len())));
        }
        let p: Preprocess = if preprocess_options.is_undefined() || preprocess_options.is_null() {
            Preprocess::guess(&inputs[0].shape).ok_or_else(|| {
                JsError::new(&format!("input '{}' with shape {:?} does not look like an image", inputs[0].name, inputs[0].shape))
            })?
        } else {
            serde_wasm_bindgen::from_value(preprocess_options)?
        };
        if p.shape() != inputs[0].shape {
            return Err(JsError::new(&format!(
                "input '{}': preprocessing gives shape {:?}, the model takes {:?}",
                inputs[0].name,
                p.shape(),
                inputs[0].shape
            )));
        }
        Ok(p)
    }

    /// Preprocesses an RGBA frame for a single-image-input model (see `preprocessing`).
    fn frame(&self, rgba: &[u8], width: usize, height: usize, preprocess_options: JsValue) -> Result<Vec<f32>, JsError> {
        let p = self.preprocessing(preprocess_options)?;
        preprocess(rgba, width, height, &p).map_err(err)
    }
}
