//! Op definitions: ONNX semantics with every attribute resolved to a static
//! value at import (auto_pad, shapes computed from constant inputs, axes made
//! non-negative), so executors never look at the ONNX file again.

use serde::{Deserialize, Serialize};

pub use crate::kernels::elementwise::{BinaryOp, UnaryOp};
pub use crate::kernels::layout::PadMode;
pub use crate::kernels::pool::ReduceOp;
pub use crate::kernels::resize::{CoordTransform, NearestMode, ResizeMode};
pub use crate::kernels::Activation;

/// A 2-D window: convolution or pooling geometry on NCHW tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window2d {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
}

impl Window2d {
    /// Output size along axis `a` (0 = height, 1 = width) for input size `n`.
    pub fn output_size(&self, a: usize, n: usize, ceil_mode: bool) -> Option<usize> {
        let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
        let padded = n + self.pads[a] + self.pads[a + 2];
        if padded < span || self.strides[a] == 0 {
            return None;
        }
        let steps = padded - span;
        let mut out = if ceil_mode { steps.div_ceil(self.strides[a]) } else { steps / self.strides[a] } + 1;
        // With ceil_mode the last window must start inside the input or the
        // begin padding (the rule of PyTorch and of ONNX since opset 19).
        if ceil_mode && (out - 1) * self.strides[a] >= n + self.pads[a] {
            out -= 1;
        }
        Some(out)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv {
    pub window: Window2d,
    pub group: usize,
    /// Fused activation applied to the output (Relu, Clip, HardSwish ...).
    pub activation: Activation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose {
    pub window: Window2d,
    pub output_padding: [usize; 2],
    pub group: usize,
    pub activation: Activation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// x [N,C,H,W], w [M,C/group,kh,kw], optional bias [M].
    Conv(Conv),
    /// x [N,C,H,W], w [C,M/group,kh,kw], optional bias [M].
    ConvTranspose(ConvTranspose),
    /// `act(alpha * op(A) op(B) + beta * C)` on 2-D A and B; C broadcasts.
    Gemm { trans_a: bool, trans_b: bool, alpha: f32, beta: f32, activation: Activation },
    /// numpy matmul with batch broadcasting.
    MatMul,
    Binary(BinaryOp),
    Unary(UnaryOp),
    Activation(Activation),
    /// x, slope (broadcast to x).
    PRelu,
    Softmax { axis: usize, log: bool },
    MaxPool { window: Window2d, ceil_mode: bool },
    AveragePool { window: Window2d, ceil_mode: bool, count_include_pad: bool },
    GlobalAveragePool,
    GlobalMaxPool,
    Reduce { op: ReduceOp, axes: Vec<usize>, keep_dims: bool },
    /// Reshape, Flatten, Squeeze, Unsqueeze: the data does not move.
    Reshape { shape: Vec<usize> },
    Transpose { perm: Vec<usize> },
    Concat { axis: usize },
    Split { axis: usize, sizes: Vec<usize> },
    /// Per axis: first index, step (may be negative) and element count.
    Slice { starts: Vec<usize>, steps: Vec<isize>, sizes: Vec<usize> },
    Pad { begin: Vec<usize>, end: Vec<usize>, mode: PadMode },
    /// `scales` as the model gave them (None when it gave sizes): ONNX maps
    /// coordinates with them, not with out / in.
    Resize { mode: ResizeMode, coord: CoordTransform, nearest: NearestMode, shape: Vec<usize>, scales: Option<Vec<f32>> },
    /// Gather with constant indices.
    Gather { axis: usize, indices: Vec<i64>, indices_shape: Vec<usize> },
}

impl Op {
    /// The op's name as users know it (ONNX op type where there is one).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(c) if c.group > 1 => "Conv (grouped)",
            Op::Conv(_) => "Conv",
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Binary(op) => match op {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Max => "Max",
                BinaryOp::Min => "Min",
                BinaryOp::Pow => "Pow",
            },
            Op::Unary(op) => match op {
                UnaryOp::Neg => "Neg",
                UnaryOp::Abs => "Abs",
                UnaryOp::Exp => "Exp",
                UnaryOp::Log => "Log",
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Reciprocal => "Reciprocal",
                UnaryOp::Floor => "Floor",
                UnaryOp::Ceil => "Ceil",
                UnaryOp::Erf => "Erf",
            },
            Op::Activation(act) => activation_name(*act),
            Op::PRelu => "PRelu",
            Op::Softmax { log: false, .. } => "Softmax",
            Op::Softmax { log: true, .. } => "LogSoftmax",
            Op::MaxPool { .. } => "MaxPool",
            Op::AveragePool { .. } => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "ReduceSum",
                ReduceOp::Mean => "ReduceMean",
                ReduceOp::Max => "ReduceMax",
                ReduceOp::Min => "ReduceMin",
                ReduceOp::Prod => "ReduceProd",
                ReduceOp::SumSquare => "ReduceSumSquare",
                ReduceOp::L2 => "ReduceL2",
            },
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Slice { .. } => "Slice",
            Op::Pad { .. } => "Pad",
            Op::Resize { .. } => "Resize",
            Op::Gather { .. } => "Gather",
        }
    }

    /// The fused activation of ops that carry one.
    pub fn fused_activation(&self) -> Option<Activation> {
        match self {
            Op::Conv(c) => Some(c.activation),
            Op::ConvTranspose(c) => Some(c.activation),
            Op::Gemm { activation, .. } => Some(*activation),
            _ => None,
        }
    }

    /// Ops with weights that PTQ quantizes (the rest follow their inputs'
    /// quantization or run in float).
    pub fn has_weights(&self) -> bool {
        matches!(self, Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. } | Op::MatMul)
    }
}

pub fn activation_name(act: Activation) -> &'static str {
    match act {
        Activation::Identity => "Identity",
        Activation::Relu => "Relu",
        Activation::Clip { .. } => "Clip",
        Activation::LeakyRelu { .. } => "LeakyRelu",
        Activation::Sigmoid => "Sigmoid",
        Activation::HardSigmoid { .. } => "HardSigmoid",
        Activation::HardSwish => "HardSwish",
        Activation::Silu => "SiLU",
        Activation::Tanh => "Tanh",
    }
}
