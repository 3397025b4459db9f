//! Executors of the IR. `fp32` is the float engine (and the reference every
//! quantized mode is measured against).

pub mod fp32;

pub use fp32::Fp32Engine;
