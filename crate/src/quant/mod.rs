//! Quantization: parameters, calibration observers and (next) the PTQ pipeline.
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
//!
//! Everything here is plain Rust with no dependency on the engine: it builds and tests natively
//! and on wasm32 alike.

pub mod observer;
pub mod params;
