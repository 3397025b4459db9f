//! Intermediate-feature matching (optional, `QatConfig::feature_weight`): the student's
//! activations at a few values are pulled towards the float teacher's at the same values, as
//! FitNets' "hints" do. Output distillation alone says only how wrong the outputs are; a
//! matched intermediate also says where the error arises, which helps deep models whose
//! early layers carry most of the quantization noise (their output gradient is small and
//! noisy by the time it gets back to them).
//!
//! # The loss
//! Per matched value, the normalised MSE of the outputs' `mse` term
//! (`loss::normalised_mse`: `Σ (x̂ - t)² / (n · E[t²])`, `E[t²]` the teacher's running mean
//! square), between the student's value *as its consumers read it* (fake-quantized where
//! annotated, so the value's own rounding counts and its step size learns from it) and the
//! float teacher's; the mean over the matched values, so the weight does not depend on how many
//! are matched. Its gradient is seeded into the tape at those values, where the backward adds
//! it to what comes back from the consumers (`Tape::backward` takes seeds at any value).
//! The float graph and the PTQ graph share value ids (`Trainer::new` checks it), so a value
//! id names the same tensor in the teacher and in the student.
//!
//! # The default choice: the narrowest cut point at each resolution
//! Without names, [`default_values`] takes, for each spatial resolution of the 4-D activations,
//! the smallest quantized output of a compute layer that every path from the inputs to some
//! output passes through (a cut point: in a residual network, the output of a block, not the
//! inside of one; the latest of equal sizes, so the end of a stage, not its first block). Why:
//! - a cut point carries everything the later layers see, so matching it constrains all that
//!   follows, where a value inside a residual block is half of a sum;
//! - one per resolution is one per stage of a CNN (stages change resolution), spread over the
//!   depth from the first stride to the last;
//! - the narrowest one is the bottleneck of inverted-residual stages, and it is the cheapest to
//!   keep per frame for the teacher (EfficientNet-Lite0: 5 values, 332,416 floats, 1.3 MB).
//!
//! Values that reach an output through data movement only (a head's last layer) are left to the
//! output loss; values of 1x1 resolution (after global pooling) are not features.
//!
//! Tests: the loss against central differences; the seeds through a tape against differences
//! of the whole graph; the default choice on a residual graph.

use super::loss::normalised_mse;
use crate::ir::{Graph, ValueId};
use crate::quant::plan::{role, Role};
use crate::quant::Quant;
use crate::{Error, Result};

#[derive(Clone, Debug)]
struct Term {
    value: ValueId,
    /// Running sum of the teacher's mean squares, and the frames in it.
    sum: f64,
    frames: u64,
    grad: Vec<f32>,
}

/// The feature-matching loss over a set of values.
#[derive(Clone, Debug)]
pub struct FeatureMatch {
    terms: Vec<Term>,
}

impl FeatureMatch {
    pub fn new(g: &Graph, values: &[ValueId]) -> FeatureMatch {
        FeatureMatch { terms: values.iter().map(|&v| Term { value: v, sum: 0.0, frames: 0, grad: vec![0.0; g.values[v].len()] }).collect() }
    }

    /// The matched values, in order (the order of the teacher's features in [`frame`](Self::frame)).
    pub fn values(&self) -> Vec<ValueId> {
        self.terms.iter().map(|t| t.value).collect()
    }

    /// Bytes of the teacher's features of one frame.
    pub fn bytes_per_frame(&self) -> usize {
        4 * self.terms.iter().map(|t| t.grad.len()).sum::<usize>()
    }

    /// The loss of one frame, the mean over the matched values of their normalised MSE:
    /// `student(v)` gives a student value, `teacher[k]` the teacher's value of the k-th matched
    /// value. The gradients (scaled by `weight`) are then in [`seeds`](Self::seeds).
    /// `learn_norms`: the frame updates the running normalisation (training frames).
    pub fn frame<'a>(&mut self, student: impl Fn(ValueId) -> &'a [f32], teacher: &[Vec<f32>], weight: f32, learn_norms: bool) -> f64 {
        let share = weight / self.terms.len().max(1) as f32;
        let mut total = 0f64;
        for (term, t) in self.terms.iter_mut().zip(teacher) {
            total += normalised_mse(student(term.value), t, &mut term.sum, &mut term.frames, learn_norms, share, &mut term.grad);
        }
        total / self.terms.len().max(1) as f64
    }

    /// The gradients of the last frame, as the tape's seeds.
    pub fn seeds(&self) -> Vec<(ValueId, &[f32])> {
        self.terms.iter().map(|t| (t.value, t.grad.as_slice())).collect()
    }
}

/// The values named by `names` (a value's name, or a node's, meaning its first output) in `g`;
/// `teacher_values`: how many values the teacher (float) graph has, since only those exist in
/// both. Errors name the tensor and why it cannot be matched.
pub fn resolve(g: &Graph, names: &[String], teacher_values: usize) -> Result<Vec<ValueId>> {
    let mut out: Vec<ValueId> = Vec::new();
    for name in names {
        let bad = |msg: &str| Error::Tensor { name: name.clone(), msg: format!("cannot be matched to the float model's: {msg}") };
        let v = g
            .find_value(name)
            .or_else(|| g.nodes.iter().find(|n| &n.name == name).map(|n| n.outputs[0]))
            .ok_or_else(|| bad("the model has no value or node of that name"))?;
        if g.values[v].is_const() {
            return Err(bad("it is a constant (a weight or bias), not an activation"));
        }
        if g.inputs.contains(&v) {
            return Err(bad("it is a graph input, the same in both models"));
        }
        if v >= teacher_values {
            return Err(bad("the float model does not compute it"));
        }
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The default values to match (see the module docs): per spatial resolution, the narrowest
/// quantized compute output that is a cut point towards some output; in graph order.
pub fn default_values(g: &Graph) -> Vec<ValueId> {
    let nv = g.values.len();
    let consumers = g.consumers();
    let producers = g.producers();
    // Values that reach an output through data movement only: the output loss covers them.
    let mut near_output = vec![false; nv];
    for &o in &g.outputs {
        near_output[o] = true;
    }
    for node in g.nodes.iter().rev() {
        for &v in &node.outputs {
            let cs = &consumers[v];
            if !cs.is_empty() && cs.iter().all(|&c| role(&g.nodes[c].op) != Role::Compute && g.nodes[c].outputs.iter().all(|&o| near_output[o])) {
                near_output[v] = true;
            }
        }
    }
    // Which values a forward from the inputs reaches when `blocked` is removed.
    let reach = |blocked: Option<ValueId>| -> Vec<bool> {
        let mut r = vec![false; nv];
        for &i in &g.inputs {
            r[i] = Some(i) != blocked;
        }
        for node in &g.nodes {
            if node.inputs.iter().any(|&i| r[i]) {
                for &o in &node.outputs {
                    r[o] = Some(o) != blocked;
                }
            }
        }
        r
    };
    let all = reach(None);
    let mut best: Vec<((usize, usize), ValueId)> = Vec::new();
    for v in 0..nv {
        let value = &g.values[v];
        let [_, _, h, w] = value.shape[..] else { continue };
        let quantized = !value.is_const() && matches!(value.quant, Some(Quant::Tensor(_)));
        let compute = producers[v].is_some_and(|n| role(&g.nodes[n].op) == Role::Compute);
        if !quantized || !compute || near_output[v] || h * w <= 1 || !all[v] {
            continue;
        }
        let without = reach(Some(v));
        if !g.outputs.iter().any(|&o| all[o] && !without[o]) {
            continue; // bypassed (inside a residual block, a side branch)
        }
        // Values are numbered in graph order: a later one of equal size replaces the earlier.
        match best.iter_mut().find(|(res, _)| *res == (h, w)) {
            Some((_, b)) if value.len() <= g.values[*b].len() => *b = v,
            Some(_) => {}
            None => best.push(((h, w), v)),
        }
    }
    let mut values: Vec<ValueId> = best.into_iter().map(|(_, v)| v).collect();
    values.sort_by_key(|&v| producers[v]);
    values
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::Builder;
    use super::super::loss::Distillation;
    use super::super::tape::{Tape, TapeSpec};
    use super::*;
    use crate::engine::Fp32Engine;
    use crate::ir::{Activation, BinaryOp, Op};
    use crate::quant::params::from_range;

    #[test]
    fn feature_loss_against_finite_differences() {
        let mut g = Graph::default();
        let a = g.add_value("a", vec![1, 2, 2, 2]);
        let b = g.add_value("b", vec![1, 3]);
        let x = [vec![0.3f32, -1.2, 2.0, 0.1, -0.4, 0.9, 1.1, -2.0], vec![5.0f32, -3.0, 0.5]];
        let t = vec![vec![0.1f32, -1.0, 2.5, 0.0, -0.5, 0.7, 1.0, -1.5], vec![4.0f32, -2.0, 0.0]];
        let mut f = FeatureMatch::new(&g, &[a, b]);
        assert_eq!(f.bytes_per_frame(), 4 * 11);
        fn pick<'a>(x: &'a [Vec<f32>], a: ValueId) -> impl Fn(ValueId) -> &'a [f32] {
            move |v| if v == a { &x[0][..] } else { &x[1][..] }
        }
        // Warm the normalisation, then every evaluation uses the same one.
        let base = f.frame(pick(&x, a), &t, 0.7, true);
        assert!(base > 0.0);
        let seeds: Vec<(ValueId, Vec<f32>)> = f.seeds().into_iter().map(|(v, s)| (v, s.to_vec())).collect();
        let h = 1e-3f32;
        for (k, (v, grad)) in seeds.iter().enumerate() {
            assert_eq!(*v, [a, b][k]);
            for i in 0..grad.len() {
                let mut xp = x.clone();
                xp[k][i] += h;
                let up = f.frame(pick(&xp, a), &t, 0.7, false);
                xp[k][i] -= 2.0 * h;
                let down = f.frame(pick(&xp, a), &t, 0.7, false);
                let numeric = 0.7 * (up - down) / (2.0 * h as f64);
                assert!((grad[i] as f64 - numeric).abs() < 1e-3 * numeric.abs().max(1.0), "{k}[{i}]: {} vs {numeric}", grad[i]);
            }
        }
        // Identical features cost nothing.
        assert_eq!(f.frame(pick(&t, a), &t, 1.0, false), 0.0);
    }

    /// A feature seed at an intermediate value, with the output distillation seeded at the
    /// output: the tape's gradient of every weight is the derivative of the sum of both losses,
    /// computed by the FP32 engine on perturbed weights.
    #[test]
    fn intermediate_seeds_add_to_the_output_gradient() {
        let mut bld = Builder::new(8);
        let x = bld.input("x", &[1, 2, 5, 5]);
        let w1 = bld.konst("w1", &[3, 2, 3, 3]);
        let b1 = bld.konst("b1", &[3]);
        let c1 = bld.conv("c1", x, w1, Some(b1), [3, 3], 1, [1; 4], 1, 1, Activation::Silu);
        let w2 = bld.konst("w2", &[4, 3, 1, 1]);
        let c2 = bld.conv("c2", c1, w2, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let (g, inputs) = bld.finish(&[c2]);
        let mut teacher_g = g.clone();
        let shifted: Vec<f32> = g.const_data(w1).unwrap().iter().map(|v| v * 0.8 + 0.05).collect();
        teacher_g.values[w1].data = Some(std::sync::Arc::new(shifted));
        let observe = |g: &Graph| {
            let mut feat = Vec::new();
            let out = Fp32Engine::new(g.clone()).run_observed(&[&inputs[0]], &mut |v, d| if v == c1 { feat = d.to_vec() }).unwrap();
            (out, feat)
        };
        let (t_out, t_feat) = observe(&teacher_g);
        let losses = |g: &Graph, d: &mut Distillation, f: &mut FeatureMatch, learn: bool| {
            let (out, feat) = observe(g);
            // `frame` returns the unweighted loss; its gradient is scaled by the weight.
            d.frame(|_| &out[0][..], &t_out, 1.0, learn) + 2.0 * f.frame(|_| &feat[..], std::slice::from_ref(&t_feat), 2.0, learn)
        };
        let mut d = Distillation::new(&g);
        let mut f = FeatureMatch::new(&g, &[c1]);
        losses(&g, &mut d, &mut f, true); // fixes the norms
        let spec = TapeSpec { trainable: g.values.iter().map(|v| v.is_const()).collect(), ..Default::default() };
        let mut tape = Tape::new(g.clone(), spec).unwrap();
        tape.forward(&[&inputs[0]]).unwrap();
        d.frame(|v| tape.value(v), &t_out, 1.0, false);
        f.frame(|v| tape.value(v), std::slice::from_ref(&t_feat), 2.0, false);
        let mut seeds = d.seeds();
        seeds.extend(f.seeds());
        tape.backward(&seeds);
        let h = 1e-2f32;
        for &w in &[w1, b1, w2] {
            let grad = tape.grad(w).unwrap().to_vec();
            for (e, &analytic) in grad.iter().enumerate().step_by(3) {
                let eval = |delta: f32| {
                    let mut g2 = g.clone();
                    let mut data = g.const_data(w).unwrap().to_vec();
                    data[e] += delta;
                    g2.values[w].data = Some(std::sync::Arc::new(data));
                    losses(&g2, &mut d.clone(), &mut f.clone(), false)
                };
                let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
                assert!((analytic as f64 - numeric).abs() < 2e-3 * numeric.abs().max(1.0), "{}[{e}]: {analytic} vs {numeric}", g.values[w].name);
            }
        }
        // w2 sees the output loss only, w1 both: without the feature seed w1's gradient differs.
        let mut tape2 = Tape::new(g.clone(), TapeSpec { trainable: g.values.iter().map(|v| v.is_const()).collect(), ..Default::default() }).unwrap();
        tape2.forward(&[&inputs[0]]).unwrap();
        tape2.backward(&d.seeds());
        assert_ne!(tape2.grad(w1).unwrap(), tape.grad(w1).unwrap());
        assert_eq!(tape2.grad(w2).unwrap(), tape.grad(w2).unwrap());
    }

    /// Two stages: a stride-2 stem, a residual block at 4x4 (its inside is bypassed), a
    /// stride-2 conv, a head conv that is the output through a Reshape. The choice is the
    /// residual sum at 4x4 (the later of equal sizes, and a cut point) and the 2x2 conv, not
    /// the head.
    #[test]
    fn the_default_is_the_narrowest_cut_point_per_resolution() {
        let mut b = Builder::new(3);
        let x = b.input("x", &[1, 3, 8, 8]);
        let w0 = b.konst("w0", &[4, 3, 3, 3]);
        let stem = b.conv("stem", x, w0, None, [3, 3], 2, [1; 4], 1, 1, Activation::Relu);
        let w1 = b.konst("w1", &[8, 4, 1, 1]);
        let expand = b.conv("expand", stem, w1, None, [1, 1], 1, [0; 4], 1, 1, Activation::Relu);
        let w2 = b.konst("w2", &[4, 8, 1, 1]);
        let project = b.conv("project", expand, w2, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let sum = b.one("sum", Op::Binary(BinaryOp::Add), &[project, stem]);
        let w3 = b.konst("w3", &[6, 4, 3, 3]);
        let down = b.conv("down", sum, w3, None, [3, 3], 2, [1; 4], 1, 1, Activation::Relu);
        let w4 = b.konst("w4", &[2, 6, 1, 1]);
        let head = b.conv("head", down, w4, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 8] }, &[head]);
        let (mut g, _) = b.finish(&[flat]);
        let p = from_range(-1.0, 1.0, 8, true);
        for v in [x, stem, expand, project, sum, down, head, flat] {
            g.values[v].quant = Some(Quant::Tensor(p));
        }
        assert_eq!(default_values(&g), vec![sum, down]);
        // Unannotated values are not chosen.
        g.values[down].quant = None;
        assert_eq!(default_values(&g), vec![sum]);

        assert_eq!(resolve(&g, &["project".into(), "sum.0".into(), "sum".into()], g.values.len()).unwrap(), vec![project, sum]);
        for (name, why) in [("nope", "no value or node"), ("w1", "constant"), ("x", "graph input")] {
            let e = resolve(&g, &[name.into()], g.values.len()).unwrap_err().to_string();
            assert!(e.contains(&format!("'{name}'")) && e.contains(why), "{e}");
        }
        assert!(resolve(&g, &["down".into()], down).unwrap_err().to_string().contains("does not compute it"));
    }
}
