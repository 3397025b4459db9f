//! Simulation equals deployment (issue #4 item 5): on every shipped model and test image, the
//! simulation (the FP32 engine on the annotated graph) and the int8 engine agree. Native only.
//!
//! The simulation computes each integer node's integers as the int8 engine does (the FP32
//! kernels on integer operands, exact, then the kernels' fixed-point requantization; see
//! `engine::sim`), so the agreement is exact: every quantized value, not only the outputs, is
//! asserted equal bit for bit, which is stronger than the one output step. For
//! comparison each test also prints how far the plain fake-quantized float graph
//! (`Fp32Engine::fake_quantized`, what QAT's training forward computes, and the simulation
//! before this) is from the int8 engine at the outputs: rare one-step flips where the f32
//! result and the fixed-point requantization round differently, growing through the layers
//! (measured: EfficientNet-Lite0 2-3 steps, BlazeFace 0 on four images and 15 on one, PP-OCR
//! 0-8), and the run time of both on the images.
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

/// Quantizes a shipped model with `config` (calibrated on the test images), runs the int8
/// engine, the simulation and the plain fake-quantized graph on each image, asserts the
/// simulation equals the int8 engine on every quantized value, and prints the figures.
fn check(name: &str, bytes: &[u8], shapes: &[(&str, Vec<usize>)], input: (&str, usize, usize, Layout), config: QuantConfig) {
    let options = ImportOptions { input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(), ..Default::default() };
    let model = Model::load(bytes, &options).unwrap();
    let (preset, w, h, layout) = input;
    let frames: Vec<Vec<f32>> = IMAGES.iter().map(|(_, b)| image_tensor(b, preset, w, h, layout)).collect();
    let mut cal = Calibrator::new(model.engine.graph(), config.clone()).unwrap();
    for x in &frames {
        cal.observe(&[x]).unwrap();
    }
    let q = cal.quantize().unwrap();
    let sim = Fp32Engine::new(q.clone());
    let fake = Fp32Engine::fake_quantized(q.clone());
    let int8 = Int8Engine::new(q.clone()).unwrap();
    // Outputs that stay float (a final Softmax) are compared at the quantized tensor feeding them.
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
