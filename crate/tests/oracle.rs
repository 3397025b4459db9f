//! Our FP32 engine against tract's execution of the same files, on the
//! shipped models and real images: max-abs error over max-abs value ≤ 1e-4.
//! Runs natively and, through wasm-pack test, in Chromium.

mod common;

use common::*;
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::Model;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn check(bytes: &[u8], options: &ImportOptions, input: &[f32], shape: &[usize], what: &str) -> Vec<Vec<f32>> {
    let model = Model::load(bytes, options).unwrap();
    let ours = model.run(&[input]).unwrap();
    let oracle = tract_run(bytes, shape, input);
    assert_eq!(ours.len(), oracle.len(), "{what}: number of outputs");
    for (o, t) in ours.iter().zip(&oracle) {
        let err = relative_error(&o.data, t);
        assert!(err <= 1e-4, "{what}: output {} differs from tract by {err:e} (relative)", o.name);
    }
    ours.into_iter().map(|o| o.data).collect()
}

#[test]
fn efficientnet_lite0_matches_tract_on_real_images() {
    let shape = [1, 3, 224, 224];
    for (name, bytes) in &IMAGES[..4] {
        let x = image_tensor(bytes, "lite", 224, 224, Layout::Nchw);
        let out = check(EFFICIENTNET, &ImportOptions::default(), &x, &shape, name);
        if *name == "coffee.png" {
            assert_eq!(argmax(&out[0]), 967, "coffee.png should be espresso");
        }
    }
}

#[test]
fn blazeface_matches_tract_and_finds_the_astronaut() {
    let shape = [1, 128, 128, 3];
    let x = image_tensor(IMAGES[0].1, "signed", 128, 128, Layout::Nhwc);
    let out = check(BLAZEFACE, &ImportOptions::default(), &x, &shape, "astronaut.png");
    let best = out[0].iter().chain(&out[1]).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    assert!(1.0 / (1.0 + (-best).exp()) > 0.75, "no face found (best logit {best})");
}

#[test]
fn ppocr_cls_with_dynamic_dims_fixed_by_the_caller_matches_tract() {
    let shape = [1, 3, 48, 192];
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), shape.to_vec());
    let x = image_tensor(IMAGES[4].1, "ppocr", 192, 48, Layout::Nchw);
    check(PPOCR, &options, &x, &shape, "text.png");
}
