//! Post-training quantization of the shipped models, end to end on real images: calibrate on
//! augmented views of some images, evaluate the simulation on views of the others, and check
//! the fidelity floors. Native only (hundreds of forward passes).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use quant_playground::augment::{Augment, View};
use quant_playground::engine::Fp32Engine;
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::{preprocess, Preprocess};
use quant_playground::quant::metrics::{FidelityAcc, LayerSqnr};
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::quant::Quant;
use quant_playground::rng::Rng;
use quant_playground::Model;

/// `count` views of the images, cycling through them, each randomly cropped/flipped/lit.
fn views(images: &[&[u8]], count: usize, seed: u64, p: &Preprocess) -> Vec<Vec<f32>> {
    let decoded: Vec<_> = images.iter().map(|b| rgba(b)).collect();
    let mut rng = Rng::seeded(seed);
    (0..count)
        .map(|i| {
            let (px, w, h) = &decoded[i % decoded.len()];
            let (v, vw, vh) = View::random(&mut rng, &Augment::default()).apply(px, *w, *h);
            preprocess(&v, vw, vh, p).unwrap()
        })
        .collect()
}

fn split_images() -> (Vec<&'static [u8]>, Vec<&'static [u8]>) {
    let all: Vec<&[u8]> = IMAGES.iter().map(|(_, b)| *b).collect();
    let (a, b): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    (a.into_iter().map(|(_, b)| *b).collect(), b.into_iter().map(|(_, b)| *b).collect())
}

#[test]
fn efficientnet_w8a8_ptq_is_faithful_on_held_out_views() {
    let model = Model::load(EFFICIENTNET, &ImportOptions::default()).unwrap();
    let p = Preprocess::guess(&model.meta.inputs[0].shape).unwrap();
    let p = Preprocess { ..Preprocess::preset("lite", p.width, p.height, p.layout).unwrap() };
    let (calib_imgs, eval_imgs) = split_images();
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig::default()).unwrap();
    for x in views(&calib_imgs, 16, 1, &p) {
        cal.observe(&[&x]).unwrap();
    }
    let q = cal.quantize().unwrap();
    let quantized = q.values.iter().filter(|v| matches!(v.quant, Some(Quant::Tensor(_)))).count();
    let weights = q.values.iter().filter(|v| matches!(v.quant, Some(Quant::Weight(_)))).count();
    eprintln!("quantized activations {quantized}, weights {weights}");
    let float = Fp32Engine::new(cal.graph().clone());
    let sim = Fp32Engine::new(q.clone());
    let mut fid = FidelityAcc::for_graph(&q);
    let mut layers = LayerSqnr::new(&q);
    for x in views(&eval_imgs, 24, 2, &p) {
        let mut reference = vec![Vec::new(); q.values.len()];
        let r = float.run_observed(&[&x], &mut |v, d| if layers.tracks(v) { reference[v] = d.to_vec() }).unwrap();
        let s = sim.run_observed(&[&x], &mut |v, d| if layers.tracks(v) { layers.add(v, &reference[v], d) }).unwrap();
        fid.add(&r, &s);
    }
    let f = fid.finish();
    eprintln!("{}", serde_json::to_string_pretty(&f).unwrap());
    let mut l = layers.finish(&q);
    l.sort_by(|a, b| a.sqnr_db.partial_cmp(&b.sqnr_db).unwrap());
    for e in l.iter().take(8) {
        eprintln!("{:>8.2} dB  {} ({})", e.sqnr_db, e.node, e.op);
    }
    let c = f.outputs[0].classifier.as_ref().unwrap();
    assert!(c.mean_kl < 0.05, "mean KL {}", c.mean_kl);
}

#[test]
fn blazeface_w8a8_ptq_keeps_the_face_present_decision() {
    let model = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let p = Preprocess::guess(&model.meta.inputs[0].shape).unwrap();
    let p = Preprocess::preset("signed", p.width, p.height, p.layout).unwrap();
    let (calib_imgs, eval_imgs) = split_images();
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig::default()).unwrap();
    for x in views(&calib_imgs, 32, 1, &p) {
        cal.observe(&[&x]).unwrap();
    }
    let q = cal.quantize().unwrap();
    let float = Fp32Engine::new(cal.graph().clone());
    let sim = Fp32Engine::new(q.clone());
    let mut fid = FidelityAcc::for_graph(&q);
    let mut layers = LayerSqnr::new(&q);
    let all: Vec<&[u8]> = calib_imgs.iter().chain(&eval_imgs).copied().collect();
    for x in views(&all, 200, 2, &p) {
        let mut reference = vec![Vec::new(); q.values.len()];
        let r = float.run_observed(&[&x], &mut |v, d| if layers.tracks(v) { reference[v] = d.to_vec() }).unwrap();
        let s = sim.run_observed(&[&x], &mut |v, d| if layers.tracks(v) { layers.add(v, &reference[v], d) }).unwrap();
        fid.add(&r, &s);
    }
    let f = fid.finish();
    eprintln!("{}", serde_json::to_string_pretty(&f).unwrap());
    let mut l = layers.finish(&q);
    l.sort_by(|a, b| a.sqnr_db.partial_cmp(&b.sqnr_db).unwrap());
    for e in l.iter().take(8) {
        eprintln!("{:>8.2} dB  {} ({}) {}", e.sqnr_db, e.node, e.op, e.value);
    }
    let presence = f.presence.unwrap();
    assert!(presence.agreement >= 0.97, "{presence:?}");
}
