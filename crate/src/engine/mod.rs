//! Executors of the IR. `fp32` is the float engine (and the reference every
//! quantized mode is measured against, and on an annotated graph its simulation); `int8` runs
//! an annotated graph with integer kernels.

pub mod fp32;
pub mod int8;
mod qplan;
mod sim;

pub use fp32::Fp32Engine;
pub use int8::Int8Engine;
