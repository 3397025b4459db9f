//! Finite-difference checks of the tape's gradients (tests only).
//!
//! [`check_graph`] makes every constant of a small graph trainable and asks for the gradients
//! of its inputs, seeds the outputs with a random `r`, and compares each gradient element with
//! the central difference `(L(x + h) - L(x - h)) / 2h` of `L = Σ r · y`, summed in f64, where
//! the forward of the difference is the FP32 engine's (independent of the tape). It also checks
//! that the tape's forward is the engine's.

use crate::engine::Fp32Engine;
use crate::ir::{infer_shapes, Activation, Conv, Graph, Node, Op, ValueId, Window2d};
use crate::rng::Rng;

use super::tape::{Tape, TapeSpec};

/// A float graph under construction with random data: inputs uniform in `[-1, 1]`, constants
/// Gaussian with deviation 0.5.
pub struct Builder {
    pub g: Graph,
    pub rng: Rng,
    inputs: Vec<Vec<f32>>,
}

impl Builder {
    pub fn new(seed: u64) -> Builder {
        Builder { g: Graph::default(), rng: Rng::seeded(seed), inputs: Vec::new() }
    }

    pub fn input(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| self.rng.uniform(-1.0, 1.0) as f32).collect();
        self.input_with(name, shape, data)
    }

    pub fn input_with(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> ValueId {
        let id = self.g.add_value(name, shape.to_vec());
        self.g.inputs.push(id);
        self.inputs.push(data);
        id
    }

    pub fn konst(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| self.rng.gaussian() as f32 * 0.5).collect();
        self.g.add_const(name, shape.to_vec(), data)
    }

    pub fn konst_with(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> ValueId {
        self.g.add_const(name, shape.to_vec(), data)
    }

    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Vec<ValueId> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|&i| self.g.values[i].shape.as_slice()).collect();
        let outs = infer_shapes(&op, &shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let outputs: Vec<ValueId> = outs.into_iter().enumerate().map(|(k, s)| self.g.add_value(format!("{name}.{k}"), s)).collect();
        self.g.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec(), outputs: outputs.clone() });
        outputs
    }

    pub fn one(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
        self.node(name, op, inputs)[0]
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv(&mut self, name: &str, x: ValueId, w: ValueId, b: Option<ValueId>, kernel: [usize; 2], stride: usize, pads: [usize; 4], dilation: usize, group: usize, act: Activation) -> ValueId {
        let window = Window2d { kernel, strides: [stride, stride], dilations: [dilation, dilation], pads };
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.one(name, Op::Conv(Conv { window, group, activation: act }), &inputs)
    }

    pub fn finish(mut self, outputs: &[ValueId]) -> (Graph, Vec<Vec<f32>>) {
        self.g.outputs = outputs.to_vec();
        self.g.validate().unwrap();
        (self.g, self.inputs)
    }
}

/// `Σ r · y` over every output, in f64.
fn loss(outputs: &[Vec<f32>], r: &[Vec<f32>]) -> f64 {
    outputs.iter().zip(r).map(|(y, r)| y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()).sum()
}

/// Checks the tape's forward against the FP32 engine and every gradient (graph inputs and all
/// constants) against central differences with step `h`: `|analytic - numeric| <= tol ·
/// max(1, |numeric|)`. `outliers` elements may fail (a difference that crosses a kink of ReLU,
/// a max or a rounding); more fail the test. At most 64 elements per tensor are checked.
pub fn check_graph(g: &Graph, inputs: &[Vec<f32>], h: f32, tol: f64, outliers: usize) {
    let nv = g.values.len();
    let spec = TapeSpec { trainable: g.values.iter().map(|v| v.is_const()).collect(), input_grads: true, ..Default::default() };
    let mut tape = Tape::new(g.clone(), spec).unwrap();
    let args: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    tape.forward(&args).unwrap();
    let engine = Fp32Engine::new(g.clone());
    let reference = engine.run(&args).unwrap();
    for (k, (a, b)) in tape.outputs().iter().zip(&reference).enumerate() {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "output {k}: the tape's forward differs from the engine's by {worst}");
    }
    let mut rng = Rng::seeded(99);
    let r: Vec<Vec<f32>> = g.outputs.iter().map(|&o| (0..g.values[o].len()).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()).collect();
    let seeds: Vec<(ValueId, &[f32])> = g.outputs.iter().zip(&r).map(|(&o, r)| (o, r.as_slice())).collect();
    tape.backward(&seeds);

    let mut failures = Vec::new();
    let mut checked = 0;
    for v in 0..nv {
        let is_input = g.inputs.contains(&v);
        if !is_input && !g.values[v].is_const() {
            continue;
        }
        let used = g.nodes.iter().any(|n| n.inputs.contains(&v));
        if !used {
            continue;
        }
        let analytic = tape.grad(v).map(|d| d.to_vec()).unwrap_or_else(|| vec![0.0; g.values[v].len()]);
        let len = g.values[v].len();
        let picks: Vec<usize> = if len <= 64 { (0..len).collect() } else { (0..64).map(|_| (rng.next_u64() % len as u64) as usize).collect() };
        for e in picks {
            let eval = |delta: f32| -> f64 {
                if is_input {
                    let k = g.inputs.iter().position(|&i| i == v).unwrap();
                    let mut xs = inputs.to_vec();
                    xs[k][e] += delta;
                    let a: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
                    loss(&engine.run(&a).unwrap(), &r)
                } else {
                    let mut g2 = g.clone();
                    let mut d = g2.values[v].data.as_deref().unwrap().clone();
                    d[e] += delta;
                    g2.values[v].data = Some(std::sync::Arc::new(d));
                    loss(&Fp32Engine::new(g2).run(&args).unwrap(), &r)
                }
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let a = analytic[e] as f64;
            checked += 1;
            if (a - numeric).abs() > tol * numeric.abs().max(1.0) {
                failures.push(format!("{}[{e}]: analytic {a:.6} numeric {numeric:.6}", g.values[v].name));
            }
        }
    }
    assert!(checked > 0, "nothing was checked");
    assert!(failures.len() <= outliers, "{} of {checked} gradient elements differ:\n{}", failures.len(), failures.join("\n"));
}
