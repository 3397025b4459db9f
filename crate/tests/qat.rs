//! Quantization-aware training on the shipped models, natively: distillation from the float
//! model on augmented views of some images, fidelity measured on views of the others.
//!
//! - `efficientnet_qat_steps_through_the_session` (always run): a few steps through the
//!   `Session` methods on EfficientNet-Lite0 W4A8; the loss of a repeated batch falls and the
//!   result becomes the QAT variant.
//! - `efficientnet_w4a8_qat_beats_ptq_on_held_out_views` (ignored: minutes in release): the
//!   default recipe, with the three fidelity figures of PTQ and QAT.
//! - `qat_step_time_against_a_forward` (ignored: timing, run it in release).
//!
//! `cargo test --release --test qat -- --ignored --nocapture` prints the figures.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::time::Instant;

use common::*;
use quant_playground::augment::{Augment, View};
use quant_playground::engine::{Fp32Engine, Int8Engine};
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::{preprocess, Preprocess};
use quant_playground::quant::metrics::{ClassifierAgreement, FidelityAcc};
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::rng::Rng;
use quant_playground::session::{Session, Variant};
use quant_playground::train::{QatConfig, Trainer};
use quant_playground::Model;

/// `count` views of the images, cycling through them, each randomly cropped/flipped/lit.
fn views(images: &[&[u8]], count: usize, seed: u64, p: &Preprocess) -> Vec<Vec<Vec<f32>>> {
    let decoded: Vec<_> = images.iter().map(|b| rgba(b)).collect();
    let mut rng = Rng::seeded(seed);
    (0..count)
        .map(|i| {
            let (px, w, h) = &decoded[i % decoded.len()];
            let (v, vw, vh) = View::random(&mut rng, &Augment::default()).apply(px, *w, *h);
            vec![preprocess(&v, vw, vh, p).unwrap()]
        })
        .collect()
}

/// Training images and held-out images (every other one, as the PTQ tests split them).
fn split_images() -> (Vec<&'static [u8]>, Vec<&'static [u8]>) {
    let all: Vec<&[u8]> = IMAGES.iter().map(|(_, b)| *b).collect();
    let (a, b): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    (a.into_iter().map(|(_, b)| *b).collect(), b.into_iter().map(|(_, b)| *b).collect())
}

fn efficientnet() -> (Model, Preprocess) {
    let model = Model::load(EFFICIENTNET, &ImportOptions::default()).unwrap();
    let p = Preprocess::guess(&model.meta.inputs[0].shape).unwrap();
    let p = Preprocess::preset("lite", p.width, p.height, p.layout).unwrap();
    (model, p)
}

fn w4a8() -> QuantConfig {
    QuantConfig { weight_bits: 4, ..QuantConfig::default() }
}

/// Fidelity of `run` against the float engine on `frames`.
fn fidelity(float: &Fp32Engine, run: &dyn Fn(&[&[f32]]) -> Vec<Vec<f32>>, frames: &[Vec<Vec<f32>>]) -> ClassifierAgreement {
    let mut acc = FidelityAcc::for_graph(float.graph());
    for f in frames {
        let x: Vec<&[f32]> = f.iter().map(|v| v.as_slice()).collect();
        acc.add(&float.run(&x).unwrap(), &run(&x));
    }
    acc.finish().outputs[0].classifier.clone().unwrap()
}

#[test]
fn efficientnet_qat_steps_through_the_session() {
    let (model, p) = efficientnet();
    let (train_imgs, _) = split_images();
    let mut session = Session::new(model);
    session.begin_calibration(w4a8()).unwrap();
    let frames = views(&train_imgs, 6, 1, &p);
    for f in &frames {
        session.calibrate(&[&f[0]]).unwrap();
    }
    let ptq_kl = session.quantize_ptq().unwrap().fidelity.outputs[0].classifier.as_ref().unwrap().mean_kl;
    let config = QatConfig { steps: Some(4), batch_size: Some(2), ..QatConfig::default() };
    let mut trainer = session.qat_trainer(config).unwrap();
    assert_eq!(trainer.mode(), quant_playground::train::QatMode::Full);
    // The same two frames every step: the loss of a batch it trains on must fall.
    let batch = frames[..2].to_vec();
    let start = Instant::now();
    let losses: Vec<f64> = (0..4).map(|_| trainer.step(&batch).unwrap().loss).collect();
    eprintln!("losses {losses:?} in {:.1} s", start.elapsed().as_secs_f64());
    assert!(losses[3] < losses[0], "{losses:?}");
    let report = session.finish_qat(&trainer).unwrap();
    let qat_kl = report.fidelity.outputs[0].classifier.as_ref().unwrap().mean_kl;
    eprintln!("kept frames: PTQ KL {ptq_kl:.4}, QAT KL {qat_kl:.4}");
    assert!(session.variant(Variant::Qat).unwrap().is_some());
    let out = session.run(Variant::Qat, &[&frames[0][0]]).unwrap();
    assert_eq!(out[0].data.len(), 1000);

    // A restarted engine: a new session rebuilt from the same frames gets the QAT result back
    // from its saved state, bit for bit; a state that does not fit is refused by name.
    let state = session.variant_state(Variant::Qat).unwrap();
    let (model, _) = efficientnet();
    let mut again = Session::new(model);
    again.begin_calibration(w4a8()).unwrap();
    for f in &frames {
        again.calibrate(&[&f[0]]).unwrap();
    }
    assert!(again.restore_variant(Variant::Qat, state.clone()).is_err(), "no PTQ variant yet");
    again.quantize_ptq().unwrap();
    let mut wrong = state.clone();
    wrong.values[3].name = "renamed".into();
    let e = again.restore_variant(Variant::Qat, wrong).unwrap_err().to_string();
    assert!(e.contains("does not match tensor"), "{e}");
    assert!(again.restore_variant(Variant::Qat, quant_playground::session::VariantState { values: vec![] }).is_err());
    let restored = again.restore_variant(Variant::Qat, state).unwrap().fidelity.outputs[0].classifier.as_ref().unwrap().mean_kl;
    assert_eq!(restored, qat_kl);
    assert_eq!(again.run(Variant::Qat, &[&frames[0][0]]).unwrap()[0].data, out[0].data);
}

/// A few QAT steps on one repeated batch of another model: the loss must fall, and the result
/// must be a valid annotated graph the int8 engine runs, where each ReLU folded into its
/// input's range (equal parameters on both sides) still is after the step sizes trained.
/// Returns the number of folded ReLUs.
fn repeated_batch_falls(name: &str, model: &Model, frames: &[Vec<Vec<f32>>], expect_losses: &[&str]) -> usize {
    let mut cal = Calibrator::new(model.engine.graph(), w4a8()).unwrap();
    for f in frames {
        cal.observe(&[&f[0]]).unwrap();
    }
    let ptq = cal.quantize().unwrap();
    let mut trainer = Trainer::new(cal.graph(), &ptq, QatConfig { steps: Some(6), ..QatConfig::default() }).unwrap();
    assert_eq!(trainer.losses(), expect_losses, "{name}");
    let batch = frames[..2].to_vec();
    let losses: Vec<f64> = (0..6).map(|_| trainer.step(&batch).unwrap().loss).collect();
    eprintln!("{name}: losses {losses:?}");
    assert!(losses[5] < losses[0], "{name}: {losses:?}");
    let g = trainer.graph().unwrap();
    let mut folded = 0;
    for (n, node) in ptq.nodes.iter().enumerate() {
        let (x, y) = (node.inputs[0], node.outputs[0]);
        if quant_playground::quant::plan::folding_clamp(&node.op).is_some() && ptq.values[x].quant == ptq.values[y].quant {
            assert_eq!(g.values[x].quant, g.values[y].quant, "{name}: {} after QAT", g.nodes[n].name);
            folded += 1;
        }
    }
    let int8 = Int8Engine::new(g).unwrap();
    assert_eq!(int8.run(&[&frames[0][0]]).unwrap().len(), model.engine.graph().outputs.len());
    folded
}

#[test]
fn blazeface_and_ppocr_train_through_their_ops() {
    // BlazeFace: NHWC input, Transpose, Concat (channel padding), MaxPool, Reshape; anchor
    // scores distilled by their sigmoids, boxes by MSE.
    let model = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let p = Preprocess::preset("signed", 128, 128, quant_playground::preprocess::Layout::Nhwc).unwrap();
    let images: Vec<&[u8]> = IMAGES.iter().map(|(_, b)| *b).collect();
    let folded = repeated_batch_falls("blazeface", &model, &views(&images, 4, 1, &p), &["anchor-kl", "anchor-kl", "mse", "mse"]);
    assert!(folded >= 10, "{folded} ReLUs folded into their Add's range");
    // PP-OCR direction classifier: squeeze-excitation blocks (HardSigmoid, Mul), HardSwish,
    // MatMul, and a Softmax output distilled through its logits.
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    let model = Model::load(PPOCR, &options).unwrap();
    let p = Preprocess::preset("ppocr", 192, 48, quant_playground::preprocess::Layout::Nchw).unwrap();
    let _ = repeated_batch_falls("ppocr", &model, &views(&images, 4, 1, &p), &["kl"]);
}

/// Every shipped image (`models/images`, 19 photographs and scans), decoded.
fn shipped_images() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/images");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

/// The default recipe on a pool of 64 augmented views of the shipped images, batch 8, as the
/// issue's PyTorch simulation ran it, for `QAT_WEIGHT_BITS` (default 4) weights and 8-bit
/// activations. Fidelity on 64 other views of the same images (never trained on) and on 48
/// views of 4 images left out of training altogether.
#[test]
#[ignore]
fn efficientnet_w4a8_qat_beats_ptq_on_held_out_views() {
    let (model, p) = efficientnet();
    let images = shipped_images();
    let bytes: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    // Four images never trained on (every fifth), the rest for calibration and training.
    let (unseen, seen): (Vec<_>, Vec<_>) = bytes.iter().enumerate().partition(|(i, _)| i % 5 == 2);
    let unseen: Vec<&[u8]> = unseen.into_iter().map(|(_, b)| *b).collect();
    let seen: Vec<&[u8]> = seen.into_iter().map(|(_, b)| *b).collect();
    let bits: u32 = std::env::var("QAT_WEIGHT_BITS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig { weight_bits: bits, ..QuantConfig::default() }).unwrap();
    for f in views(&seen, 32, 1, &p) {
        cal.observe(&[&f[0]]).unwrap();
    }
    let ptq = cal.quantize().unwrap();
    let float = Fp32Engine::new(cal.graph().clone());
    let pool_size: usize = std::env::var("QAT_POOL").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let pool = views(&seen, pool_size, 3, &p);
    let held_out = views(&seen, 64, 2, &p);
    let other_images = views(&unseen, 48, 6, &p);

    let default_steps = if bits < 8 { 300 } else { 100 };
    let steps: usize = std::env::var("QAT_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_steps);
    let config = config_from_env(steps);
    eprintln!("{config:?}");
    let mut trainer = Trainer::new(cal.graph(), &ptq, config).unwrap();
    let batch_size = trainer.batch_size();
    trainer.set_holdout(&views(&seen, 8, 4, &p)).unwrap();
    let mut rng = Rng::seeded(5);
    let start = Instant::now();
    for s in 0..steps {
        let batch: Vec<_> = (0..batch_size).map(|_| pool[(rng.next_u64() % pool.len() as u64) as usize].clone()).collect();
        let stats = trainer.step(&batch).unwrap();
        if stats.holdout_loss.is_some() || s == 0 {
            eprintln!("step {:>4} loss {:.4} lr {:.2e} held-out {:.4} ({:.0} s)", stats.step, stats.loss, stats.lr, stats.holdout_loss.unwrap_or(f64::NAN), start.elapsed().as_secs_f64());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let qat = trainer.best_graph().unwrap();

    let ptq_int8 = Int8Engine::new(ptq.clone()).unwrap();
    let qat_sim = Fp32Engine::new(qat.clone());
    let qat_int8 = Int8Engine::new(qat.clone()).unwrap();
    let show = |name: &str, c: &ClassifierAgreement| {
        eprintln!("  {name:<10} mean KL {:.4}  confident top-1 {:.3} ({} views)  all-view top-1 {:.3}  top-5 {:.3}", c.mean_kl, c.confident_top1, c.confident_frames, c.top1, c.top5)
    };
    eprintln!("EfficientNet-Lite0 W{bits}A8 ({:?}), {steps} steps of {batch_size} on {pool_size} views of {} images, {seconds:.0} s", trainer.mode(), seen.len());
    let mut results = Vec::new();
    for (what, frames) in [("64 held-out views of the training images", &held_out), ("48 views of 4 images never trained on", &other_images)] {
        eprintln!("{what}:");
        let f_ptq = fidelity(&float, &|x| ptq_int8.run(x).unwrap(), frames);
        let f_qat_sim = fidelity(&float, &|x| qat_sim.run(x).unwrap(), frames);
        let f_qat = fidelity(&float, &|x| qat_int8.run(x).unwrap(), frames);
        show("PTQ int8", &f_ptq);
        show("QAT sim", &f_qat_sim);
        show("QAT int8", &f_qat);
        eprintln!("  KL {:.1}x lower", f_ptq.mean_kl / f_qat.mean_kl);
        results.push((f_ptq, f_qat));
    }
    let (ptq_views, qat_views) = &results[0];
    assert!(qat_views.mean_kl < ptq_views.mean_kl, "QAT KL {} vs PTQ {}", qat_views.mean_kl, ptq_views.mean_kl);
}

/// One QAT step per frame against one FP32 forward (the target: at most 3.5x), with
/// the teacher's outputs cached (a pool of views) and without. The machines these run on are
/// shared: every figure is the minimum over interleaved repeats, the closest to an unloaded
/// run, and the per-op profile the per-node minimum.
#[test]
#[ignore]
fn qat_step_time_against_a_forward() {
    // QAT_MODEL=blazeface times BlazeFace instead; QAT_BITS=8 (or 4) one weight width.
    let (model, p) = match std::env::var("QAT_MODEL").as_deref() {
        Ok("blazeface") => (Model::load(BLAZEFACE, &ImportOptions::default()).unwrap(), Preprocess::preset("signed", 128, 128, quant_playground::preprocess::Layout::Nhwc).unwrap()),
        _ => efficientnet(),
    };
    let (train_imgs, _) = split_images();
    let repeats: usize = std::env::var("QAT_REPEATS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let bits = std::env::var("QAT_BITS").ok();
    for (name, config) in [("W8A8", QuantConfig::default()), ("W4A8", w4a8())] {
        if bits.as_deref().is_some_and(|b| !name.starts_with(&format!("W{b}"))) {
            continue;
        }
        let mut cal = Calibrator::new(model.engine.graph(), config).unwrap();
        let frames = views(&train_imgs, 8, 1, &p);
        for f in &frames {
            cal.observe(&[&f[0]]).unwrap();
        }
        let ptq = cal.quantize().unwrap();
        let float = Fp32Engine::new(cal.graph().clone());
        let mut trainer = Trainer::new(cal.graph(), &ptq, QatConfig::default()).unwrap();
        let batch = frames[..4].to_vec();
        trainer.step(&batch).unwrap(); // warm: buffers, teacher cache
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let (mut forward, mut training_forward, mut cached, mut fresh) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        let mut prof: Option<Vec<[f64; 3]>> = None;
        for r in 0..repeats {
            for f in &frames[..2] {
                forward = forward.min(time(&mut || drop(float.run(&[&f[0]]).unwrap())));
                training_forward = training_forward.min(time(&mut || drop(trainer.forward(f).unwrap())));
            }
            trainer.tape_mut().set_profiling(true);
            trainer.set_step_profiling(true);
            cached = cached.min(time(&mut || drop(trainer.step(&batch).unwrap())) / batch.len() as f64);
            let phases = trainer.step_profile().unwrap();
            trainer.set_step_profiling(false);
            eprintln!(
                "  step phases: frames {:.1}, update {:.1}, new parameters into the tape {:.1}, repacking {:.1}, export {:.1}, simulation plans {:.1} ms",
                phases.frames * 1e3,
                phases.update * 1e3,
                phases.constants * 1e3,
                phases.prepare * 1e3,
                phases.export * 1e3,
                phases.simulate * 1e3
            );
            let step_profile = trainer.tape_mut().profile().unwrap().to_vec();
            trainer.tape_mut().set_profiling(false);
            prof = Some(match prof {
                None => step_profile,
                Some(q) => q.iter().zip(&step_profile).map(|(a, b)| [a[0].min(b[0]), a[1].min(b[1]), a[2].min(b[2])]).collect(),
            });
            let new_views = views(&train_imgs, 4, 100 + r as u64, &p);
            fresh = fresh.min(time(&mut || drop(trainer.step(&new_views).unwrap())) / new_views.len() as f64);
        }
        let mut kinds: std::collections::BTreeMap<String, [f64; 3]> = Default::default();
        for (node, t) in ptq.nodes.iter().zip(prof.unwrap()) {
            let k = match &node.op {
                quant_playground::ir::Op::Conv(c) if c.group > 1 => format!("Conv dw {}x{} s{}", c.window.kernel[0], c.window.kernel[1], c.window.strides[0]),
                quant_playground::ir::Op::Conv(c) => format!("Conv {}x{} s{}", c.window.kernel[0], c.window.kernel[1], c.window.strides[0]),
                op => op.name().to_string(),
            };
            let e = kinds.entry(k).or_default();
            (0..3).for_each(|i| e[i] += t[i] / batch.len() as f64);
        }
        let mut total = [0f64; 3];
        for (k, t) in &kinds {
            eprintln!("  {k:<20} forward {:>6.1} ms  fq backward {:>5.1} ms  backward {:>6.1} ms", t[0] * 1e3, t[1] * 1e3, t[2] * 1e3);
            (0..3).for_each(|i| total[i] += t[i]);
        }
        eprintln!("  {:<20} forward {:>6.1} ms  fq backward {:>5.1} ms  backward {:>6.1} ms", "total", total[0] * 1e3, total[1] * 1e3, total[2] * 1e3);
        eprintln!("  tape memory {:.0} MB", trainer.tape_mut().memory_bytes() as f64 / 1e6);
        // What every optimizer step adds to follow the int8 engine: the export of the new
        // parameters and the simulation's plans of it (weights repacked as integers).
        let (mut export, mut replan) = (f64::MAX, f64::MAX);
        for _ in 0..repeats {
            let mut g = None;
            export = export.min(time(&mut || g = Some(trainer.graph().unwrap())));
            let g = g.unwrap();
            replan = replan.min(time(&mut || assert!(trainer.tape_mut().simulate(&g).unwrap())));
        }
        eprintln!("  per step: export {:.1} ms, simulation plans {:.1} ms", export * 1e3, replan * 1e3);
        eprintln!(
            "{name} ({:?}): forward {:.1} ms, training forward {:.1} ms; step per frame {:.1} ms = {:.2}x with the teacher cached, {:.1} ms = {:.2}x with a new frame",
            trainer.mode(),
            forward * 1e3,
            training_forward * 1e3,
            cached * 1e3,
            cached / forward,
            fresh * 1e3,
            fresh / forward
        );
    }
}

/// The backward of the whole float EfficientNet against a directional finite difference:
/// `∇L · d ≈ (L(θ + h·d) - L(θ - h·d)) / 2h` for a random direction `d` over every weight and
/// bias (each scaled by its magnitude), and over the input, with `L = Σ r · logits`. The
/// ReLU6s become SiLUs: differences across the kinks of hundreds of thousands of clamps would
/// swamp the comparison (they converge to the analytic value only as h → 0, where f32
/// rounding takes over).
#[test]
fn efficientnet_gradient_matches_a_directional_difference() {
    use quant_playground::ir::{Activation, Op};
    use quant_playground::train::tape::{Tape, TapeSpec};
    use std::sync::Arc;
    let (model, p) = efficientnet();
    let mut g = model.engine.graph().clone();
    for node in &mut g.nodes {
        if let Op::Conv(c) = &mut node.op {
            if c.activation != Activation::Identity {
                c.activation = Activation::Silu;
            }
        }
    }
    let (train_imgs, _) = split_images();
    let x = views(&train_imgs, 1, 9, &p).remove(0).remove(0);
    let spec = TapeSpec { trainable: g.values.iter().map(|v| v.is_const()).collect(), input_grads: true, ..Default::default() };
    let mut tape = Tape::new(g.clone(), spec).unwrap();
    tape.forward(&[&x]).unwrap();
    let mut rng = Rng::seeded(4);
    let r: Vec<f32> = (0..1000).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    tape.backward(&[(g.outputs[0], &r)]);
    let loss = |out: &[f32]| out.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
    for (what, consts) in [("weights and biases", true), ("input", false)] {
        let mut analytic = 0f64;
        let mut dirs: Vec<(usize, Vec<f32>)> = Vec::new();
        let ids: Vec<usize> = if consts { (0..g.values.len()).filter(|&v| g.values[v].is_const() && tape.grad(v).is_some()).collect() } else { vec![g.inputs[0]] };
        for &v in &ids {
            let d: Vec<f32> = (0..g.values[v].len()).map(|_| rng.gaussian() as f32).collect();
            let grad = tape.grad(v).unwrap();
            analytic += grad.iter().zip(&d).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            dirs.push((v, d));
        }
        let eval = |h: f32| -> f64 {
            let mut g2 = g.clone();
            let mut input = x.clone();
            for (v, d) in &dirs {
                if consts {
                    let data: Vec<f32> = g.const_data(*v).unwrap().iter().zip(d).map(|(&a, &b)| a + h * b * a.abs().max(1e-3)).collect();
                    g2.values[*v].data = Some(Arc::new(data));
                } else {
                    input.iter_mut().zip(d).for_each(|(a, &b)| *a += h * b);
                }
            }
            loss(&Fp32Engine::new(g2).run(&[&input]).unwrap()[0])
        };
        // Relative perturbations of the constants (each by h·|θ|): the analytic side weighs
        // the direction the same way.
        if consts {
            analytic = 0.0;
            for (v, d) in &dirs {
                let grad = tape.grad(*v).unwrap();
                analytic += grad.iter().zip(d).zip(g.const_data(*v).unwrap()).map(|((&a, &b), &w)| a as f64 * b as f64 * w.abs().max(1e-3) as f64).sum::<f64>();
            }
        }
        // The unbounded SiLU network is strongly curved: the central difference's O(h²) error
        // is 4% at h = 1e-3 and 0.05% at 1e-4.
        let h = 1e-4;
        let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
        eprintln!("{what}: analytic {analytic:.5}, numeric {numeric:.5}");
        assert!((analytic - numeric).abs() < 0.01 * numeric.abs().max(1.0), "{what}: {analytic} vs {numeric}");
    }
}


/// A recipe from the environment (for measuring recipes without recompiling): `QAT_LR`,
/// `QAT_SCALE_LR`, `QAT_BIAS_LR`, `QAT_BATCH`, `QAT_MODE` (`scales` or `full`), `QAT_WEIGHT_SCALES`
/// (`0` or `1`) over the defaults.
fn config_from_env(steps: usize) -> QatConfig {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f32>().ok());
    let mut c = QatConfig { steps: Some(steps), ..QatConfig::default() };
    if let Some(v) = get("QAT_LR") {
        c.lr = v;
    }
    if let Some(v) = get("QAT_SCALE_LR") {
        c.scale_lr = Some(v);
    }
    if let Some(v) = get("QAT_BIAS_LR") {
        c.bias_lr = Some(v);
    }
    if let Some(v) = get("QAT_BATCH") {
        c.batch_size = Some(v as usize);
    }
    if let Ok(v) = std::env::var("QAT_WEIGHT_SCALES") {
        c.learn_weight_scales = Some(v == "1");
    }
    c.mode = match std::env::var("QAT_MODE").as_deref() {
        Ok("scales") => Some(quant_playground::train::QatMode::Scales),
        Ok("full") => Some(quant_playground::train::QatMode::Full),
        _ => None,
    };
    c
}
