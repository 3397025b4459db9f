//! Training losses. Label-free distillation: the float model's outputs are the targets.
//!
//! Per graph output, chosen from its shape as the fidelity metrics choose (`quant::metrics`):
//! - classifier scores (`classifier_classes`): `KL(p ‖ q)` with `p` the teacher's
//!   probabilities (`metrics::probabilities`: its softmax, or the scores themselves when they
//!   already are probabilities) and `q = softmax(student logits)`; `∂/∂logits = q - p`. When
//!   the output is a Softmax/LogSoftmax node over the classes (possibly reshaped), the
//!   student's logits are that node's input, so the gradient does not pass through a saturated
//!   softmax.
//! - detector anchor scores (`is_anchor_scores`, logits `[1, N, 1]`): the Bernoulli KL of the
//!   sigmoids summed over anchors, `∂/∂x = σ(x) - σ(t)`: the few anchors near a detection
//!   dominate, as they dominate the face-present decision.
//! - anything else: MSE normalised by the teacher's mean square (a running mean over the
//!   frames seen), so outputs in pixels and outputs in logits weigh alike:
//!   `Σ (x - t)² / (n · E[t²])` ([`normalised_mse`], also the feature-matching loss of
//!   `train::features`).
//!
//! With labels (a classifier only, [`classifier`]): [`LabelLoss`], the cross-entropy of the
//! label under the student's softmax, `-ln q_y`, `∂/∂logits = q - onehot(y)`, on the same
//! logits as the KL.
//!
//! Sums are in f64. Tests: each gradient against central differences of its loss.

use crate::ir::{Graph, Op, ValueId};
use crate::quant::metrics::{classifier_classes, is_anchor_scores, probabilities};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// KL of softmax distributions; the student value is the logits.
    Classifier,
    AnchorScores,
    /// Normalised MSE with the running mean of `t²` (sum, frames).
    Mse { sum: f64, frames: u64 },
}

#[derive(Clone, Debug)]
struct Term {
    /// The graph output the target is.
    output: usize,
    /// The student value the loss reads and seeds (the output, or a softmax's input).
    value: ValueId,
    kind: Kind,
    grad: Vec<f32>,
}

/// The distillation loss of a graph.
#[derive(Clone, Debug)]
pub struct Distillation {
    terms: Vec<Term>,
}

/// `ln Σ e^x` in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// The value holding a classifier output's logits: the input of the Softmax/LogSoftmax over
/// the classes that makes the output, looking through Reshapes after it (which keep the
/// element order, so the gradient seeds it element for element); else the output itself.
fn classifier_logits(g: &Graph, producers: &[Option<usize>], output: ValueId, classes: usize) -> ValueId {
    let mut v = output;
    while let Some(node) = producers[v].map(|n| &g.nodes[n]) {
        match node.op {
            Op::Reshape { .. } if !g.values[node.inputs[0]].is_const() => v = node.inputs[0],
            Op::Softmax { axis, .. } if g.values[node.inputs[0]].shape.get(axis) == Some(&classes) => return node.inputs[0],
            _ => break,
        }
    }
    output
}

/// `Σ (x - t)² / (n · E[t²])` with `E[t²]` the running mean square of the targets (`sum` over
/// `frames`; updated when `learn_norms`, or on the first frame); writes `weight · ∂/∂x` into
/// `grad`. The running normalisation makes the loss scale-free, so terms on tensors of any
/// range can be added.
pub(super) fn normalised_mse(x: &[f32], t: &[f32], sum: &mut f64, frames: &mut u64, learn_norms: bool, weight: f32, grad: &mut [f32]) -> f64 {
    if learn_norms || *frames == 0 {
        *sum += t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / t.len().max(1) as f64;
        *frames += 1;
    }
    let norm = (*sum / *frames as f64).max(1e-12) * t.len().max(1) as f64;
    let mut se = 0f64;
    for ((g, &xi), &ti) in grad.iter_mut().zip(x).zip(t) {
        let d = xi as f64 - ti as f64;
        se += d * d;
        *g = (2.0 * d / norm * weight as f64) as f32;
    }
    se / norm
}

/// Cross-entropy of class `label` under `softmax(logits)`: `-ln q_y = lse(x) - x_y`. Writes
/// `weight · ∂/∂x = weight · (q - onehot(y))` into `grad`.
pub fn cross_entropy(logits: &[f32], label: usize, weight: f32, grad: &mut [f32]) -> f64 {
    let lse = log_sum_exp(logits);
    for (i, (g, &x)) in grad.iter_mut().zip(logits).enumerate() {
        let q = (x as f64 - lse).exp();
        let y = if i == label { 1.0 } else { 0.0 };
        *g = ((q - y) * weight as f64) as f32;
    }
    lse - logits[label] as f64
}

/// A classifier's output: a model with a single output of class scores (logits or
/// probabilities, shape `[1, C]`, `[C]` or `[1, C, 1, 1]`, as `classifier_classes` reads it).
/// Returns (the output, the number of classes, the value holding the logits); otherwise an
/// error listing the outputs.
pub fn classifier(g: &Graph) -> Result<(ValueId, usize, ValueId)> {
    if let [o] = g.outputs[..] {
        if let Some(classes) = classifier_classes(&g.values[o].shape) {
            return Ok((o, classes, classifier_logits(g, &g.producers(), o, classes)));
        }
    }
    let outputs: Vec<String> = g.outputs.iter().map(|&o| format!("'{}' {:?}", g.values[o].name, g.values[o].shape)).collect();
    Err(Error::Invalid(format!(
        "labels need a classifier output (a single output of class scores, shape [1, C]); the model's outputs are {}",
        outputs.join(", ")
    )))
}

/// Cross-entropy to labels on a classifier's logits (see [`classifier`]).
#[derive(Clone, Debug)]
pub struct LabelLoss {
    output: ValueId,
    classes: usize,
    value: ValueId,
    grad: Vec<f32>,
}

impl LabelLoss {
    pub fn new(g: &Graph) -> Result<LabelLoss> {
        let (output, classes, value) = classifier(g)?;
        Ok(LabelLoss { output, classes, value, grad: vec![0.0; g.values[value].len()] })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The graph output the labels are classes of.
    pub fn output(&self) -> ValueId {
        self.output
    }

    /// The cross-entropy of one frame's `label` (checked against the number of classes); the
    /// gradient, scaled by `weight`, is then [`seed`](Self::seed).
    pub fn frame<'a>(&mut self, student: impl Fn(ValueId) -> &'a [f32], label: usize, weight: f32) -> Result<f64> {
        if label >= self.classes {
            return Err(Error::Invalid(format!("label {label} is not a class: the classifier has {} (0..{})", self.classes, self.classes - 1)));
        }
        Ok(cross_entropy(student(self.value), label, weight, &mut self.grad))
    }

    /// The gradient of the last frame, as a seed of the tape.
    pub fn seed(&self) -> (ValueId, &[f32]) {
        (self.value, &self.grad)
    }
}

impl Distillation {
    pub fn new(g: &Graph) -> Distillation {
        let producers = g.producers();
        let terms = g
            .outputs
            .iter()
            .enumerate()
            .map(|(k, &o)| {
                let shape = &g.values[o].shape;
                let (value, kind) = if let Some(classes) = classifier_classes(shape) {
                    (classifier_logits(g, &producers, o, classes), Kind::Classifier)
                } else if is_anchor_scores(shape) {
                    (o, Kind::AnchorScores)
                } else {
                    (o, Kind::Mse { sum: 0.0, frames: 0 })
                };
                Term { output: k, value, kind, grad: vec![0.0; g.values[value].len()] }
            })
            .collect();
        Distillation { terms }
    }

    /// What each output is distilled with, for reports.
    pub fn describe(&self) -> Vec<&'static str> {
        self.terms
            .iter()
            .map(|t| match t.kind {
                Kind::Classifier => "kl",
                Kind::AnchorScores => "anchor-kl",
                Kind::Mse { .. } => "mse",
            })
            .collect()
    }

    /// The student values the loss reads, in order.
    pub fn values(&self) -> Vec<ValueId> {
        self.terms.iter().map(|t| t.value).collect()
    }

    /// The loss of one frame: `student(v)` gives a student value, `teacher` the float model's
    /// outputs. The gradients (scaled by `weight`) are then in [`seeds`](Self::seeds).
    /// `learn_norms`: frames that update the running MSE normalisation (training frames, not
    /// held-out ones).
    pub fn frame<'a>(&mut self, student: impl Fn(ValueId) -> &'a [f32], teacher: &[Vec<f32>], weight: f32, learn_norms: bool) -> f64 {
        let mut total = 0f64;
        for term in &mut self.terms {
            let x = student(term.value);
            let t = &teacher[term.output];
            let grad = &mut term.grad;
            total += match &mut term.kind {
                Kind::Classifier => {
                    let p = probabilities(t);
                    let lse = log_sum_exp(x);
                    let mut kl = 0f64;
                    for ((g, &xi), &pi) in grad.iter_mut().zip(x).zip(&p) {
                        let log_q = xi as f64 - lse;
                        if pi > 0.0 {
                            kl += pi * (pi.ln() - log_q);
                        }
                        *g = ((log_q.exp() - pi) * weight as f64) as f32;
                    }
                    kl.max(0.0)
                }
                Kind::AnchorScores => {
                    let mut kl = 0f64;
                    for ((g, &xi), &ti) in grad.iter_mut().zip(x).zip(t) {
                        let (xi, ti) = (xi as f64, ti as f64);
                        let p = 1.0 / (1.0 + (-ti).exp());
                        // ln q = -softplus(-x), ln(1 - q) = -softplus(x); likewise for p.
                        let (lp, lnp) = (-softplus(-ti), -softplus(ti));
                        let (lq, lnq) = (-softplus(-xi), -softplus(xi));
                        kl += p * (lp - lq) + (1.0 - p) * (lnp - lnq);
                        *g = ((1.0 / (1.0 + (-xi).exp()) - p) * weight as f64) as f32;
                    }
                    kl.max(0.0)
                }
                Kind::Mse { sum, frames } => normalised_mse(x, t, sum, frames, learn_norms, weight, grad),
            };
        }
        total
    }

    /// The gradients of the last frame, as the tape's seeds.
    pub fn seeds(&self) -> Vec<(ValueId, &[f32])> {
        self.terms.iter().map(|t| (t.value, t.grad.as_slice())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    fn check(g: &Graph, student: &[f32], teacher: &[Vec<f32>]) {
        let mut d = Distillation::new(g);
        let v = d.values()[0];
        fn loss(x: &[f32], d: &mut Distillation, teacher: &[Vec<f32>]) -> f64 {
            d.frame(|_| x, teacher, 1.0, false)
        }
        // Warm the running normalisation once, so every evaluation below uses the same one.
        loss(student, &mut d, teacher);
        let grad = d.seeds()[0].1.to_vec();
        assert_eq!(d.seeds()[0].0, v);
        let h = 1e-3f32;
        for i in 0..student.len() {
            let mut x = student.to_vec();
            x[i] += h;
            let up = loss(&x, &mut d, teacher);
            x[i] -= 2.0 * h;
            let down = loss(&x, &mut d, teacher);
            let numeric = (up - down) / (2.0 * h as f64);
            assert!((grad[i] as f64 - numeric).abs() < 1e-3 * numeric.abs().max(1.0), "{i}: {} vs {numeric}", grad[i]);
        }
    }

    fn graph(shape: &[usize], softmax: bool) -> Graph {
        let mut g = Graph::default();
        let x = g.add_value("x", shape.to_vec());
        g.inputs = vec![x];
        if softmax {
            let y = g.add_value("y", shape.to_vec());
            g.nodes.push(Node { name: "sm".into(), op: Op::Softmax { axis: 1, log: false }, inputs: vec![x], outputs: vec![y] });
            g.outputs = vec![y];
        } else {
            g.outputs = vec![x];
        }
        g
    }

    #[test]
    fn each_loss_against_finite_differences() {
        let x = vec![0.3f32, -1.2, 2.0, 0.1, -0.4];
        let t = vec![vec![1.0f32, -0.5, 2.5, 0.0, -2.0]];
        check(&graph(&[1, 5], false), &x, &t);
        check(&graph(&[1, 5, 1], false), &x, &t);
        let x2: Vec<f32> = x.iter().chain(&x).map(|v| v * 1.5).collect();
        check(&graph(&[2, 5, 1], false), &x2, &[t[0].iter().chain(&t[0]).copied().collect()]);
        // A softmax output: the loss reads its input.
        let g = graph(&[1, 5], true);
        assert_eq!(Distillation::new(&g).values(), vec![0]);
        let p = probabilities(&t[0]);
        check(&g, &x, &[p.iter().map(|&v| v as f32).collect()]);
        assert_eq!(Distillation::new(&graph(&[1, 5, 1], false)).describe(), vec!["anchor-kl"]);
    }

    #[test]
    fn identical_outputs_cost_nothing() {
        let t = vec![vec![1.0f32, -0.5, 2.5]];
        for shape in [&[1usize, 3][..], &[1, 3, 1], &[3, 1, 1]] {
            let mut d = Distillation::new(&graph(shape, false));
            let l = d.frame(|_| &t[0][..], &t, 1.0, true);
            assert!(l.abs() < 1e-12, "{shape:?}: {l}");
            assert!(d.seeds()[0].1.iter().all(|g| g.abs() < 1e-7));
        }
    }

    /// Cross-entropy: `∂(-ln q_y)/∂x_i = q_i - [i = y]`, against central differences, for
    /// every class as the label, on logits far apart (a confident, wrong student included).
    #[test]
    fn cross_entropy_against_finite_differences() {
        let x = vec![0.3f32, -1.2, 6.0, 0.1, -0.4];
        let mut grad = vec![0.0; 5];
        let mut scratch = vec![0.0; 5];
        for label in 0..5 {
            let l = cross_entropy(&x, label, 0.5, &mut grad);
            // -ln q_y directly, in f64.
            let q: Vec<f64> = probabilities(&x);
            assert!((l + q[label].ln()).abs() < 1e-9, "{label}: {l}");
            let h = 1e-3f32;
            for i in 0..5 {
                let mut xp = x.clone();
                xp[i] += h;
                let up = cross_entropy(&xp, label, 1.0, &mut scratch);
                xp[i] -= 2.0 * h;
                let down = cross_entropy(&xp, label, 1.0, &mut scratch);
                let numeric = 0.5 * (up - down) / (2.0 * h as f64);
                assert!((grad[i] as f64 - numeric).abs() < 1e-3 * numeric.abs().max(1.0), "label {label}, {i}: {} vs {numeric}", grad[i]);
            }
        }
    }

    /// The label loss reads the logits behind a softmax (through a Reshape too), refuses
    /// labels out of range, and refuses models whose outputs are not one classifier, naming them.
    #[test]
    fn label_loss_reads_the_logits_and_names_what_it_refuses() {
        let g = graph(&[1, 5], true);
        let mut l = LabelLoss::new(&g).unwrap();
        assert_eq!((l.classes(), l.output(), l.seed().0), (5, 1, 0));
        let x = [0.3f32, -1.2, 2.0, 0.1, -0.4];
        let loss = l.frame(|v| if v == 0 { &x[..] } else { panic!("read {v}") }, 2, 1.0).unwrap();
        assert!(loss > 0.0 && loss < 1.0, "{loss}");
        let e = l.frame(|_| &x[..], 5, 1.0).unwrap_err().to_string();
        assert!(e.contains("label 5") && e.contains("0..4"), "{e}");

        // Softmax over [1, 5, 1, 1], then a Reshape to [1, 5].
        let mut g = Graph::default();
        let x4 = g.add_value("x", vec![1, 5, 1, 1]);
        let s4 = g.add_value("s", vec![1, 5, 1, 1]);
        let y = g.add_value("y", vec![1, 5]);
        g.inputs = vec![x4];
        g.nodes.push(Node { name: "sm".into(), op: Op::Softmax { axis: 1, log: false }, inputs: vec![x4], outputs: vec![s4] });
        g.nodes.push(Node { name: "flat".into(), op: Op::Reshape { shape: vec![1, 5] }, inputs: vec![s4], outputs: vec![y] });
        g.outputs = vec![y];
        assert_eq!(classifier(&g).unwrap(), (y, 5, x4));
        assert_eq!(Distillation::new(&g).values(), vec![x4]);

        let e = LabelLoss::new(&graph(&[1, 5, 1], false)).unwrap_err().to_string();
        assert!(e.contains("labels need a classifier output") && e.contains("'x' [1, 5, 1]"), "{e}");
        let mut two = graph(&[1, 5], false);
        two.outputs.push(two.outputs[0]);
        assert!(LabelLoss::new(&two).is_err(), "two outputs are not one classifier");
    }
}
