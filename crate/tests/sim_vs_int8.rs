//! Simulation equals deployment (issue #4 item 5): on every shipped model and test image, the
//! fake-quantized simulation (the FP32 engine on the annotated graph, what QAT trains) and the
//! int8 engine give outputs within one output quantization step. Native only.
//!
//! NOT MET YET, hence `#[ignore]`: each node agrees within one step given the same inputs
//! (tests/int8_engine.rs), but the int8 kernels requantize with TFLite's double rounding and the
//! simulation rounds once in f32, so some values differ by one step, and those differences grow
//! through tens of layers. Measured: EfficientNet-Lite0 2-4 steps, BlazeFace 16-59 steps.
//! `cargo test --test sim_vs_int8 -- --ignored --nocapture` measures it.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use quant_playground::engine::{Fp32Engine, Int8Engine};
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::quant::Quant;
use quant_playground::Model;

/// Largest |int8 - simulation| over the outputs, in output steps, per image.
fn steps(bytes: &[u8], shapes: &[(&str, Vec<usize>)], preset: &str, w: usize, h: usize, layout: Layout) -> Vec<f32> {
    let options = ImportOptions { input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(), ..Default::default() };
    let model = Model::load(bytes, &options).unwrap();
    let frames: Vec<Vec<f32>> = IMAGES.iter().map(|(_, b)| image_tensor(b, preset, w, h, layout)).collect();
    let mut cal = Calibrator::new(model.engine.graph(), QuantConfig::default()).unwrap();
    for x in &frames {
        cal.observe(&[x]).unwrap();
    }
    let q = cal.quantize().unwrap();
    let sim = Fp32Engine::new(q.clone());
    let int8 = Int8Engine::new(q.clone()).unwrap();
    // Outputs that stay float (a final Softmax) are compared at the quantized tensor feeding them.
    let producers = q.producers();
    let compared: Vec<usize> = q
        .outputs
        .iter()
        .map(|&o| match &q.values[o].quant {
            Some(Quant::Tensor(_)) => o,
            _ => q.nodes[producers[o].expect("outputs are computed")].inputs[0],
        })
        .collect();
    let step = |v: usize| match &q.values[v].quant {
        Some(Quant::Tensor(p)) => p.scale,
        _ => panic!("{} is not quantized", q.values[v].name),
    };
    frames
        .iter()
        .map(|x| {
            let (mut a, mut b) = (vec![Vec::new(); q.values.len()], vec![Vec::new(); q.values.len()]);
            sim.run_observed(&[x], &mut |v, d| if compared.contains(&v) { a[v] = d.to_vec() }).unwrap();
            int8.run_observed(&[x], &mut |v, d| if compared.contains(&v) { b[v] = d.to_vec() }).unwrap();
            compared.iter().map(|&v| a[v].iter().zip(&b[v]).map(|(x, y)| ((x - y) / step(v)).abs()).fold(0f32, f32::max)).fold(0f32, f32::max)
        })
        .collect()
}

fn check(name: &str, s: Vec<f32>) {
    eprintln!("{name}: largest output difference per image, in steps: {s:?}");
    assert!(s.iter().all(|&d| d <= 1.0 + 1e-3), "{name}: {s:?}");
}

#[test]
#[ignore = "issue #4 item 5 is not met yet; see the module docs"]
fn efficientnet_simulation_equals_int8_within_one_step() {
    check("efficientnet", steps(EFFICIENTNET, &[], "lite", 224, 224, Layout::Nchw));
}

#[test]
#[ignore = "issue #4 item 5 is not met yet; see the module docs"]
fn blazeface_simulation_equals_int8_within_one_step() {
    check("blazeface", steps(BLAZEFACE, &[], "signed", 128, 128, Layout::Nhwc));
}

#[test]
#[ignore = "issue #4 item 5 is not met yet; see the module docs"]
fn ppocr_simulation_equals_int8_within_one_step() {
    check("ppocr", steps(PPOCR, &[("x", vec![1, 3, 48, 192])], "ppocr", 192, 48, Layout::Nchw));
}
