//! Simulation equals deployment (issue #4 item 5), and so does QAT's training forward (issue #5
//! item 5): on every shipped model and test image, the simulation (the FP32 engine on the
//! annotated graph), the int8 engine and the trainer's forward agree. Native only.
//!
//! The simulation computes each integer node's integers as the int8 engine does (the FP32
//! kernels on integer operands, exact, then the kernels' fixed-point requantization; see
//! `engine::sim`), so the agreement is exact: every quantized value, not only the outputs, is
//! asserted equal bit for bit, which is stronger than the one output step. For
//! comparison each test also prints how far the plain fake-quantized float graph
//! (`Fp32Engine::fake_quantized`, what QAT's training forward computed before it followed the
//! simulation) is from the int8 engine at the outputs: rare one-step flips where the f32
//! result and the fixed-point requantization round differently, growing through the layers
//! (measured: EfficientNet-Lite0 2-3 steps, BlazeFace 0 on four images and 23 on one, PP-OCR
//! 0-8), and the run time of both on the images.
//!
//! The `*_training_forward_equals_int8` tests hold the trainer (`train::Trainer`, whose tape
//! runs the simulation's integer plans of its current parameters) to the int8 engine on its
//! own export, at the PTQ start and after a few steps have moved the step sizes and biases
//! (and the weights, at W4): within one output step, as the issue asks, and in fact equal on
//! every quantized value.
//!
//! `cargo test --test sim_vs_int8 -- --nocapture` prints the figures.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::time::Instant;

use common::*;
use quant_playground::engine::{Fp32Engine, Int8Engine};
use quant_playground::ir::Graph;
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::quant::Quant;
use quant_playground::train::{QatConfig, Trainer};
use quant_playground::Model;

/// Every quantized value an engine computes on one input, by value id.
fn quantized_values(g: &Graph, run: &dyn Fn(&mut dyn FnMut(usize, &[f32]))) -> Vec<Option<Vec<f32>>> {
    let mut values = vec![None; g.values.len()];
    run(&mut |v, d| {
        if matches!(g.values[v].quant, Some(Quant::Tensor(_))) {
            values[v] = Some(d.to_vec());
        }
    });
    values
}

/// The largest difference between two runs over `values`, in steps of each value's scale.
fn max_steps(g: &Graph, a: &[Option<Vec<f32>>], b: &[Option<Vec<f32>>], values: &[usize]) -> f32 {
    let step = |v: usize| match &g.values[v].quant {
        Some(Quant::Tensor(p)) => p.scale,
        _ => unreachable!("quantized values only"),
    };
    values
        .iter()
        .map(|&v| {
            let (x, y) = (a[v].as_ref().expect("computed"), b[v].as_ref().expect("computed"));
            x.iter().zip(y).map(|(x, y)| ((x - y) / step(v)).abs()).fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

/// The fastest of a few interleaved runs over all frames (the machines are shared).
fn seconds(frames: &[Vec<f32>], engines: [&Fp32Engine; 2]) -> [f64; 2] {
    let mut best = [f64::INFINITY; 2];
    for _ in 0..3 {
        for (e, best) in engines.iter().zip(&mut best) {
            let start = Instant::now();
            for x in frames {
                e.run(&[x]).unwrap();
            }
            *best = best.min(start.elapsed().as_secs_f64() / frames.len() as f64);
        }
    }
    best
}

/// A shipped model calibrated on the test images for `config`: the calibrator (its float graph,
/// its PTQ result) and the test images as the model's input.
fn quantize(bytes: &[u8], shapes: &[(&str, Vec<usize>)], input: (&str, usize, usize, Layout), config: &QuantConfig) -> (Calibrator, Vec<Vec<f32>>) {
    let options = ImportOptions { input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(), ..Default::default() };
    let model = Model::load(bytes, &options).unwrap();
    let (preset, w, h, layout) = input;
    let frames: Vec<Vec<f32>> = IMAGES.iter().map(|(_, b)| image_tensor(b, preset, w, h, layout)).collect();
    let mut cal = Calibrator::new(model.engine.graph(), config.clone()).unwrap();
    for x in &frames {
        cal.observe(&[x]).unwrap();
    }
    (cal, frames)
}

/// The values compared: the quantized outputs (an output that stays float, a final Softmax, at
/// the quantized tensor feeding it), and every quantized computed value.
fn compared(q: &Graph) -> (Vec<usize>, Vec<usize>) {
    let producers = q.producers();
    let outputs: Vec<usize> = q
        .outputs
        .iter()
        .map(|&o| match &q.values[o].quant {
            Some(Quant::Tensor(_)) => o,
            _ => q.nodes[producers[o].expect("outputs are computed")].inputs[0],
        })
        .collect();
    let all: Vec<usize> = (0..q.values.len()).filter(|&v| matches!(q.values[v].quant, Some(Quant::Tensor(_))) && !q.values[v].is_const() && !q.inputs.contains(&v)).collect();
    (outputs, all)
}

/// Quantizes a shipped model with `config` (calibrated on the test images), runs the int8
/// engine, the simulation and the plain fake-quantized graph on each image, asserts the
/// simulation equals the int8 engine on every quantized value, and prints the figures.
fn check(name: &str, bytes: &[u8], shapes: &[(&str, Vec<usize>)], input: (&str, usize, usize, Layout), config: QuantConfig) {
    let (cal, frames) = quantize(bytes, shapes, input, &config);
    let q = cal.quantize().unwrap();
    let sim = Fp32Engine::new(q.clone());
    let fake = Fp32Engine::fake_quantized(q.clone());
    let int8 = Int8Engine::new(q.clone()).unwrap();
    let (outputs, all) = compared(&q);
    let (mut sim_steps, mut fake_steps) = (Vec::new(), Vec::new());
    for x in &frames {
        let want = quantized_values(&q, &|f| drop(int8.run_observed(&[x], f).unwrap()));
        let got = quantized_values(&q, &|f| drop(sim.run_observed(&[x], f).unwrap()));
        let old = quantized_values(&q, &|f| drop(fake.run_observed(&[x], f).unwrap()));
        assert_eq!(max_steps(&q, &got, &want, &all), 0.0, "{name} {config:?}: the simulation differs from the int8 engine");
        sim_steps.push(max_steps(&q, &got, &want, &outputs));
        fake_steps.push(max_steps(&q, &old, &want, &outputs));
    }
    let [t_fake, t_sim] = seconds(&frames, [&fake, &sim]);
    eprintln!(
        "{name} W{}A{}: largest output difference from int8 per image, in output steps: simulation {sim_steps:?}, \
         plain fake quantization {fake_steps:?}; per frame: simulation {:.1} ms, plain fake quantization {:.1} ms",
        config.weight_bits,
        config.activation_bits,
        t_sim * 1e3,
        t_fake * 1e3
    );
}

/// QAT's training forward against the int8 engine on the trainer's export: on each image, at
/// the PTQ start and after `steps` steps on two of the images (step sizes and biases moved, and
/// the weights in full mode). Asserts what the issue asks (within one step at every output) and
/// what the design gives (every quantized value equal); prints the largest output difference
/// per image.
fn check_training(name: &str, bytes: &[u8], shapes: &[(&str, Vec<usize>)], input: (&str, usize, usize, Layout), config: QuantConfig, steps: usize) {
    let (cal, frames) = quantize(bytes, shapes, input, &config);
    let ptq = cal.quantize().unwrap();
    let mut trainer = Trainer::new(cal.graph(), &ptq, QatConfig { steps: Some(steps), ..QatConfig::default() }).unwrap();
    let (outputs, all) = compared(&ptq);
    let batch: Vec<Vec<Vec<f32>>> = frames[..2].iter().map(|x| vec![x.clone()]).collect();
    let mut report = Vec::new();
    for round in ["PTQ start", "trained"] {
        if round == "trained" {
            for _ in 0..steps {
                trainer.step(&batch).unwrap();
            }
        }
        let g = trainer.graph().unwrap();
        if round == "trained" {
            let moved = g.values.iter().zip(&ptq.values).filter(|(a, b)| a.quant != b.quant || a.data != b.data).count();
            assert!(moved > 0, "{name}: {steps} steps changed no parameter");
        }
        let int8 = Int8Engine::new(g.clone()).unwrap();
        let (mut at_outputs, mut anywhere, mut outputs_equal) = (Vec::new(), Vec::new(), true);
        for x in &frames {
            let want = quantized_values(&g, &|f| drop(int8.run_observed(&[x], f).unwrap()));
            let outs = trainer.forward(std::slice::from_ref(x)).unwrap();
            let tape = trainer.tape_mut();
            let got: Vec<Option<Vec<f32>>> = (0..g.values.len()).map(|v| want[v].as_ref().map(|_| tape.value(v).to_vec())).collect();
            at_outputs.push(max_steps(&g, &got, &want, &outputs));
            anywhere.push(max_steps(&g, &got, &want, &all));
            // Every output, the float ones too (a final Softmax: equal inputs, same FP32 kernel).
            outputs_equal &= outs == int8.run(&[x]).unwrap();
        }
        assert!(at_outputs.iter().all(|&d| d <= 1.0), "{name} {round}: the training forward is {at_outputs:?} output steps from the int8 engine");
        assert!(anywhere.iter().all(|&d| d == 0.0), "{name} {round}: the training forward differs from the int8 engine by {anywhere:?} steps");
        assert!(outputs_equal, "{name} {round}: the outputs differ");
        report.push(format!("{round} {at_outputs:?}"));
    }
    eprintln!(
        "{name} W{}A{} ({:?}, {steps} steps): largest output difference of the training forward from int8 per image, in output steps: {}",
        config.weight_bits,
        config.activation_bits,
        trainer.mode(),
        report.join(", ")
    );
}

#[test]
fn efficientnet_training_forward_equals_int8() {
    check_training("efficientnet", EFFICIENTNET, &[], ("lite", 224, 224, Layout::Nchw), QuantConfig::default(), 3);
}

#[test]
fn efficientnet_w4a8_training_forward_equals_int8() {
    check_training("efficientnet", EFFICIENTNET, &[], ("lite", 224, 224, Layout::Nchw), QuantConfig { weight_bits: 4, ..QuantConfig::default() }, 2);
}

#[test]
fn blazeface_training_forward_equals_int8() {
    check_training("blazeface", BLAZEFACE, &[], ("signed", 128, 128, Layout::Nhwc), QuantConfig::default(), 3);
}

#[test]
fn ppocr_training_forward_equals_int8() {
    check_training("ppocr", PPOCR, &[("x", vec![1, 3, 48, 192])], ("ppocr", 192, 48, Layout::Nchw), QuantConfig::default(), 3);
}

#[test]
fn efficientnet_simulation_equals_int8() {
    check("efficientnet", EFFICIENTNET, &[], ("lite", 224, 224, Layout::Nchw), QuantConfig::default());
}

#[test]
fn efficientnet_w4a8_simulation_equals_int8() {
    check("efficientnet", EFFICIENTNET, &[], ("lite", 224, 224, Layout::Nchw), QuantConfig { weight_bits: 4, ..QuantConfig::default() });
}

#[test]
fn blazeface_simulation_equals_int8() {
    check("blazeface", BLAZEFACE, &[], ("signed", 128, 128, Layout::Nhwc), QuantConfig::default());
}

#[test]
fn ppocr_simulation_equals_int8() {
    check("ppocr", PPOCR, &[("x", vec![1, 3, 48, 192])], ("ppocr", 192, 48, Layout::Nchw), QuantConfig::default());
}
