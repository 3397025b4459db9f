//! Layer sensitivity: which quantized layers cost the model's outputs most.
//!
//! Per-tensor SQNR ([`super::metrics::LayerSqnr`]) says where the error *is*; it does not say
//! where it *matters*: a noisy tensor deep in a branch that the outputs barely depend on costs
//! less than a quiet one right before a sensitive output head. So each candidate layer is
//! quantized *alone* (every other candidate kept in float, the graph inputs quantized as
//! calibrated) and the model's outputs are compared with FP32 on the same frames: the output
//! noise a layer adds on its own is its sensitivity, and the layers that add most are the ones
//! to keep in float. (Keeping one layer in float at a time, the other classic, says little
//! when the error is spread over many layers: on BlazeFace no single layer buys back even
//! 0.5 dB.) The runs use the fake-quantized simulation, which equals the int8 engine (see
//! `crate::engine`).
//!
//! Cost: one quantization and `frames` simulated runs per candidate (a Compute node whose
//! output is quantized), so it is for the CLI and small frame sets.

use serde::Serialize;

use super::plan::{Role, ValuePlan};
use super::ptq::Calibrator;
use crate::engine::Fp32Engine;
use crate::ir::Graph;
use crate::Result;

/// One candidate layer quantized alone.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSensitivity {
    pub node: String,
    pub op: String,
    /// The outputs' SQNR against FP32 (dB; from the noise-to-signal ratio averaged over the
    /// outputs) with only this layer (and the inputs) quantized.
    pub output_sqnr_db: f64,
    /// The output noise this layer adds, as a fraction of what all layers add one by one:
    /// the ranking key.
    pub noise_share: f64,
}

/// The analysis, most sensitive layer first.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sensitivity {
    pub frames: usize,
    /// Output SQNR of the model as configured (every candidate quantized).
    pub output_sqnr_db: f64,
    /// Output SQNR with only the inputs quantized: the floor every layer adds to.
    pub inputs_only_sqnr_db: f64,
    pub layers: Vec<LayerSensitivity>,
}

impl Sensitivity {
    /// The (at most) `n` most sensitive layers that add at least `min_share` of the noise.
    pub fn most_sensitive(&self, n: usize, min_share: f64) -> Vec<String> {
        self.layers.iter().filter(|l| l.noise_share >= min_share).take(n).map(|l| l.node.clone()).collect()
    }
}

/// Ranks the Compute layers of `cal`'s plan by sensitivity on `frames` (one tensor per model
/// input each). `progress(done, total)` before each candidate; returning false cancels (an
/// error).
pub fn sensitivity(cal: &Calibrator, frames: &[Vec<Vec<f32>>], progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Sensitivity> {
    if frames.is_empty() {
        return Err(crate::Error::Invalid("sensitivity analysis needs at least one frame".into()));
    }
    let g = cal.graph();
    let plan = cal.plan();
    let references: Vec<Vec<Vec<f32>>> = frames.iter().map(|f| cal.engine().run(&inputs(f))).collect::<Result<_>>()?;
    // Output noise over signal, averaged over the outputs.
    let noise = |graph: Graph| -> Result<f64> {
        let sim = Fp32Engine::new(graph);
        let outputs = g.outputs.len();
        let (mut signal, mut noise) = (vec![0f64; outputs], vec![0f64; outputs]);
        for (f, reference) in frames.iter().zip(&references) {
            for (o, (a, b)) in reference.iter().zip(sim.run(&inputs(f))?).enumerate() {
                for (&x, &y) in a.iter().zip(&b) {
                    signal[o] += (x as f64) * (x as f64);
                    noise[o] += ((x - y) as f64).powi(2);
                }
            }
        }
        Ok(signal.iter().zip(&noise).map(|(&s, &n)| n / s.max(f64::MIN_POSITIVE)).sum::<f64>() / outputs.max(1) as f64)
    };
    let db = |ratio: f64| -10.0 * ratio.max(1e-30).log10();
    let candidates: Vec<String> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|&(n, node)| plan.roles[n] == Role::Compute && node.outputs.iter().any(|&v| plan.values[v] == ValuePlan::Observed))
        .map(|(_, node)| node.name.clone())
        .collect();
    let all = noise(cal.quantize()?)?;
    let floor = noise(cal.quantize_keeping_float(&candidates)?)?;
    let mut layers = Vec::with_capacity(candidates.len());
    let mut added = Vec::with_capacity(candidates.len());
    for (done, name) in candidates.iter().enumerate() {
        if !progress(done, candidates.len()) {
            return Err(crate::Error::Invalid("sensitivity analysis cancelled".into()));
        }
        let others: Vec<String> = candidates.iter().filter(|c| *c != name).cloned().collect();
        let alone = noise(cal.quantize_keeping_float(&others)?)?;
        let op = g.nodes.iter().find(|n| &n.name == name).map_or(String::new(), |n| n.op.name().to_string());
        layers.push(LayerSensitivity { node: name.clone(), op, output_sqnr_db: db(alone), noise_share: 0.0 });
        added.push((alone - floor).max(0.0));
    }
    progress(candidates.len(), candidates.len());
    let total: f64 = added.iter().sum();
    for (l, a) in layers.iter_mut().zip(&added) {
        l.noise_share = if total > 0.0 { a / total } else { 0.0 };
    }
    layers.sort_by(|a, b| b.noise_share.total_cmp(&a.noise_share));
    Ok(Sensitivity { frames: frames.len(), output_sqnr_db: db(all), inputs_only_sqnr_db: db(floor), layers })
}

fn inputs(frame: &[Vec<f32>]) -> Vec<&[f32]> {
    frame.iter().map(|v| v.as_slice()).collect()
}
