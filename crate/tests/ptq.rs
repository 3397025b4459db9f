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
    // Each block's Add -> ReLU: the ReLU folds into the Add's range (one grid from 0, so the
    // Add's own clamp is the ReLU and the ReLU is the identity on integers).
    let mut folded = 0;
    for node in q.nodes.iter().filter(|n| matches!(n.op, quant_playground::ir::Op::Activation(quant_playground::kernels::Activation::Relu))) {
        let (Some(Quant::Tensor(a)), Some(Quant::Tensor(y))) = (&q.values[node.inputs[0]].quant, &q.values[node.outputs[0]].quant) else { panic!("ReLU {} not quantized", node.name) };
        assert_eq!((a, a.zero_point), (y, a.qmin()), "ReLU {}", node.name);
        folded += 1;
    }
    assert!(folded >= 10, "{folded} ReLU nodes");
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

/// Sensitivity analysis responds to where the error is: a mid-ranked layer given 2-bit
/// weights moves to the top of the ranking, and keeping the top layer in float (the automatic
/// keep-float choice) removes much of the model's output error.
#[test]
fn sensitivity_finds_the_layer_that_hurts_and_keeping_it_float_helps() {
    use quant_playground::quant::ptq::LayerOverride;
    use quant_playground::quant::sensitivity::{sensitivity, Sensitivity};
    // BlazeFace: raw regressor and score outputs, whose SQNR sees every layer's error (a
    // 2-class softmax, like PP-OCR's, barely moves with its logits).
    let model = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let p = Preprocess::preset("signed", 128, 128, quant_playground::preprocess::Layout::Nhwc).unwrap();
    let (images, _) = split_images();
    let frames: Vec<Vec<Vec<f32>>> = views(&images, 6, 3, &p).into_iter().map(|x| vec![x]).collect();
    let g = model.engine.graph();
    let analyse = |config: QuantConfig| -> (Calibrator, Sensitivity) {
        let mut cal = Calibrator::new(g, config).unwrap();
        for f in &frames {
            cal.observe(&[&f[0]]).unwrap();
        }
        let mut calls = 0;
        let s = sensitivity(&cal, &frames, &mut |_, _| {
            calls += 1;
            true
        })
        .unwrap();
        assert_eq!(calls, s.layers.len() + 1);
        assert!(s.layers.windows(2).all(|w| w[0].noise_share >= w[1].noise_share));
        eprintln!("output SQNR {:.1} dB", s.output_sqnr_db);
        for l in s.layers.iter().take(4) {
            eprintln!("{:5.1}%  {:6.1} dB alone  {} ({})", 100.0 * l.noise_share, l.output_sqnr_db, l.node, l.op);
        }
        (cal, s)
    };
    let (_, before) = analyse(QuantConfig::default());
    let weighted = |name: &str| g.nodes.iter().any(|n| n.name == name && n.op.has_weights());
    let (rank0, victim) = before.layers.iter().enumerate().skip(before.layers.len() / 2).find(|(_, l)| weighted(&l.node)).unwrap();
    let (share0, victim) = (victim.noise_share, victim.node.clone());
    let mut config = QuantConfig::default();
    config.overrides.insert(victim.clone(), LayerOverride { weight_bits: Some(2), per_channel: None });
    let (cal, after) = analyse(config);
    let rank1 = after.layers.iter().position(|l| l.node == victim).unwrap();
    eprintln!("{victim}: rank {rank0} -> {rank1}, share {share0:.4} -> {:.4}", after.layers[rank1].noise_share);
    assert!(rank1 < 3 && after.layers[rank1].noise_share > 3.0 * share0, "rank {rank0} -> {rank1}");
    // Applying the choice: the output error falls.
    let top = after.most_sensitive(1, 0.05);
    assert_eq!(top.len(), 1);
    let sim_sqnr = |graph| {
        let (float, sim) = (cal.engine(), Fp32Engine::new(graph));
        let mut acc = FidelityAcc::for_graph(cal.graph());
        for f in &frames {
            acc.add(&float.run(&[&f[0]]).unwrap(), &sim.run(&[&f[0]]).unwrap());
        }
        let f = acc.finish();
        f.outputs.iter().map(|o| o.sqnr_db).sum::<f64>() / f.outputs.len() as f64
    };
    let (q0, q1) = (sim_sqnr(cal.quantize().unwrap()), sim_sqnr(cal.quantize_keeping_float(&top).unwrap()));
    eprintln!("mean output SQNR {q0:.1} dB -> {q1:.1} dB with {top:?} in float");
    assert!(q1 > q0 + 1.0, "{q0} -> {q1}");
    // Cancelling stops the analysis with an error.
    assert!(sensitivity(&cal, &frames, &mut |done, _| done < 2).is_err());
}
