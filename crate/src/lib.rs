//! quant-playground: quantization of neural networks (calibration, PTQ, QAT,
//! int8 execution, ONNX QDQ export), in the browser through wasm and natively
//! through the `quant-playground` command-line tool.
//!
//! See ARCHITECTURE.md for the module map and the data flow.

pub mod engine;
pub mod error;
pub mod ir;
pub mod kernels;
pub mod model;
pub mod npy;
pub mod onnx;
pub mod augment;
pub mod preprocess;
pub mod quant;
pub mod rng;
pub mod session;
pub mod train;
/// The tests' name for [`rng`].
#[cfg(test)]
mod test_rng {
    pub use crate::rng::Rng;
}

#[cfg(target_arch = "wasm32")]
pub mod api;
#[cfg(target_arch = "wasm32")]
pub mod bench_api;

pub use error::{Error, Result};
pub use model::Model;

#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
