//! The crate's one error type. Every failure a user can cause (a bad file, an
//! unsupported operator, a wrong shape) is an `Error` that names what is wrong,
//! never a panic: in wasm a panic would kill the instance and lose the user's work.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("the model is too large: {size} bytes (limit {limit} bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported operator{}: {}", if .0.len() > 1 { "s" } else { "" }, .0.join("; "))]
    Unsupported(Vec<String>),
    #[error("node '{node}' ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn node(node: &str, op: &str, msg: impl Into<String>) -> Error {
        Error::Node { node: node.to_string(), op: op.to_string(), msg: msg.into() }
    }
}
