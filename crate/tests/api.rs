//! The wasm API as the page's worker uses it, in headless Chromium:
//! load the shipped models, read their summaries, run on RGBA frames and
//! tensors, and get `Error`s (never panics) for bad input.
#![cfg(target_arch = "wasm32")]

mod common;

use common::*;
use js_sys::{Array, Float32Array, Object, Reflect};
use quant_playground::api::Session;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test as test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).expect("a plain object")
}

fn error_message(result: Result<impl Sized, wasm_bindgen::JsError>) -> String {
    let err = JsValue::from(result.err().expect("an error"));
    get(&err, "message").as_string().expect("an Error with a message")
}

#[test]
fn summary_describes_efficientnet() {
    let session = Session::load(EFFICIENTNET, JsValue::UNDEFINED).map_err(JsValue::from).unwrap();
    let summary = session.summary().map_err(JsValue::from).unwrap();
    assert_eq!(get(&summary, "parameters").as_f64(), Some(4_631_000.0));
    let inputs = Array::from(&get(&summary, "inputs"));
    assert_eq!(get(&inputs.get(0), "name").as_string().as_deref(), Some("input"));
    let quantizable = Array::from(&get(&summary, "quantizable"));
    assert_eq!(quantizable.length(), 50);
    let pre = get(&summary, "preprocess");
    assert_eq!(get(&pre, "layout").as_string().as_deref(), Some("nchw"));
}

#[test]
fn run_rgba_classifies_the_coffee_cup() {
    let session = Session::load(EFFICIENTNET, JsValue::UNDEFINED).map_err(JsValue::from).unwrap();
    let (px, w, h) = rgba(IMAGES[1].1);
    let pre = Object::new();
    for (k, v) in [("width", 224.0), ("height", 224.0)] {
        Reflect::set(&pre, &k.into(), &v.into()).unwrap();
    }
    Reflect::set(&pre, &"layout".into(), &"nchw".into()).unwrap();
    Reflect::set(&pre, &"bgr".into(), &false.into()).unwrap();
    let three = |v: f64| Array::of3(&v.into(), &v.into(), &v.into());
    Reflect::set(&pre, &"mean".into(), &three(127.0)).unwrap();
    Reflect::set(&pre, &"std".into(), &three(128.0)).unwrap();
    let fit = Object::new();
    Reflect::set(&fit, &"kind".into(), &"centerCrop".into()).unwrap();
    Reflect::set(&fit, &"crop".into(), &0.875.into()).unwrap();
    Reflect::set(&pre, &"fit".into(), &fit).unwrap();
    let outputs = session.run_rgba(&px, w, h, pre.into()).map_err(JsValue::from).unwrap();
    let logits = Float32Array::from(get(&Array::from(&outputs).get(0), "data")).to_vec();
    assert_eq!(argmax(&logits), 967, "espresso");
}

#[test]
fn run_on_tensors_checks_sizes() {
    let session = Session::load(BLAZEFACE, JsValue::UNDEFINED).map_err(JsValue::from).unwrap();
    let x = image_tensor(IMAGES[0].1, "signed", 128, 128, quant_playground::preprocess::Layout::Nhwc);
    let outputs = Array::from(&session.run(vec![Float32Array::from(x.as_slice())]).map_err(JsValue::from).unwrap());
    assert_eq!(outputs.length(), 4);
    assert_eq!(get(&outputs.get(0), "name").as_string().as_deref(), Some("Identity:0"));
    let msg = error_message(session.run(vec![Float32Array::new_with_length(3)]));
    assert_eq!(msg, "input 'input:0': has 3 values, shape [1, 128, 128, 3] needs 49152");
}

#[test]
fn bad_bytes_and_bad_shapes_are_errors() {
    let msg = error_message(Session::load(b"not a model", JsValue::UNDEFINED));
    assert!(msg.starts_with("not an ONNX model"), "{msg}");
    let shapes = Object::new();
    let dims = Array::of4(&1.into(), &3.into(), &48.into(), &192.into());
    Reflect::set(&shapes, &"x".into(), &dims).unwrap();
    let session = Session::load(PPOCR, shapes.into()).map_err(JsValue::from).unwrap();
    let inputs = Array::from(&get(&session.summary().map_err(JsValue::from).unwrap(), "inputs"));
    let shape: Vec<f64> = Array::from(&get(&inputs.get(0), "shape")).iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(shape, vec![1.0, 3.0, 48.0, 192.0]);
    let bad = Object::new();
    Reflect::set(&bad, &"nope".into(), &dims).unwrap();
    let msg = error_message(Session::load(PPOCR, bad.into()));
    assert!(msg.starts_with("input 'nope': the model has no such input"), "{msg}");
}
