//! FP32 compute kernels: the numeric core of the FP32 engine.
//!
//! Everything here works on plain slices with explicit shapes and strides and
//! depends on nothing else in the crate, so every kernel is testable on its
//! own. Each kernel has a portable scalar version and, on wasm32 with the
//! `simd128` target feature, a SIMD128 version chosen at compile time. Tests
//! compare both against a naive reference kept in each file's test module, on odd sizes;
//! they run natively (`cargo test`) and in Chromium (`wasm-pack test`).
//!
//! Naming follows XNNPACK: `f32_gemm_4x8` computes a 4-row by 8-column tile
//! of an f32 GEMM. Layouts are NCHW per image unless a name says otherwise.

pub mod activation;
pub mod elementwise;
pub mod gemm;
pub mod gemm_nt;
pub mod int8;
pub mod conv;
pub mod conv_mlas;
pub mod dwconv_grad;
pub mod pool;
pub mod resize;
pub mod softmax;
pub mod layout;

pub use activation::Activation;
