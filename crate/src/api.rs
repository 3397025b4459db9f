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

use crate::model::{Model, Output};
use crate::onnx::ImportOptions;
use crate::preprocess::{preprocess, Preprocess};

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
}

/// Version and build features of the engine, shown by the page once loaded.
#[wasm_bindgen(js_name = engineInfo)]
pub fn engine_info() -> Result<JsValue, JsError> {
    let info = EngineInfo { version: env!("CARGO_PKG_VERSION"), simd128: cfg!(target_feature = "simd128") };
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

/// A loaded model, ready to run.
#[wasm_bindgen]
pub struct Session {
    model: Model,
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
        Ok(Session { model: Model::load(bytes, &options).map_err(err)? })
    }

    /// Inputs, outputs, ops, parameters, what will be quantized, a preprocessing guess.
    pub fn summary(&self) -> Result<JsValue, JsError> {
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        Ok(serde::Serialize::serialize(&self.model.summary(), &serializer)?)
    }

    /// Runs on tensors given in input order; returns `[{name, shape, data}]`.
    pub fn run(&self, inputs: Vec<Float32Array>) -> Result<JsValue, JsError> {
        let data: Vec<Vec<f32>> = inputs.iter().map(|a| a.to_vec()).collect();
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        Ok(outputs_to_js(self.model.run(&refs).map_err(err)?))
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
        let inputs = &self.model.meta.inputs;
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
        let x = preprocess(rgba, width, height, &p).map_err(err)?;
        Ok(outputs_to_js(self.model.run(&[&x]).map_err(err)?))
    }
}
