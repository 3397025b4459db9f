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
//! output is quantized). [`SensitivityRun`] does it in steps of one run (or one quantization)
//! so that the page's worker can slice it and let a cancel through; [`sensitivity`] runs it
//! through. Tested in `crate/tests/ptq.rs` (the ranking finds a layer made to hurt) and below
//! (stepping equals the one-shot analysis).

use serde::Serialize;

use super::plan::{Role, ValuePlan};
use super::ptq::Calibrator;
use crate::engine::Fp32Engine;
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
    let mut run = SensitivityRun::new(cal, frames)?;
    let layers = run.layers();
    while !run.finished() {
        if let Some(i) = run.starting_layer() {
            if !progress(i, layers) {
                return Err(crate::Error::Invalid("sensitivity analysis cancelled".into()));
            }
        }
        run.step(cal, frames)?;
    }
    progress(layers, layers);
    run.result(cal)
}

/// The analysis as a sequence of small steps, each one simulated run on one frame or the
/// quantization of one graph, so that a caller that must stay responsive (the page's worker,
/// which lets a cancel through between slices) can do a few at a time. [`sensitivity`] runs it
/// to the end.
///
/// The work, in order: the FP32 reference outputs of every frame; the model as configured;
/// the inputs alone; then each candidate alone. Each quantized graph is one step to build
/// (quantize, pack) and one step per frame.
pub struct SensitivityRun {
    candidates: Vec<String>,
    frames: usize,
    references: Vec<Vec<Vec<f32>>>,
    /// 0: the references; 1: every candidate quantized; 2: the inputs alone; 3 + i: candidate i.
    stage: usize,
    /// The simulation of the stage's graph, once built.
    sim: Option<Fp32Engine>,
    /// The next frame of the stage.
    frame: usize,
    signal: Vec<f64>,
    noise: Vec<f64>,
    /// The noise-to-signal ratio of each finished stage from 1 on.
    ratios: Vec<f64>,
    done: usize,
}

impl SensitivityRun {
    /// Plans the analysis of `cal`'s candidates on `frames` (the same frames must be given to
    /// every [`step`](Self::step)).
    pub fn new(cal: &Calibrator, frames: &[Vec<Vec<f32>>]) -> Result<SensitivityRun> {
        if frames.is_empty() {
            return Err(crate::Error::Invalid("sensitivity analysis needs at least one frame".into()));
        }
        let (g, plan) = (cal.graph(), cal.plan());
        let candidates: Vec<String> = g
            .nodes
            .iter()
            .enumerate()
            .filter(|&(n, node)| plan.roles[n] == Role::Compute && node.outputs.iter().any(|&v| plan.values[v] == ValuePlan::Observed))
            .map(|(_, node)| node.name.clone())
            .collect();
        let outputs = g.outputs.len();
        Ok(SensitivityRun {
            candidates,
            frames: frames.len(),
            references: Vec::with_capacity(frames.len()),
            stage: 0,
            sim: None,
            frame: 0,
            signal: vec![0.0; outputs],
            noise: vec![0.0; outputs],
            ratios: Vec::new(),
            done: 0,
        })
    }

    /// The candidate layers (Compute nodes whose output is quantized), in graph order.
    pub fn candidates(&self) -> &[String] {
        &self.candidates
    }

    pub fn layers(&self) -> usize {
        self.candidates.len()
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Steps in all: the references, then a build and a run per frame for each graph.
    pub fn total(&self) -> usize {
        self.frames + (self.candidates.len() + 2) * (self.frames + 1)
    }

    pub fn done(&self) -> usize {
        self.done
    }

    /// Candidates measured so far.
    pub fn layers_done(&self) -> usize {
        self.stage.saturating_sub(3).min(self.candidates.len())
    }

    /// The candidate the next step works on, if the analysis is that far.
    pub fn current_layer(&self) -> Option<&str> {
        self.stage.checked_sub(3).and_then(|i| self.candidates.get(i)).map(String::as_str)
    }

    /// `Some(i)` when the next step starts on candidate `i`.
    fn starting_layer(&self) -> Option<usize> {
        (self.stage >= 3 && self.sim.is_none() && self.frame == 0).then(|| self.stage - 3).filter(|&i| i < self.candidates.len())
    }

    pub fn finished(&self) -> bool {
        self.stage >= 3 + self.candidates.len()
    }

    /// Does the next step (nothing once finished).
    pub fn step(&mut self, cal: &Calibrator, frames: &[Vec<Vec<f32>>]) -> Result<()> {
        if frames.len() != self.frames {
            return Err(crate::Error::Invalid(format!(
                "sensitivity analysis: it started on {} frames and is now given {}; start it again",
                self.frames,
                frames.len()
            )));
        }
        if self.finished() {
            return Ok(());
        }
        if self.stage == 0 {
            self.references.push(cal.engine().run(&inputs(&frames[self.frame]))?);
            self.frame += 1;
            if self.frame == self.frames {
                (self.stage, self.frame) = (1, 0);
            }
        } else if let Some(sim) = &self.sim {
            let reference = &self.references[self.frame];
            for (o, (a, b)) in reference.iter().zip(sim.run(&inputs(&frames[self.frame]))?).enumerate() {
                for (&x, &y) in a.iter().zip(&b) {
                    self.signal[o] += (x as f64) * (x as f64);
                    self.noise[o] += ((x - y) as f64).powi(2);
                }
            }
            self.frame += 1;
            if self.frame == self.frames {
                // Output noise over signal, averaged over the outputs.
                let outputs = self.signal.len();
                let ratio = self.signal.iter().zip(&self.noise).map(|(&s, &n)| n / s.max(f64::MIN_POSITIVE)).sum::<f64>() / outputs.max(1) as f64;
                self.ratios.push(ratio);
                self.signal.iter_mut().chain(self.noise.iter_mut()).for_each(|x| *x = 0.0);
                (self.sim, self.frame, self.stage) = (None, 0, self.stage + 1);
            }
        } else {
            let graph = match self.stage {
                1 => cal.quantize()?,
                2 => cal.quantize_keeping_float(&self.candidates)?,
                s => {
                    let name = &self.candidates[s - 3];
                    let others: Vec<String> = self.candidates.iter().filter(|c| *c != name).cloned().collect();
                    cal.quantize_keeping_float(&others)?
                }
            };
            self.sim = Some(Fp32Engine::new(graph));
        }
        self.done += 1;
        Ok(())
    }

    /// The ranking, once [`finished`](Self::finished).
    pub fn result(&self, cal: &Calibrator) -> Result<Sensitivity> {
        if !self.finished() {
            return Err(crate::Error::Invalid(format!("sensitivity analysis: {} of {} layers measured, not finished yet", self.layers_done(), self.layers())));
        }
        let db = |ratio: f64| -10.0 * ratio.max(1e-30).log10();
        let g = cal.graph();
        let (all, floor) = (self.ratios[0], self.ratios[1]);
        let added: Vec<f64> = self.ratios[2..].iter().map(|&alone| (alone - floor).max(0.0)).collect();
        let total: f64 = added.iter().sum();
        let mut layers: Vec<LayerSensitivity> = self
            .candidates
            .iter()
            .zip(&self.ratios[2..])
            .zip(&added)
            .map(|((name, &alone), &a)| LayerSensitivity {
                node: name.clone(),
                op: g.nodes.iter().find(|n| &n.name == name).map_or(String::new(), |n| n.op.name().to_string()),
                output_sqnr_db: db(alone),
                noise_share: if total > 0.0 { a / total } else { 0.0 },
            })
            .collect();
        layers.sort_by(|a, b| b.noise_share.total_cmp(&a.noise_share));
        Ok(Sensitivity { frames: self.frames, output_sqnr_db: db(all), inputs_only_sqnr_db: db(floor), layers })
    }
}

fn inputs(frame: &[Vec<f32>]) -> Vec<&[f32]> {
    frame.iter().map(|v| v.as_slice()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ir::{Activation, Conv, Graph, Node, Op, Value, Window2d};
    use crate::quant::ptq::QuantConfig;
    use crate::rng::Rng;

    /// x [1,3,8,8] → conv 3x3 (Relu) → depthwise 3x3 → 1x1 → y [1,2,8,8].
    fn chain(rng: &mut Rng) -> Graph {
        let mut g = Graph::default();
        let mut value = |g: &mut Graph, name: &str, shape: Vec<usize>, data: bool| {
            let len: usize = shape.iter().product();
            let data = data.then(|| Arc::new((0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>()));
            g.values.push(Value { name: name.into(), shape, data, quant: None });
            g.values.len() - 1
        };
        let x = value(&mut g, "x", vec![1, 3, 8, 8], false);
        let w1 = value(&mut g, "w1", vec![6, 3, 3, 3], true);
        let y1 = value(&mut g, "y1", vec![1, 6, 8, 8], false);
        let w2 = value(&mut g, "w2", vec![6, 1, 3, 3], true);
        let y2 = value(&mut g, "y2", vec![1, 6, 8, 8], false);
        let w3 = value(&mut g, "w3", vec![2, 6, 1, 1], true);
        let y3 = value(&mut g, "y", vec![1, 2, 8, 8], false);
        let window = |k: usize| Window2d { kernel: [k, k], strides: [1, 1], dilations: [1, 1], pads: [k / 2; 4] };
        let conv = |group, k, activation| Op::Conv(Conv { window: window(k), group, activation });
        g.nodes.push(Node { name: "c1".into(), op: conv(1, 3, Activation::Relu), inputs: vec![x, w1], outputs: vec![y1] });
        g.nodes.push(Node { name: "dw".into(), op: conv(6, 3, Activation::Identity), inputs: vec![y1, w2], outputs: vec![y2] });
        g.nodes.push(Node { name: "pw".into(), op: conv(1, 1, Activation::Identity), inputs: vec![y2, w3], outputs: vec![y3] });
        g.inputs = vec![x];
        g.outputs = vec![y3];
        g.validate().unwrap();
        g
    }

    #[test]
    fn stepping_gives_the_one_shot_analysis_and_checks_its_frames() {
        let mut rng = Rng::seeded(3);
        let g = chain(&mut rng);
        let frames: Vec<Vec<Vec<f32>>> = (0..3).map(|_| vec![(0..3 * 64).map(|_| rng.uniform(-2.0, 2.0) as f32).collect()]).collect();
        let config = QuantConfig { weight_bits: 4, ..QuantConfig::default() };
        let mut cal = Calibrator::new(&g, config).unwrap();
        for f in &frames {
            cal.observe(&[&f[0]]).unwrap();
        }
        let once = sensitivity(&cal, &frames, &mut |_, _| true).unwrap();
        assert_eq!(once.layers.len(), 3);
        assert!((once.layers.iter().map(|l| l.noise_share).sum::<f64>() - 1.0).abs() < 1e-9);

        let mut run = SensitivityRun::new(&cal, &frames).unwrap();
        assert_eq!(run.candidates(), ["c1", "dw", "pw"]);
        assert_eq!(run.total(), 3 + 5 * 4);
        assert!(run.result(&cal).unwrap_err().to_string().contains("0 of 3 layers measured"));
        let mut seen = Vec::new();
        while !run.finished() {
            if let Some(name) = run.current_layer() {
                if seen.last().map(String::as_str) != Some(name) {
                    seen.push(name.to_string());
                }
            }
            let before = run.done();
            run.step(&cal, &frames).unwrap();
            assert_eq!(run.done(), before + 1);
        }
        assert_eq!(seen, ["c1", "dw", "pw"]);
        assert_eq!((run.done(), run.layers_done()), (run.total(), 3));
        assert_eq!(run.result(&cal).unwrap(), once);

        // The frames must stay those it started with.
        let mut run = SensitivityRun::new(&cal, &frames).unwrap();
        run.step(&cal, &frames).unwrap();
        let err = run.step(&cal, &frames[..2]).unwrap_err().to_string();
        assert!(err.contains("started on 3 frames and is now given 2"), "{err}");
        assert!(SensitivityRun::new(&cal, &[]).is_err());
    }
}
