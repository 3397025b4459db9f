//! Quantization: parameters, calibration observers and the PTQ pipeline.
//!
//! - [`params`]: [`QuantParams`](params::QuantParams) (scale, zero point, bits, storage,
//!   symmetry of one tensor) built from a real range by
//!   [`from_range`](params::from_range), and symmetric weight quantization per output channel
//!   or per tensor ([`per_channel_weights`](params::per_channel_weights),
//!   [`quantize_weights`](params::quantize_weights)) with a max-abs or MSE-optimal range. The
//!   rounding is [`quantize_f32`](crate::kernels::int8::quantize_f32), the same function the
//!   int8 kernels are tested against, so what calibration measures is what the engine runs.
//! - [`observer`]: [`Observer`](observer::Observer) watches one activation, one frame at a
//!   time, in fixed memory (a 2048-bin histogram whose range grows by merging bins), and picks
//!   a clip range by a [`CalibrationMethod`](observer::CalibrationMethod): MinMax, moving
//!   average MinMax, Percentile, Entropy (TensorRT's KL search) or MSE.
//! - [`equalize`]: cross-layer equalization of consecutive convolutions (optional, before
//!   calibration).
//! - [`plan`]: which values of a graph are quantized and which follow another's parameters.
//! - [`ptq`]: calibration over frames and the annotated (quantized) graph it produces.
//! - [`metrics`]: fidelity between two variants of a model.
//! - [`sensitivity`]: which layers cost the outputs most when quantized (each kept in float
//!   alone), and the automatic keep-float choice built on it.
//!
//! # The annotation
//! A quantized model is an ordinary [`Graph`](crate::ir::Graph) whose values carry a
//! [`Quant`]. One annotated graph is what every consumer reads:
//! - the FP32 engine simulates it (fake-quantizes every `Quant::Tensor` activation it computes;
//!   constants already hold exactly representable data);
//! - the int8 engine runs it with integer kernels;
//! - QDQ export writes a QuantizeLinear/DequantizeLinear pair per `Quant::Tensor` activation
//!   and a DequantizeLinear per quantized constant; QDQ import produces it.
//!
//! Invariant: the data of a quantized constant is exactly `dequantize(q)` for its integers `q`,
//! so `q` is recovered by quantizing the data again (bit for bit), and the FP32 engine needs no
//! special case for weights. A bias of a quantized Conv/Gemm (input and weight quantized) is
//! int32 at scale `s_x · s_w[c]` and holds `s_x · s_w[c] · q` likewise, without annotation.


pub mod equalize;
pub mod metrics;
pub mod observer;
pub mod params;
pub mod plan;
pub mod ptq;
pub mod sensitivity;

use serde::{Deserialize, Serialize};

use params::{ChannelParams, QuantParams};

/// How one value of the graph is quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Quant {
    /// An activation, or a constant operand of an elementwise op, per tensor.
    Tensor(QuantParams),
    /// A weight: symmetric, per output channel along `axis` or per tensor.
    Weight(ChannelParams),
}

impl Quant {
    pub fn tensor(&self) -> Option<&QuantParams> {
        match self {
            Quant::Tensor(p) => Some(p),
            Quant::Weight(_) => None,
        }
    }
}
