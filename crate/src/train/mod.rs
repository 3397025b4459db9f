//! Quantization-aware training (QAT): reverse-mode autodiff over the IR, fake quantization
//! with learned step sizes, label-free distillation from the float model (optionally with
//! intermediate-feature matching, and cross-entropy to labels where the user has them), AdamW.
//!
//! ```text
//! Trainer::new(float graph, PTQ graph, config)   params from the PTQ annotation (qat.rs)
//!   .step(batch) x N     per frame: teacher forward (cached by frame), student forward on the
//!                        tape, distillation loss (loss.rs) [+ features (features.rs)]
//!                        [+ cross-entropy to a label], backward; then one AdamW update
//!   .best_graph()        an annotated graph (the invariants of `quant`), same value ids
//! ```
//!
//! - [`tape`]: the training forward and backward over one graph. The forward runs the FP32
//!   kernels and fake-quantizes every `Quant::Tensor` activation in float; given the
//!   simulation of its current parameters (`Tape::simulate`, which the trainer does after
//!   every step) it takes the quantized values from it instead, so they are the int8 engine's
//!   bit for bit. It keeps each value as its consumers saw it and, for quantized values, the
//!   value before rounding (what the straight-through estimator needs). The backward walks
//!   the nodes in reverse and asks each op for the gradients of the inputs that need one.
//! - [`ops`]: one file per family of ops, each op's backward next to its forward, each checked
//!   against central finite differences on odd shapes.
//! - [`fake_quant`]: the rounding of `QuantParams::quantize` (activations) and of the weight
//!   quantizer, with the straight-through estimator and the LSQ step-size gradient
//!   (Esser et al. 2020).
//! - [`loss`]: distillation from the float model's outputs: KL of softmax distributions for
//!   classifier scores, per-anchor Bernoulli KL for detector scores, normalised MSE otherwise;
//!   the cross-entropy to a label for classifiers.
//! - [`features`]: optional matching of intermediate values to the teacher's (normalised MSE
//!   at the narrowest cut point of each resolution by default).
//! - [`labels`]: class folders to output indices (by index, or by the names of a labels file).
//! - [`optim`]: AdamW with linear warm-up and cosine decay.
//! - [`qat`]: the [`Trainer`]: parameters, the step, the best weights so far,
//!   export to an annotated graph.
//! - `session_ext`: [`Session`](crate::session::Session) methods that make a trainer from the
//!   calibration and install its result as the QAT variant.
//!
//! Batches run one frame at a time through the fixed-shape graph, gradients summed: memory is
//! one frame's activations whatever the batch size.

pub mod fake_quant;
pub mod features;
pub mod labels;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod qat;
mod session_ext;
pub mod tape;

#[cfg(test)]
mod gradcheck;

pub use qat::{QatConfig, QatMode, StepPhases, StepStats, Trainer};
