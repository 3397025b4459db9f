//! Executors of the IR. `fp32` is the float engine (and the reference every
//! quantized mode is measured against, and on an annotated graph its simulation); `int8` runs
//! an annotated graph with integer kernels.

pub mod fp32;
pub mod int8;
mod ort_fusion;
mod qplan;
pub(crate) mod sim;

pub use fp32::Fp32Engine;
pub use int8::Int8Engine;

use crate::ir::{Graph, Node, Window2d};
use crate::kernels::conv::Conv2dShape;
use crate::kernels::pool::Pool2dShape;

/// The kernels' geometry of a Conv or ConvTranspose node (for the latter `in_*` is the small
/// input and `out_*` the large output, as the kernel expects): one builder for the FP32 plan,
/// the integer plan and the training ops.
pub(crate) fn conv_shape(g: &Graph, node: &Node, w: &Window2d, group: usize) -> Conv2dShape {
    let x = &g.values[node.inputs[0]].shape;
    let y = &g.values[node.outputs[0]].shape;
    Conv2dShape {
        in_c: x[1],
        in_h: x[2],
        in_w: x[3],
        out_c: y[1],
        out_h: y[2],
        out_w: y[3],
        kernel_h: w.kernel[0],
        kernel_w: w.kernel[1],
        stride_h: w.strides[0],
        stride_w: w.strides[1],
        dilation_h: w.dilations[0],
        dilation_w: w.dilations[1],
        pad_top: w.pads[0],
        pad_left: w.pads[1],
        group,
    }
}

/// The kernels' geometry of a 2-D pool from its input and output shapes (NCHW).
pub(crate) fn pool_shape(x: &[usize], y: &[usize], w: &Window2d) -> Pool2dShape {
    Pool2dShape {
        channels: x[0] * x[1],
        in_h: x[2],
        in_w: x[3],
        out_h: y[2],
        out_w: y[3],
        kernel_h: w.kernel[0],
        kernel_w: w.kernel[1],
        stride_h: w.strides[0],
        stride_w: w.strides[1],
        dilation_h: w.dilations[0],
        dilation_w: w.dilations[1],
        pad_top: w.pads[0],
        pad_left: w.pads[1],
        pad_bottom: w.pads[2],
        pad_right: w.pads[3],
    }
}
