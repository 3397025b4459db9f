//! QAT with labels (a folder per class), natively: the folder → class mapping, the trainer's
//! labelled steps, and the CLI's `quantize --qat-labels`.
//!
//! - `class_folders_map_to_imagenet_classes`: names from `models/imagenet_classes.txt`
//!   (ignoring case, `_` as a space) or indices; errors name the folder, the labels file that
//!   does not fit, the outputs of a model that is no classifier.
//! - `labelled_steps_add_the_cross_entropy`: PP-OCR's two-class head; the label loss is
//!   reported and listed, labels out of range and labels for BlazeFace are refused.
//! - `cli_trains_with_a_label_folder`: EfficientNet-Lite0 on two shipped images sorted into
//!   ImageNet class folders (one by name, one by index); REPORT.json lists the cross-entropy
//!   and the classes, and the label loss falls. Then the CLI's errors for an unknown class and
//!   a non-classifier.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::train::labels::ClassMap;
use quant_playground::train::{QatConfig, Trainer};
use quant_playground::Model;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn imagenet_names() -> String {
    std::fs::read_to_string(repo().join("models/imagenet_classes.txt")).unwrap()
}

#[test]
fn class_folders_map_to_imagenet_classes() {
    let model = Model::load(EFFICIENTNET, &ImportOptions::default()).unwrap();
    let map = ClassMap::new(model.engine.graph(), Some(&imagenet_names())).unwrap();
    assert_eq!(map.classes(), 1000);
    assert_eq!(map.class_of("Egyptian_cat").unwrap(), 285);
    assert_eq!(map.class_of("tiger cat").unwrap(), 282);
    assert_eq!(map.class_of("ESPRESSO").unwrap(), 967);
    assert_eq!(map.class_of("967").unwrap(), 967);
    assert_eq!(map.name(967), Some("espresso"));
    let e = map.class_of("kitten").unwrap_err().to_string();
    assert!(e.contains("class folder 'kitten'") && e.contains("no class of the labels file"), "{e}");
    let e = map.class_of("1000").unwrap_err().to_string();
    assert!(e.contains("'1000'") && e.contains("out of range") && e.contains("'logits' has 1000 classes"), "{e}");
    // Without names, folders are indices.
    let plain = ClassMap::new(model.engine.graph(), None).unwrap();
    assert_eq!(plain.class_of("281").unwrap(), 281);
    let e = plain.class_of("tabby").unwrap_err().to_string();
    assert!(e.contains("'tabby'") && e.contains("named by the class index (0..999)"), "{e}");

    // PP-OCR's direction classifier has 2 classes: ImageNet's names are not its labels.
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    let ppocr = Model::load(PPOCR, &options).unwrap();
    let e = ClassMap::new(ppocr.engine.graph(), Some(&imagenet_names())).unwrap_err().to_string();
    assert!(e.contains("names 1000 classes") && e.contains("has 2"), "{e}");
    assert_eq!(ClassMap::new(ppocr.engine.graph(), Some("0\n180\n")).unwrap().class_of("180").unwrap(), 1);

    // BlazeFace is a detector: no labels, and the error says what its outputs are.
    let blazeface = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let e = ClassMap::new(blazeface.engine.graph(), None).unwrap_err().to_string();
    assert!(e.contains("labels need a classifier output") && e.contains("'Identity:0' [1, 512, 1]") && e.contains("'Identity_3:0' [1, 384, 16]"), "{e}");
}

#[test]
fn labelled_steps_add_the_cross_entropy() {
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    let model = Model::load(PPOCR, &options).unwrap();
    let frames: Vec<Vec<Vec<f32>>> = IMAGES.iter().map(|(_, b)| vec![image_tensor(b, "ppocr", 192, 48, Layout::Nchw)]).collect();
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig::default()).unwrap();
    for f in &frames {
        cal.observe(&[&f[0]]).unwrap();
    }
    let q = cal.quantize().unwrap();
    let mut t = Trainer::new(cal.graph(), &q, QatConfig { label_weight: 2.0, ..QatConfig::default() }).unwrap();
    assert_eq!(t.label_classes().unwrap(), 2);
    let batch = frames[..3].to_vec();
    let s = t.step_labelled(&batch, &[None, Some(1), None]).unwrap();
    assert_eq!(t.losses(), vec!["kl", "cross-entropy"]);
    let ce = s.label_loss.unwrap();
    // One labelled frame of three, weighted 2: the loss is the distillation plus 2/3 of it.
    assert!((s.loss - (s.distill_loss + 2.0 * ce / 3.0)).abs() < 1e-9, "{s:?}");
    assert!(ce > 0.0);
    let unlabelled = t.step(&batch).unwrap();
    assert!(unlabelled.label_loss.is_none() && unlabelled.loss == unlabelled.distill_loss);
    let e = t.step_labelled(&batch, &[None, Some(2), None]).unwrap_err().to_string();
    assert!(e.contains("label 2") && e.contains("0..1"), "{e}");
    assert!(t.step_labelled(&batch, &[Some(0)]).is_err(), "one label for three frames");

    let blazeface = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let x = image_tensor(IMAGES[0].1, "signed", 128, 128, Layout::Nhwc);
    let mut cal = Calibrator::new(blazeface.engine.graph(), QuantConfig::default()).unwrap();
    cal.observe(&[&x]).unwrap();
    let q = cal.quantize().unwrap();
    let mut t = Trainer::new(cal.graph(), &q, QatConfig::default()).unwrap();
    let e = t.step_labelled(&[vec![x]], &[Some(0)]).unwrap_err().to_string();
    assert!(e.contains("labels need a classifier output"), "{e}");
}

/// A fresh temporary folder for this test process.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_image(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(repo().join("models/images").join(name), to.join(name)).unwrap();
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quant-playground")).args(args).current_dir(repo()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_trains_with_a_label_folder() {
    let dir = temp_dir("qat-labels");
    let (calib, labels) = (dir.join("calib"), dir.join("labels"));
    copy_image("astronaut.png", &calib);
    copy_image("rocket.jpg", &calib);
    // chelsea.png is a cat FP32 calls a tiger cat (Egyptian cat a close second); coffee.png an
    // espresso, given by its index.
    copy_image("chelsea.png", &labels.join("Egyptian_cat"));
    copy_image("coffee.png", &labels.join("967"));
    let report = dir.join("report.json");
    let s = |p: &Path| p.display().to_string();
    // Full mode at a high weight rate and label weight 4, so that 8 steps of 3 frames move
    // the label loss; the run is deterministic (seeded views).
    let (ok, err) = cli(&[
        "quantize", "models/efficientnet_lite0.onnx", "--calib", &s(&calib), "--preset", "lite",
        "--qat-steps", "8", "--qat-batch", "3", "--qat-mode", "full", "--qat-lr", "2e-4",
        "--qat-labels", &s(&labels), "--labels", "models/imagenet_classes.txt", "--qat-label-weight", "4",
        "--report", &s(&report),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("2 labelled frames in 2 classes"), "{err}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let qat = &r["qat"];
    assert_eq!(qat["losses"], serde_json::json!(["kl", "cross-entropy"]));
    assert_eq!(qat["config"]["labelWeight"], 4.0);
    let classes: Vec<(String, u64)> = qat["labels"]["classes"].as_array().unwrap().iter().map(|c| (c["folder"].as_str().unwrap().to_string(), c["class"].as_u64().unwrap())).collect();
    assert_eq!(classes, vec![("967".to_string(), 967), ("Egyptian_cat".to_string(), 285)]);
    let ce: Vec<f64> = qat["lossCurve"].as_array().unwrap().iter().filter_map(|s| s["labelLoss"].as_f64()).collect();
    eprintln!("label loss per step with labelled frames: {ce:.3?}");
    assert!(ce.len() >= 6, "{ce:?}");
    let half = ce.len() / 2;
    let (early, late) = (ce[..half].iter().sum::<f64>() / half as f64, ce[half..].iter().sum::<f64>() / (ce.len() - half) as f64);
    assert!(late < 0.75 * early, "label loss {early:.3} -> {late:.3}: {ce:?}");

    // An unknown class name: the error names the folder, before any calibration.
    copy_image("coffee.png", &labels.join("kitten"));
    let (ok, err) = cli(&["quantize", "models/efficientnet_lite0.onnx", "--calib", &s(&calib), "--preset", "lite", "--qat-steps", "1", "--qat-labels", &s(&labels), "--labels", "models/imagenet_classes.txt"]);
    assert!(!ok && err.contains("class folder 'kitten'") && !err.contains("calibrating"), "{err}");
    // A detector takes no labels.
    let (ok, err) = cli(&["quantize", "models/blazeface_front_128.onnx", "--calib", &s(&calib), "--preset", "signed", "--qat-steps", "1", "--qat-labels", &s(&labels)]);
    assert!(!ok && err.contains("models/blazeface_front_128.onnx: labels need a classifier output") && err.contains("'Identity:0' [1, 512, 1]"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
