//! Fidelity between two variants of a model (FP32 and PTQ, PTQ and QAT, ...) over frames.
//!
//! - Per output: mean cosine similarity, SQNR (`10 log10(Σ ref² / Σ (ref - x)²)` over all
//!   frames) and the largest absolute difference.
//! - For classifier outputs (one batch row of at least 2 scores): top-1 and top-5 agreement,
//!   mean `KL(ref ‖ x)` of the softmax distributions (outputs that already are probabilities
//!   are used as they are), and top-1 agreement on the frames where the reference is confident
//!   (top-1 probability >= [`CONFIDENT`]): the three figures the fidelity targets use.
//! - [`LayerSqnr`]: the SQNR of every quantized tensor against its float counterpart, which
//!   ranks layers by the error they carry (a value with a ReLU folded into its range against
//!   the ReLU of its counterpart).

use serde::Serialize;

use super::plan::folding_clamp;
use crate::ir::{Graph, ValueId};
use crate::kernels::Activation;

/// A reference top-1 probability at least this high makes a frame "confident".
pub const CONFIDENT: f32 = 0.5;

/// `10 log10(signal / noise)`, +inf for no noise (serialized as a large finite number).
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise <= 0.0 {
        return 300.0;
    }
    if signal <= 0.0 {
        return -300.0;
    }
    (10.0 * (signal / noise).log10()).clamp(-300.0, 300.0)
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassifierAgreement {
    pub top1: f64,
    pub top5: f64,
    pub mean_kl: f64,
    /// Frames where the reference's top-1 probability is at least [`CONFIDENT`].
    pub confident_frames: u64,
    /// Top-1 agreement on those frames (1 when there are none).
    pub confident_top1: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputFidelity {
    pub name: String,
    pub cosine: f64,
    pub sqnr_db: f64,
    pub max_abs_diff: f64,
    pub classifier: Option<ClassifierAgreement>,
}

/// For detectors with anchor scores: does the candidate find an object (some anchor's sigmoid
/// score >= [`DETECTION_THRESHOLD`]) exactly when the reference does?
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceAgreement {
    pub threshold: f32,
    /// Frames where the reference detects something.
    pub reference_present: u64,
    /// Frames where both decide the same (present or absent), as a fraction of all frames.
    pub agreement: f64,
    /// Frames where the reference detects something and the candidate too, as a fraction of those.
    pub recall: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fidelity {
    pub frames: u64,
    pub outputs: Vec<OutputFidelity>,
    pub presence: Option<PresenceAgreement>,
}

#[derive(Clone, Debug, Default)]
struct OutputAcc {
    cosine_sum: f64,
    signal: f64,
    noise: f64,
    max_abs: f64,
    top1: u64,
    top5: u64,
    kl_sum: f64,
    confident: u64,
    confident_top1: u64,
}

/// Accumulates [`Fidelity`] frame by frame (fixed memory).
#[derive(Clone, Debug)]
pub struct FidelityAcc {
    names: Vec<String>,
    /// Per output: the number of classes when it looks like a classifier's scores.
    classes: Vec<Option<usize>>,
    acc: Vec<OutputAcc>,
    /// Outputs holding anchor scores.
    anchor_scores: Vec<usize>,
    /// Frames where the reference / both detect, and where both agree.
    presence: (u64, u64, u64),
    frames: u64,
}

/// The number of classes of an output of `shape` that holds one row of class scores: `[C]`,
/// `[1, C]` or `[1, C, 1, 1]` with `C >= 2`. (`[1, N, 1]` is not one: that is a detector's
/// per-anchor score, see [`is_anchor_scores`].)
pub fn classifier_classes(shape: &[usize]) -> Option<usize> {
    let c = match shape {
        [c] | [1, c] | [1, c, 1, 1] => *c,
        _ => return None,
    };
    (c >= 2).then_some(c)
}

/// An SSD-style detector's per-anchor score logits: `[1, N, 1]` (BlazeFace, many MediaPipe and
/// TF object-detection exports).
pub fn is_anchor_scores(shape: &[usize]) -> bool {
    matches!(shape, [1, n, 1] if *n >= 2)
}

/// The score threshold of a detection (MediaPipe's for BlazeFace: sigmoid 0.75).
pub const DETECTION_THRESHOLD: f32 = 0.75;

/// Scores as probabilities: themselves when they already are (non-negative, summing to 1),
/// else their softmax.
pub fn probabilities(scores: &[f32]) -> Vec<f64> {
    let sum: f64 = scores.iter().map(|&v| v as f64).sum();
    if scores.iter().all(|&v| v >= 0.0) && (sum - 1.0).abs() < 1e-3 {
        return scores.iter().map(|&v| v as f64 / sum).collect();
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let exp: Vec<f64> = scores.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `KL(p ‖ q)` with `q` floored at 1e-12 (a quantized model may give a class exactly 0).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).filter(|(&a, _)| a > 0.0).map(|(&a, &b)| a * (a / b.max(1e-12)).ln()).sum::<f64>().max(0.0)
}

impl FidelityAcc {
    /// For outputs named `names` with shapes `shapes`.
    pub fn new(names: Vec<String>, shapes: &[Vec<usize>]) -> FidelityAcc {
        let classes = shapes.iter().map(|s| classifier_classes(s)).collect();
        let anchor_scores = (0..shapes.len()).filter(|&i| is_anchor_scores(&shapes[i])).collect();
        FidelityAcc { acc: vec![OutputAcc::default(); names.len()], names, classes, anchor_scores, presence: (0, 0, 0), frames: 0 }
    }

    pub fn for_graph(g: &Graph) -> FidelityAcc {
        let names = g.outputs.iter().map(|&o| g.values[o].name.clone()).collect();
        let shapes: Vec<Vec<usize>> = g.outputs.iter().map(|&o| g.values[o].shape.clone()).collect();
        FidelityAcc::new(names, &shapes)
    }

    /// Adds one frame: the reference's outputs and the candidate's.
    pub fn add(&mut self, reference: &[Vec<f32>], candidate: &[Vec<f32>]) {
        for (i, acc) in self.acc.iter_mut().enumerate() {
            let (r, x) = (&reference[i], &candidate[i]);
            let (mut dot, mut rr, mut xx, mut noise) = (0f64, 0f64, 0f64, 0f64);
            for (&a, &b) in r.iter().zip(x.iter()) {
                let (a, b) = (a as f64, b as f64);
                dot += a * b;
                rr += a * a;
                xx += b * b;
                noise += (a - b) * (a - b);
                acc.max_abs = acc.max_abs.max((a - b).abs());
            }
            acc.cosine_sum += if rr == 0.0 && xx == 0.0 { 1.0 } else { dot / (rr.sqrt() * xx.sqrt()).max(1e-30) };
            acc.signal += rr;
            acc.noise += noise;
            if self.classes[i].is_some() {
                let (p, q) = (probabilities(r), probabilities(x));
                let top_p = top_k(&p, 5);
                let top1_q = top_k(&q, 1)[0];
                acc.top1 += (top_p[0] == top1_q) as u64;
                acc.top5 += top_p.contains(&top1_q) as u64;
                acc.kl_sum += kl_divergence(&p, &q);
                if p[top_p[0]] >= CONFIDENT as f64 {
                    acc.confident += 1;
                    acc.confident_top1 += (top_p[0] == top1_q) as u64;
                }
            }
        }
        if !self.anchor_scores.is_empty() {
            // sigmoid(x) >= t  <=>  x >= logit(t)
            let t = DETECTION_THRESHOLD as f64;
            let logit = (t / (1.0 - t)).ln() as f32;
            let detects = |outs: &[Vec<f32>]| self.anchor_scores.iter().any(|&i| outs[i].iter().any(|&x| x >= logit));
            let (r, c) = (detects(reference), detects(candidate));
            self.presence.0 += r as u64;
            self.presence.1 += (r && c) as u64;
            self.presence.2 += (r == c) as u64;
        }
        self.frames += 1;
    }

    pub fn finish(&self) -> Fidelity {
        let f = self.frames.max(1) as f64;
        let outputs = self
            .acc
            .iter()
            .zip(&self.names)
            .zip(&self.classes)
            .map(|((a, name), classes)| OutputFidelity {
                name: name.clone(),
                cosine: a.cosine_sum / f,
                sqnr_db: sqnr_db(a.signal, a.noise),
                max_abs_diff: a.max_abs,
                classifier: classes.map(|_| ClassifierAgreement {
                    top1: a.top1 as f64 / f,
                    top5: a.top5 as f64 / f,
                    mean_kl: a.kl_sum / f,
                    confident_frames: a.confident,
                    confident_top1: if a.confident == 0 { 1.0 } else { a.confident_top1 as f64 / a.confident as f64 },
                }),
            })
            .collect();
        let (present, both, agree) = self.presence;
        let presence = (!self.anchor_scores.is_empty()).then(|| PresenceAgreement {
            threshold: DETECTION_THRESHOLD,
            reference_present: present,
            agreement: agree as f64 / f,
            recall: if present == 0 { 1.0 } else { both as f64 / present as f64 },
        });
        Fidelity { frames: self.frames, outputs, presence }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerError {
    /// The quantized tensor.
    pub value: String,
    /// The node computing it and its op (empty for a graph input).
    pub node: String,
    pub op: String,
    pub sqnr_db: f64,
}

/// Per-tensor SQNR between a float run and a quantized run of graphs with the same value ids
/// (the calibrator's prepared graph and its quantized version).
pub struct LayerSqnr {
    values: Vec<ValueId>,
    /// Per value id: index into `values`.
    slot: Vec<Option<usize>>,
    /// Per tracked value: the ReLU/Clip folded into its range
    /// (`plan::fold_clamps_into_producers`), which its float reference gets too: the quantized
    /// value already is the activation's output, and its error is the one of that rounding.
    folded: Vec<Option<Activation>>,
    signal: Vec<f64>,
    noise: Vec<f64>,
}

impl LayerSqnr {
    /// Tracks every activation of `quantized` annotated as a tensor.
    pub fn new(quantized: &Graph) -> LayerSqnr {
        let values: Vec<ValueId> = (0..quantized.values.len())
            .filter(|&v| !quantized.values[v].is_const() && quantized.values[v].quant.as_ref().and_then(|q| q.tensor()).is_some())
            .collect();
        let mut slot = vec![None; quantized.values.len()];
        for (i, &v) in values.iter().enumerate() {
            slot[v] = Some(i);
        }
        let consumers = quantized.consumers();
        let folded = values
            .iter()
            .map(|&v| match consumers[v].as_slice() {
                &[n] => folding_clamp(&quantized.nodes[n].op).filter(|_| quantized.values[quantized.nodes[n].outputs[0]].quant == quantized.values[v].quant),
                _ => None,
            })
            .collect();
        LayerSqnr { signal: vec![0.0; values.len()], noise: vec![0.0; values.len()], values, slot, folded }
    }

    /// The values tracked, whose reference data `add` expects (others may be omitted).
    pub fn tracks(&self, v: ValueId) -> bool {
        self.slot.get(v).copied().flatten().is_some()
    }

    /// Adds the error of one value on one frame.
    pub fn add(&mut self, v: ValueId, reference: &[f32], quantized: &[f32]) {
        let Some(i) = self.slot.get(v).copied().flatten() else { return };
        let act = self.folded[i].unwrap_or(Activation::Identity);
        for (&a, &b) in reference.iter().zip(quantized) {
            let a = act.apply_scalar(a);
            self.signal[i] += (a as f64) * (a as f64);
            self.noise[i] += ((a - b) as f64).powi(2);
        }
    }

    /// Results in graph order.
    pub fn finish(&self, g: &Graph) -> Vec<LayerError> {
        let producers = g.producers();
        self.values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (node, op) = producers[v].map_or((String::new(), "Input".to_string()), |n| (g.nodes[n].name.clone(), g.nodes[n].op.name().to_string()));
                LayerError { value: g.values[v].name.clone(), node, op, sqnr_db: sqnr_db(self.signal[i], self.noise[i]) }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_agreement_counts_decisions_at_the_threshold() {
        let mut acc = FidelityAcc::new(vec!["scores".into(), "boxes".into()], &[vec![1, 3, 1], vec![1, 3, 4]]);
        let boxes = vec![0.0; 12];
        let logit = |p: f32| (p / (1.0 - p)).ln();
        // present / present, present / absent, absent / absent, absent / present
        for (r, c) in [(0.9, 0.8), (0.9, 0.7), (0.1, 0.2), (0.5, 0.76)] {
            acc.add(&[vec![logit(r), -5.0, -5.0], boxes.clone()], &[vec![-5.0, logit(c), -5.0], boxes.clone()]);
        }
        let p = acc.finish().presence.unwrap();
        assert_eq!(p.reference_present, 2);
        assert_eq!((p.agreement, p.recall), (0.5, 0.5));
    }

    #[test]
    fn identical_outputs_agree_fully() {
        let mut acc = FidelityAcc::new(vec!["y".into()], &[vec![1, 4]]);
        let y = vec![vec![0.1f32, 0.7, 0.1, 0.1]];
        acc.add(&y, &y);
        let f = acc.finish();
        let c = f.outputs[0].classifier.as_ref().unwrap();
        assert_eq!((c.top1, c.top5, c.confident_frames, c.confident_top1), (1.0, 1.0, 1, 1.0));
        assert!(c.mean_kl.abs() < 1e-12);
        assert!((f.outputs[0].cosine - 1.0).abs() < 1e-12);
        assert_eq!(f.outputs[0].sqnr_db, 300.0);
    }

    #[test]
    fn disagreement_is_counted_and_logits_go_through_softmax() {
        let mut acc = FidelityAcc::new(vec!["y".into()], &[vec![1, 3, 1, 1]]);
        assert!(acc.finish().presence.is_none());
        // Logits: reference prefers class 0 strongly, candidate prefers class 1.
        acc.add(&[vec![5.0, 1.0, 0.0]], &[vec![1.0, 5.0, 0.0]]);
        acc.add(&[vec![0.0, 0.2, 0.1]], &[vec![0.0, 0.2, 0.1]]);
        let f = acc.finish();
        let c = f.outputs[0].classifier.as_ref().unwrap();
        assert_eq!(c.top1, 0.5);
        assert_eq!((c.confident_frames, c.confident_top1), (1, 0.0));
        let p = probabilities(&[5.0, 1.0, 0.0]);
        let q = probabilities(&[1.0, 5.0, 0.0]);
        assert!((c.mean_kl - kl_divergence(&p, &q) / 2.0).abs() < 1e-12);
        assert!(c.mean_kl > 1.0);
    }

    #[test]
    fn a_value_with_a_folded_relu_is_compared_with_the_relu_of_its_reference() {
        use crate::ir::{BinaryOp, Node, Op};
        use crate::quant::{params::from_range, Quant};
        let mut g = Graph::default();
        let (x, z, a, y) = (g.add_value("x", vec![4]), g.add_value("z", vec![4]), g.add_value("a", vec![4]), g.add_value("y", vec![4]));
        g.nodes.push(Node { name: "add".into(), op: Op::Binary(BinaryOp::Add), inputs: vec![x, z], outputs: vec![a] });
        g.nodes.push(Node { name: "relu".into(), op: Op::Activation(Activation::Relu), inputs: vec![a], outputs: vec![y] });
        let p = Quant::Tensor(from_range(0.0, 2.0, 8, false));
        for v in [x, z, a, y] {
            g.values[v].quant = Some(p.clone());
        }
        let (reference, quantized) = ([-1.0f32, 0.5, 1.0, -0.25], [0.0f32, 0.5, 1.0, 0.0]);
        let mut folded = LayerSqnr::new(&g);
        folded.add(a, &reference, &quantized);
        folded.add(y, &quantized, &quantized);
        assert!(folded.finish(&g).iter().all(|l| l.sqnr_db == 300.0));
        // With its own grid, the Add's error is its own.
        g.values[a].quant = Some(Quant::Tensor(from_range(-1.0, 2.0, 8, false)));
        let mut own = LayerSqnr::new(&g);
        own.add(a, &reference, &quantized);
        assert!(own.finish(&g)[2].sqnr_db < 10.0);
    }

    #[test]
    fn sqnr_of_known_noise() {
        assert!((sqnr_db(100.0, 1.0) - 20.0).abs() < 1e-12);
        assert!(classifier_classes(&[1, 896, 16]).is_none());
        assert!(classifier_classes(&[1, 896, 1]).is_none() && is_anchor_scores(&[1, 896, 1]));
        assert_eq!(classifier_classes(&[1, 1000]), Some(1000));
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), vec![1, 2, 3]);
    }
}
