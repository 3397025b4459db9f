//! QAT's intermediate-feature matching (`QatConfig::feature_weight`) on the shipped models,
//! natively.
//!
//! - `default_features_are_one_cut_point_per_resolution`: the default choice on
//!   EfficientNet-Lite0 (one value per stage resolution, the stage ends) and BlazeFace (none
//!   of the head layers), and what the teacher cache then holds.
//! - `feature_matching_alone_raises_the_matched_layers_sqnr`: with the output distillation
//!   switched off, the feature loss alone trains PP-OCR's W4A8 model (step sizes and biases, 8
//!   steps on 3 images) so that the SQNR of the matched value rises (7.8 → 9.0 dB); with every
//!   weight at 0 nothing moves.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use quant_playground::engine::Fp32Engine;
use quant_playground::ir::{Graph, ValueId};
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::train::qat::TEACHER_CACHE_BYTES;
use quant_playground::train::{QatConfig, QatMode, Trainer};
use quant_playground::Model;

fn frames(preset: &str, w: usize, h: usize, layout: Layout) -> Vec<Vec<Vec<f32>>> {
    IMAGES.iter().map(|(_, b)| vec![image_tensor(b, preset, w, h, layout)]).collect()
}

fn ptq(model: &Model, frames: &[Vec<Vec<f32>>], weight_bits: u32) -> (Calibrator, Graph) {
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig { weight_bits, ..QuantConfig::default() }).unwrap();
    for f in frames {
        cal.observe(&[&f[0]]).unwrap();
    }
    let q = cal.quantize().unwrap();
    (cal, q)
}

#[test]
fn default_features_are_one_cut_point_per_resolution() {
    let model = Model::load(EFFICIENTNET, &ImportOptions::default()).unwrap();
    let f = frames("lite", 224, 224, Layout::Nchw);
    let (cal, q) = ptq(&model, &f[..2], 8);
    let t = Trainer::new(cal.graph(), &q, QatConfig { feature_weight: 1.0, ..QatConfig::default() }).unwrap();
    let names = t.feature_values();
    let shapes: Vec<Vec<usize>> = names.iter().map(|n| q.values[q.find_value(n).unwrap()].shape.clone()).collect();
    eprintln!("EfficientNet-Lite0: {names:?} {shapes:?}; teacher cache {} frames", t.teacher_cache_frames());
    // The end of each stage: 16 channels at 112, 24 at 56, 40 at 28, 80 at 14 (the narrower of
    // the two 14x14 stages), 192 at 7 (the head's 1280 channels are wider).
    assert_eq!(shapes, vec![vec![1, 16, 112, 112], vec![1, 24, 56, 56], vec![1, 40, 28, 28], vec![1, 80, 14, 14], vec![1, 192, 7, 7]]);
    let bytes: usize = shapes.iter().map(|s| 4 * s.iter().product::<usize>()).sum();
    assert_eq!(bytes, 4 * 332_416);
    // Each entry also holds the 1000 class scores.
    assert_eq!(t.teacher_cache_frames(), TEACHER_CACHE_BYTES / (bytes + 4 * 1000));
    assert_eq!(t.losses(), vec!["kl", "feature-mse"]);

    // BlazeFace: two heads (16x16 and 8x8 anchors); no head layer is a feature.
    let model = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let f = frames("signed", 128, 128, Layout::Nhwc);
    let (cal, q) = ptq(&model, &f[..2], 8);
    let t = Trainer::new(cal.graph(), &q, QatConfig { feature_weight: 1.0, ..QatConfig::default() }).unwrap();
    let names = t.feature_values();
    let shapes: Vec<Vec<usize>> = names.iter().map(|n| q.values[q.find_value(n).unwrap()].shape.clone()).collect();
    eprintln!("BlazeFace: {names:?} {shapes:?}");
    let resolutions: Vec<usize> = shapes.iter().map(|s| s[2]).collect();
    assert_eq!(resolutions, vec![64, 32, 16, 8]);
    assert!(shapes.iter().all(|s| s[1] > 6), "a head's last layer was chosen: {shapes:?}");

    // Named values: by value or node name; a weight is refused by name.
    let config = QatConfig { feature_weight: 1.0, feature_values: vec![names[1].clone()], ..QatConfig::default() };
    assert_eq!(Trainer::new(cal.graph(), &q, config).unwrap().feature_values(), vec![names[1].clone()]);
    let weight = q.values.iter().find(|v| v.is_const() && v.shape.len() == 4).unwrap().name.clone();
    let config = QatConfig { feature_weight: 1.0, feature_values: vec![weight.clone()], ..QatConfig::default() };
    let e = Trainer::new(cal.graph(), &q, config).err().unwrap().to_string();
    assert!(e.contains(&format!("'{weight}'")) && e.contains("constant"), "{e}");
}

/// SQNR (dB) of the fake-quantized forward of `g` at value `v` against the float engine.
fn sqnr_at(float: &Fp32Engine, g: &Graph, v: ValueId, frames: &[Vec<Vec<f32>>]) -> f64 {
    let student = Fp32Engine::fake_quantized(g.clone());
    let (mut signal, mut noise) = (0f64, 0f64);
    for f in frames {
        let mut t = Vec::new();
        float.run_observed(&[&f[0]], &mut |id, d| if id == v { t = d.to_vec() }).unwrap();
        student
            .run_observed(&[&f[0]], &mut |id, d| {
                if id == v {
                    for (a, b) in d.iter().zip(&t) {
                        signal += (*b as f64).powi(2);
                        noise += (*a as f64 - *b as f64).powi(2);
                    }
                }
            })
            .unwrap();
    }
    10.0 * (signal / noise).log10()
}

#[test]
fn feature_matching_alone_raises_the_matched_layers_sqnr() {
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    let model = Model::load(PPOCR, &options).unwrap();
    let f = frames("ppocr", 192, 48, Layout::Nchw);
    let (cal, q) = ptq(&model, &f, 4);
    let float = Fp32Engine::new(cal.graph().clone());
    let batch = f[..3].to_vec();
    // The default choice's deepest value: the layer whose input carries the most quantization
    // noise from the layers before.
    let probe = Trainer::new(cal.graph(), &q, QatConfig { feature_weight: 1.0, ..QatConfig::default() }).unwrap();
    let names = probe.feature_values();
    let name = names.last().unwrap().clone();
    let v = q.find_value(&name).unwrap();
    let run = |distill_weight: f32, feature_weight: f32, steps: usize| {
        let config = QatConfig {
            steps: Some(steps),
            // Step sizes and biases, at twice the W4 recipe's step-size rate: the test is that
            // this loss alone drives training, in a few steps. (Full mode at such rates first
            // flips many 4-bit weight roundings the straight-through gradient does not see.)
            mode: Some(QatMode::Scales),
            scale_lr: Some(1e-2),
            bias_lr: Some(2e-3),
            distill_weight,
            feature_weight,
            feature_values: vec![name.clone()],
            ..QatConfig::default()
        };
        let mut t = Trainer::new(cal.graph(), &q, config).unwrap();
        let stats: Vec<_> = (0..steps).map(|_| t.step(&batch).unwrap()).collect();
        (t.graph().unwrap(), stats)
    };
    let before = sqnr_at(&float, &q, v, &batch);
    let (g, stats) = run(0.0, 1.0, 8);
    let after = sqnr_at(&float, &g, v, &batch);
    let curve: Vec<f64> = stats.iter().map(|s| s.feature_loss.unwrap()).collect();
    eprintln!("PP-OCR W4A8, feature '{name}' ({:?}) alone: SQNR {before:.2} -> {after:.2} dB; feature loss {curve:.4?}", q.values[v].shape);
    assert!(after > before + 0.5, "SQNR {before} -> {after}");
    assert!(curve[7] < curve[0], "{curve:?}");
    assert!(stats.iter().all(|s| s.loss == s.feature_loss.unwrap() && s.label_loss.is_none()));

    // No weighted term: no gradient, nothing moves.
    let (still, _) = run(0.0, 0.0, 2);
    for (a, b) in still.values.iter().zip(&q.values) {
        assert_eq!((&a.data, &a.quant), (&b.data, &b.quant), "{}", a.name);
    }
}
