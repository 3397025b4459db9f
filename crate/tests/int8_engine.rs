//! The int8 engine on the shipped models, quantized by the PTQ pipeline (W8A8, calibrated on a
//! few real images), against the simulation of the same annotated graph (the FP32 engine, which
//! fake-quantizes every annotated activation).
//!
//! Two checks, because one-step differences travel: a requantizer that rounds a value near a
//! tie the other way changes the next layers' inputs, and after tens of layers (and SE gates
//! that multiply) many integers differ although each op is right.
//! - Per node, teacher-forced: each node alone, given exactly the simulation's inputs, agrees
//!   with the simulation's output within one step, and almost always exactly.
//! - End to end: the int8 engine is as faithful to the float model as the simulation is (output
//!   SQNR against float within a few dB, the same top-1).
//!
//! Native only: the int8 kernels compile at opt-level 1 in tests, and the models are large for
//! a browser test run.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use quant_playground::engine::{Fp32Engine, Int8Engine};
use quant_playground::ir::Graph;
use quant_playground::onnx::ImportOptions;
use quant_playground::preprocess::Layout;
use quant_playground::quant::ptq::{Calibrator, QuantConfig};
use quant_playground::quant::Quant;
use quant_playground::Model;

fn sqnr_db(signal: &[f32], other: &[f32]) -> f64 {
    let s: f64 = signal.iter().map(|&a| (a as f64).powi(2)).sum();
    let n: f64 = signal.iter().zip(other).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    if n == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (s / n).log10()
    }
}

/// PTQ with the default configuration (W8A8, per-channel weights) calibrated on `frames`.
fn ptq(graph: &Graph, frames: &[Vec<f32>]) -> Graph {
    let mut cal = Calibrator::new(graph, QuantConfig::default()).unwrap();
    for x in frames {
        cal.observe(&[x]).unwrap();
    }
    cal.quantize().unwrap()
}

/// Node `n` of `g` alone: its computed inputs become graph inputs, its constants stay.
fn single_node(g: &Graph, n: usize) -> Graph {
    let node = &g.nodes[n];
    let mut s = Graph::default();
    let mut map = std::collections::HashMap::new();
    for &v in node.inputs.iter().chain(&node.outputs) {
        if map.contains_key(&v) {
            continue;
        }
        s.values.push(g.values[v].clone());
        let id = s.values.len() - 1;
        if !g.values[v].is_const() && node.inputs.contains(&v) {
            s.inputs.push(id);
        }
        map.insert(v, id);
    }
    let mut node = node.clone();
    node.inputs.iter_mut().chain(node.outputs.iter_mut()).for_each(|v| *v = map[v]);
    s.outputs = node.outputs.clone();
    s.nodes.push(node);
    s
}

/// Per node, given exactly the simulation's inputs: (op, elements, exact, largest difference
/// in steps) for each node with an int8 output.
fn teacher_forced(q: &Graph, x: &[f32]) -> Vec<(String, String, usize, usize, f32)> {
    let mut values: Vec<Option<Vec<f32>>> = vec![None; q.values.len()];
    Fp32Engine::new(q.clone()).run_observed(&[x], &mut |v, d| values[v] = Some(d.to_vec())).unwrap();
    let input = q.inputs[0];
    values[input] = Some(match q.values[input].quant.as_ref().and_then(|q| q.tensor()) {
        Some(p) => x.iter().map(|&v| p.fake_quantize(v)).collect(),
        None => x.to_vec(),
    });
    let mut stats = Vec::new();
    for n in 0..q.nodes.len() {
        let s = single_node(q, n);
        let node = &q.nodes[n];
        let inputs: Vec<&[f32]> = node.inputs.iter().filter(|&&i| !q.values[i].is_const()).map(|&i| values[i].as_deref().unwrap()).collect();
        let engine = Int8Engine::new(s).unwrap();
        let out = engine.run(&inputs).unwrap();
        for (&o, got) in node.outputs.iter().zip(&out) {
            let Some(Quant::Tensor(p)) = &q.values[o].quant else { continue };
            let want = values[o].as_ref().unwrap();
            let exact = got.iter().zip(want).filter(|(a, b)| a == b).count();
            let steps = got.iter().zip(want).map(|(a, b)| (a - b).abs() / p.scale).fold(0f32, f32::max);
            stats.push((node.name.clone(), node.op.name().to_string(), got.len(), exact, steps));
        }
    }
    stats
}

/// The outputs of the float model, the simulation and the int8 engine on one input.
struct Outputs {
    float: Vec<Vec<f32>>,
    sim: Vec<Vec<f32>>,
    int8: Vec<Vec<f32>>,
}

/// Quantizes `model` on `calib`; checks every node teacher-forced on `eval[0]` and the
/// end-to-end fidelity on every `eval` frame; returns the outputs and the int8 engine.
fn check(name: &str, model: &Model, calib: &[Vec<f32>], eval: &[Vec<f32>]) -> (Vec<Outputs>, Int8Engine) {
    let q = ptq(model.engine.graph(), calib);
    let int8 = Int8Engine::new(q.clone()).unwrap();
    for (node, op, why) in int8.float_nodes() {
        eprintln!("{name}: in float: {node} ({op}): {why}");
    }
    let (mut total, mut exact) = (0, 0);
    for (node, op, len, same, steps) in teacher_forced(&q, &eval[0]) {
        assert!(steps <= 1.0 + 1e-3, "{name}: {node} ({op}) is {steps} steps from the simulation given the same inputs");
        (total, exact) = (total + len, exact + same);
    }
    let exact = exact as f64 / total as f64;
    eprintln!("{name}: teacher-forced, {exact:.5} of {total} int8 elements exact, all within one step");
    assert!(exact >= 0.99, "{name}: teacher-forced, only {exact:.5} exact");

    let float = Fp32Engine::new(model.engine.graph().clone());
    let sim = Fp32Engine::new(q.clone());
    let outputs: Vec<Outputs> =
        eval.iter().map(|x| Outputs { float: float.run(&[x]).unwrap(), sim: sim.run(&[x]).unwrap(), int8: int8.run(&[x]).unwrap() }).collect();
    for (i, o) in outputs.iter().enumerate() {
        for k in 0..o.float.len() {
            let (s, e) = (sqnr_db(&o.float[k], &o.sim[k]), sqnr_db(&o.float[k], &o.int8[k]));
            eprintln!("{name} frame {i} output {k}: SQNR vs float {s:.1} dB simulated, {e:.1} dB int8 ({:.1} dB between them)", sqnr_db(&o.sim[k], &o.int8[k]));
            assert!(e >= s - 3.0, "{name} frame {i} output {k}: int8 {e:.1} dB vs simulation {s:.1} dB from float");
        }
    }
    (outputs, int8)
}

#[test]
fn efficientnet_int8_matches_the_simulation() {
    let model = Model::load(EFFICIENTNET, &ImportOptions::default()).unwrap();
    let frames: Vec<Vec<f32>> = IMAGES[..4].iter().map(|(_, b)| image_tensor(b, "lite", 224, 224, Layout::Nchw)).collect();
    let (outputs, int8) = check("efficientnet", &model, &frames[..3], &frames[1..]);
    // PTQ keeps the classifier's ReduceMean in float (and the Reshape that reads it).
    let float: Vec<String> = int8.float_nodes().into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(float, ["ReduceMean", "Reshape"]);
    for o in &outputs {
        assert_eq!(argmax(&o.int8[0]), argmax(&o.float[0]), "top-1 differs from float");
    }
    // coffee.png is espresso in int8 too.
    assert_eq!(argmax(&outputs[0].int8[0]), 967);
}

#[test]
fn blazeface_int8_matches_the_simulation() {
    let model = Model::load(BLAZEFACE, &ImportOptions::default()).unwrap();
    let frames: Vec<Vec<f32>> = IMAGES[..4].iter().map(|(_, b)| image_tensor(b, "signed", 128, 128, Layout::Nhwc)).collect();
    // Calibrated on all four photos: with the astronaut left out, PTQ's ranges lose her face.
    let (outputs, int8) = check("blazeface", &model, &frames, &frames[..2]);
    // The NHWC->NCHW Transpose reads the float input (PTQ quantizes its output, for the Conv).
    let float: Vec<String> = int8.float_nodes().into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(float, ["Transpose"]);
    // The astronaut's face is found by the int8 engine.
    let best = |o: &[Vec<f32>]| o[0].iter().chain(&o[1]).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    assert!(1.0 / (1.0 + (-best(&outputs[0].int8)).exp()) > 0.75, "no face found in int8");
}

#[test]
fn ppocr_int8_matches_the_simulation() {
    let shape = [1, 3, 48, 192];
    let mut options = ImportOptions::default();
    options.input_shapes.insert("x".into(), shape.to_vec());
    let model = Model::load(PPOCR, &options).unwrap();
    let frames: Vec<Vec<f32>> = IMAGES.iter().map(|(_, b)| image_tensor(b, "ppocr", 192, 48, Layout::Nchw)).collect();
    let (outputs, int8) = check("ppocr", &model, &frames[..4], &frames[3..]);
    // Softmax is the only float op (PTQ keeps it float).
    let float: Vec<String> = int8.float_nodes().into_iter().map(|(_, op, _)| op).collect();
    assert_eq!(float, ["Softmax"]);
    for o in &outputs {
        assert_eq!(argmax(&o.int8[0]), argmax(&o.float[0]));
    }
}
