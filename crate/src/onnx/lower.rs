//! Lowering of ONNX nodes into the IR, one node at a time in file order,
//! folding what is constant (see `fold`) and resolving every attribute that
//! depends on shapes, which are all static once the inputs are fixed.

use std::collections::HashMap;

use tract_onnx::pb::NodeProto;

use super::attrs::{normalize_axis, Attrs};
use super::fold::{as_sizes, fold, reshape_target, slice_params, squeeze_shape};
use super::qdq::QdqImport;
use super::tensor::ConstTensor;
use crate::ir::*;
use crate::{Error, Result};

/// What an ONNX value name stands for during lowering.
#[derive(Clone)]
pub enum Lowered {
    Const(ConstTensor),
    Value(ValueId),
}

pub struct Lowering {
    pub graph: Graph,
    pub env: HashMap<String, Lowered>,
    pub opset: i64,
    /// QuantizeLinear/DequantizeLinear bookkeeping (see `qdq`).
    pub qdq: QdqImport,
}

/// The ONNX ops this importer lowers (besides those folded when constant).
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "DequantizeLinear", "Div", "Dropout", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "MatMul", "Max", "MaxPool", "Min", "Mod", "Mul", "Neg", "Not", "Pad", "Pow", "PRelu", "QuantizeLinear", "Range", "Reciprocal",
    "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
    "Round", "Shape", "Sigmoid", "Size", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose",
    "Unsqueeze", "Upsample", "Where",
];

/// Ops we can only evaluate when their inputs are constant (shape arithmetic).
const CONST_ONLY_OPS: &[&str] =
    &["ConstantOfShape", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Mod", "Not", "Range", "Round", "Size", "Where", "Expand"];

/// A short name for a node in messages: its name, or its first output.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output.first().map(|o| format!("<{o}>")).unwrap_or_else(|| "<unnamed>".into())
    }
}

fn window(attrs: &Attrs, x: &[usize], kernel: [usize; 2], transposed: bool) -> Result<Window2d> {
    let two = |key: &str, default: usize| -> Result<[usize; 2]> {
        match attrs.sizes(key)? {
            None => Ok([default; 2]),
            Some(v) if v.len() == 2 => Ok([v[0], v[1]]),
            Some(v) => Err(attrs.error(format!("attribute '{key}' {v:?}: only 2-D windows are supported"))),
        }
    };
    let strides = two("strides", 1)?;
    let dilations = two("dilations", 1)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(attrs.error("strides and dilations must be positive"));
    }
    let mut pads = [0usize; 4];
    match attrs.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => {
            if let Some(p) = attrs.sizes("pads")? {
                if p.len() != 4 {
                    return Err(attrs.error(format!("pads {p:?}: only 2-D windows are supported")));
                }
                pads.copy_from_slice(&p);
            }
        }
        "VALID" => {}
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            if transposed {
                return Err(attrs.error("auto_pad SAME_* on ConvTranspose is not supported; give explicit pads"));
            }
            for a in 0..2 {
                let n = x[2 + a];
                let out = n.div_ceil(strides[a]);
                let span = dilations[a] * (kernel[a] - 1) + 1;
                let total = ((out - 1) * strides[a] + span).saturating_sub(n);
                let small = total / 2;
                let (begin, end) = if mode == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                pads[a] = begin;
                pads[a + 2] = end;
            }
        }
        other => return Err(attrs.error(format!("unknown auto_pad '{other}'"))),
    }
    Ok(Window2d { kernel, strides, dilations, pads })
}

impl Lowering {
    pub fn new(opset: i64) -> Lowering {
        Lowering { graph: Graph::default(), env: HashMap::new(), opset, qdq: QdqImport::default() }
    }

    fn shape_of(&self, l: &Lowered) -> Vec<usize> {
        match l {
            Lowered::Const(t) => t.shape.clone(),
            Lowered::Value(v) => self.graph.values[*v].shape.clone(),
        }
    }

    /// The graph value for an input, materialising constants as f32 weights.
    fn value_of(&mut self, name: &str, l: &Lowered) -> ValueId {
        match l {
            Lowered::Value(v) => *v,
            Lowered::Const(t) => {
                let id = self.graph.add_const(name, t.shape.clone(), t.to_f32());
                self.env.insert(name.to_string(), Lowered::Value(id));
                self.qdq.materialized(name, id);
                id
            }
        }
    }

    fn emit(&mut self, node: &NodeProto, label: &str, op: Op, inputs: Vec<ValueId>, outputs: &[String]) -> Result<Vec<ValueId>> {
        let in_shapes: Vec<&[usize]> = inputs.iter().map(|&i| self.graph.values[i].shape.as_slice()).collect();
        let out_shapes = infer_shapes(&op, &in_shapes).map_err(|msg| Error::node(label, &node.op_type, msg))?;
        let ids: Vec<ValueId> = outputs.iter().zip(out_shapes).map(|(name, shape)| self.graph.add_value(name.clone(), shape)).collect();
        self.graph.nodes.push(Node { name: label.to_string(), op, inputs, outputs: ids.clone() });
        for (name, &id) in outputs.iter().zip(&ids) {
            self.env.insert(name.clone(), Lowered::Value(id));
        }
        Ok(ids)
    }

    /// Lowers one node: folds it when all inputs are constant, else emits IR.
    pub fn lower(&mut self, node: &NodeProto) -> Result<()> {
        let label = node_label(node);
        let attrs = Attrs::new(node, &label);
        let op = node.op_type.as_str();
        let inputs: Vec<Option<Lowered>> = node
            .input
            .iter()
            .map(|name| {
                if name.is_empty() {
                    Ok(None)
                } else {
                    self.env
                        .get(name)
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| attrs.error(format!("input '{name}' is not produced by any earlier node (nodes out of order?)")))
                }
            })
            .collect::<Result<_>>()?;

        // Integer tensors do not flow through the IR: a QuantizeLinear output is read by its
        // DequantizeLinear only.
        if op != "DequantizeLinear" {
            if let Some(name) = node.input.iter().find(|n| self.qdq.is_pending(n)) {
                return Err(attrs.error(format!("reads '{name}', the integer output of a QuantizeLinear; only DequantizeLinear can")));
            }
        }
        if op == "QuantizeLinear" || op == "DequantizeLinear" {
            return self.lower_qdq(node, &label, &attrs, inputs);
        }

        // Shape is constant once input shapes are fixed.
        if op == "Shape" {
            let shape = self.shape_of(inputs[0].as_ref().ok_or_else(|| attrs.error("missing input"))?);
            let rank = shape.len() as i64;
            let clampi = |v: i64| if v < 0 { (v + rank).max(0) } else { v.min(rank) } as usize;
            let start = clampi(attrs.int("start", 0));
            let end = clampi(attrs.int("end", rank)).max(start);
            let dims: Vec<i64> = shape[start..end].iter().map(|&d| d as i64).collect();
            self.env.insert(node.output[0].clone(), Lowered::Const(ConstTensor::i64(vec![dims.len()], dims)));
            return Ok(());
        }
        if inputs.iter().all(|i| matches!(i, None | Some(Lowered::Const(_)))) {
            let consts: Vec<Option<&ConstTensor>> =
                inputs.iter().map(|i| i.as_ref().map(|l| if let Lowered::Const(t) = l { t } else { unreachable!() })).collect();
            let folded = if op == "Dropout" || (op == "Split" && consts.first().is_some()) {
                None
            } else {
                fold(op, &attrs, &consts, self.opset)?
            };
            if let Some(outputs) = folded {
                if op == "Identity" {
                    self.qdq.alias(&node.input[0], &node.output[0]);
                }
                for (name, t) in node.output.iter().zip(outputs) {
                    self.env.insert(name.clone(), Lowered::Const(t));
                }
                return Ok(());
            }
        }
        if CONST_ONLY_OPS.contains(&op) {
            return Err(attrs.error("is only supported on constant inputs (shape arithmetic); here it computes on the input image"));
        }
        self.lower_compute(node, &label, &attrs, inputs)
    }

    fn const_input<'a>(&self, attrs: &Attrs, inputs: &'a [Option<Lowered>], i: usize, what: &str) -> Result<Option<&'a ConstTensor>> {
        match inputs.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(Lowered::Const(t))) => Ok(Some(t)),
            Some(Some(Lowered::Value(_))) => Err(attrs.error(format!("{what} (input {i}) must be a constant once input shapes are fixed"))),
        }
    }

    fn const_ints(&self, attrs: &Attrs, inputs: &[Option<Lowered>], i: usize, what: &str) -> Result<Option<Vec<i64>>> {
        self.const_input(attrs, inputs, i, what)?
            .map(|t| t.to_i64().ok_or_else(|| attrs.error(format!("{what} must be integers"))))
            .transpose()
    }

    fn lower_compute(&mut self, node: &NodeProto, label: &str, attrs: &Attrs, inputs: Vec<Option<Lowered>>) -> Result<()> {
        let op_type = node.op_type.as_str();
        let out = &node.output;
        let first = inputs.first().cloned().flatten().ok_or_else(|| attrs.error("input 0 is missing"))?;
        let x_shape = self.shape_of(&first);
        let rank = x_shape.len();
        let axis_attr = |key: &str, default: i64, rank: usize| -> Result<usize> {
            let a = attrs.int(key, default);
            normalize_axis(a, rank).ok_or_else(|| attrs.error(format!("{key} {a} out of range for shape {x_shape:?}")))
        };
        // All non-missing inputs as graph values.
        let values = |this: &mut Lowering, upto: usize| -> Vec<ValueId> {
            node.input
                .iter()
                .zip(&inputs)
                .take(upto)
                .filter_map(|(name, l)| l.as_ref().map(|l| this.value_of(name, l)))
                .collect()
        };
        let unary = |this: &mut Lowering, op: Op| -> Result<()> {
            let x = this.value_of(&node.input[0], &first);
            this.emit(node, label, op, vec![x], &out[..1]).map(|_| ())
        };
        match op_type {
            "Identity" | "Dropout" => {
                if op_type == "Dropout" && out.len() > 1 && !out[1].is_empty() {
                    return Err(attrs.error("the Dropout mask output is not supported"));
                }
                self.env.insert(out[0].clone(), first.clone());
            }
            "Cast" => {
                let to = attrs.int("to", 1);
                if !matches!(to, 1 | 10 | 11 | 16) {
                    return Err(attrs.error(format!(
                        "casts the image data to {}: only float data flows through the network",
                        super::tensor::elem_type_name(to as i32)
                    )));
                }
                self.env.insert(out[0].clone(), first.clone());
            }
            "Conv" | "ConvTranspose" => {
                let w_shape = self.shape_of(inputs.get(1).cloned().flatten().as_ref().ok_or_else(|| attrs.error("weight is missing"))?);
                if rank != 4 || w_shape.len() != 4 {
                    return Err(attrs.error(format!("only 2-D convolutions on 4-D [N,C,H,W] tensors are supported; input {x_shape:?}, weight {w_shape:?}")));
                }
                if !matches!(inputs[1], Some(Lowered::Const(_))) {
                    return Err(attrs.error("the weight must be a constant"));
                }
                let kernel = match attrs.sizes("kernel_shape")? {
                    Some(k) if k.len() == 2 => [k[0], k[1]],
                    Some(k) => return Err(attrs.error(format!("kernel_shape {k:?}: only 2-D kernels are supported"))),
                    None => [w_shape[2], w_shape[3]],
                };
                let group = attrs.int("group", 1).max(1) as usize;
                let ids = values(self, 3);
                if op_type == "Conv" {
                    let window = window(attrs, &x_shape, kernel, false)?;
                    self.emit(node, label, Op::Conv(Conv { window, group, activation: Activation::Identity }), ids, &out[..1])?;
                } else {
                    let mut window = window(attrs, &x_shape, kernel, true)?;
                    let mut output_padding = match attrs.sizes("output_padding")? {
                        Some(p) if p.len() == 2 => [p[0], p[1]],
                        Some(p) => return Err(attrs.error(format!("output_padding {p:?}: only 2-D is supported"))),
                        None => [0, 0],
                    };
                    if let Some(os) = attrs.sizes("output_shape")? {
                        // Explicit output shape: derive the pads from it, an odd total
                        // padding going to the end as onnxruntime does for auto_pad NOTSET
                        // (ComputeTransposePadAndOutputShape); the spec text puts it at the
                        // begin, but onnxruntime is what users cross-check against.
                        let os = &os[os.len().saturating_sub(2)..];
                        for a in 0..2 {
                            let full = window.strides[a] * (x_shape[2 + a] - 1) + window.dilations[a] * (kernel[a] - 1) + 1;
                            if os[a] > full {
                                output_padding[a] = os[a] - full;
                                window.pads[a] = 0;
                                window.pads[a + 2] = 0;
                            } else {
                                let total = full - os[a];
                                window.pads[a] = total / 2;
                                window.pads[a + 2] = total - total / 2;
                            }
                        }
                    }
                    let op = Op::ConvTranspose(ConvTranspose { window, output_padding, group, activation: Activation::Identity });
                    self.emit(node, label, op, ids, &out[..1])?;
                }
            }
            "Gemm" => {
                let op = Op::Gemm {
                    trans_a: attrs.int("transA", 0) != 0,
                    trans_b: attrs.int("transB", 0) != 0,
                    alpha: attrs.float("alpha", 1.0),
                    beta: attrs.float("beta", 1.0),
                    activation: Activation::Identity,
                };
                let ids = values(self, 3);
                self.emit(node, label, op, ids, &out[..1])?;
            }
            "MatMul" => {
                let ids = values(self, 2);
                self.emit(node, label, Op::MatMul, ids, &out[..1])?;
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" => {
                let bop = match op_type {
                    "Add" | "Sum" => BinaryOp::Add,
                    "Sub" => BinaryOp::Sub,
                    "Mul" => BinaryOp::Mul,
                    "Div" => BinaryOp::Div,
                    "Pow" => BinaryOp::Pow,
                    "Max" => BinaryOp::Max,
                    _ => BinaryOp::Min,
                };
                let ids = values(self, usize::MAX);
                match ids.len() {
                    0 => return Err(attrs.error("has no inputs")),
                    1 => {
                        self.env.insert(out[0].clone(), Lowered::Value(ids[0]));
                    }
                    n => {
                        // Variadic Sum/Max/Min: a chain of binary nodes.
                        let mut acc = ids[0];
                        for (k, &b) in ids.iter().enumerate().skip(1) {
                            let name = if k == n - 1 { out[0].clone() } else { format!("{}/{k}", out[0]) };
                            acc = self.emit(node, label, Op::Binary(bop), vec![acc, b], &[name])?[0];
                        }
                    }
                }
            }
            "Neg" | "Abs" | "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Floor" | "Ceil" | "Erf" => {
                let uop = match op_type {
                    "Neg" => UnaryOp::Neg,
                    "Abs" => UnaryOp::Abs,
                    "Exp" => UnaryOp::Exp,
                    "Log" => UnaryOp::Log,
                    "Sqrt" => UnaryOp::Sqrt,
                    "Reciprocal" => UnaryOp::Reciprocal,
                    "Floor" => UnaryOp::Floor,
                    "Ceil" => UnaryOp::Ceil,
                    _ => UnaryOp::Erf,
                };
                unary(self, Op::Unary(uop))?;
            }
            "Relu" => unary(self, Op::Activation(Activation::Relu))?,
            "Sigmoid" => unary(self, Op::Activation(Activation::Sigmoid))?,
            "Tanh" => unary(self, Op::Activation(Activation::Tanh))?,
            "HardSwish" => unary(self, Op::Activation(Activation::HardSwish))?,
            "LeakyRelu" => unary(self, Op::Activation(Activation::LeakyRelu { alpha: attrs.float("alpha", 0.01) }))?,
            "HardSigmoid" => unary(
                self,
                Op::Activation(Activation::HardSigmoid { alpha: attrs.float("alpha", 0.2), beta: attrs.float("beta", 0.5) }),
            )?,
            "Clip" => {
                let (min, max) = if self.opset < 11 {
                    (attrs.float("min", f32::NEG_INFINITY), attrs.float("max", f32::INFINITY))
                } else {
                    let bound = |this: &Lowering, i: usize, what: &str, default: f32| -> Result<f32> {
                        Ok(this.const_input(attrs, &inputs, i, what)?.map_or(default, |t| t.to_f32()[0]))
                    };
                    (bound(self, 1, "min", f32::NEG_INFINITY)?, bound(self, 2, "max", f32::INFINITY)?)
                };
                let act = if min == 0.0 && max == f32::INFINITY { Activation::Relu } else { Activation::Clip { min, max } };
                unary(self, Op::Activation(act))?;
            }
            "PRelu" => {
                let ids = values(self, 2);
                self.emit(node, label, Op::PRelu, ids, &out[..1])?;
            }
            "Softmax" | "LogSoftmax" => {
                let log = op_type == "LogSoftmax";
                let default_axis = if self.opset < 13 { 1 } else { -1 };
                let axis = axis_attr("axis", default_axis, rank)?;
                let x = self.value_of(&node.input[0], &first);
                if self.opset < 13 && axis != rank - 1 {
                    // Before opset 13 the input is coerced to 2-D at `axis`.
                    let flat = vec![x_shape[..axis].iter().product(), x_shape[axis..].iter().product()];
                    let a = self.emit(node, label, Op::Reshape { shape: flat }, vec![x], &[format!("{}/2d", out[0])])?[0];
                    let s = self.emit(node, label, Op::Softmax { axis: 1, log }, vec![a], &[format!("{}/softmax", out[0])])?[0];
                    self.emit(node, label, Op::Reshape { shape: x_shape.clone() }, vec![s], &out[..1])?;
                } else {
                    self.emit(node, label, Op::Softmax { axis, log }, vec![x], &out[..1])?;
                }
            }
            "MaxPool" | "AveragePool" => {
                if rank != 4 {
                    return Err(attrs.error(format!("only 2-D pooling on 4-D [N,C,H,W] tensors is supported; input {x_shape:?}")));
                }
                if out.len() > 1 && !out[1].is_empty() {
                    return Err(attrs.error("the Indices output of MaxPool is not supported"));
                }
                let kernel = match attrs.sizes("kernel_shape")? {
                    Some(k) if k.len() == 2 => [k[0], k[1]],
                    k => return Err(attrs.error(format!("kernel_shape {k:?}: a 2-D kernel is required"))),
                };
                let window = window(attrs, &x_shape, kernel, false)?;
                let ceil_mode = attrs.int("ceil_mode", 0) != 0;
                let op = if op_type == "MaxPool" {
                    Op::MaxPool { window, ceil_mode }
                } else {
                    Op::AveragePool { window, ceil_mode, count_include_pad: attrs.int("count_include_pad", 0) != 0 }
                };
                unary(self, op)?;
            }
            "GlobalAveragePool" => unary(self, Op::GlobalAveragePool)?,
            "GlobalMaxPool" => unary(self, Op::GlobalMaxPool)?,
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare" | "ReduceL2" => {
                let rop = match op_type {
                    "ReduceMean" => ReduceOp::Mean,
                    "ReduceSum" => ReduceOp::Sum,
                    "ReduceMax" => ReduceOp::Max,
                    "ReduceMin" => ReduceOp::Min,
                    "ReduceProd" => ReduceOp::Prod,
                    "ReduceSumSquare" => ReduceOp::SumSquare,
                    _ => ReduceOp::L2,
                };
                let axes_from_input = op_type == "ReduceSum" && self.opset >= 13 || self.opset >= 18;
                let axes = if axes_from_input { self.const_ints(attrs, &inputs, 1, "axes")? } else { attrs.ints("axes") };
                let axes: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a
                        .iter()
                        .map(|&a| normalize_axis(a, rank).ok_or_else(|| attrs.error(format!("axis {a} out of range for {x_shape:?}"))))
                        .collect::<Result<_>>()?,
                    _ if attrs.int("noop_with_empty_axes", 0) != 0 => {
                        self.env.insert(out[0].clone(), first.clone());
                        return Ok(());
                    }
                    _ => (0..rank).collect(),
                };
                unary(self, Op::Reduce { op: rop, axes, keep_dims: attrs.int("keepdims", 1) != 0 })?;
            }
            "BatchNormalization" => {
                // y = (x - mean) / sqrt(var + eps) * scale + bias, as a
                // per-channel Mul and Add; `passes::fold_affine_into_conv`
                // then merges them into the producing Conv or Gemm.
                let eps = attrs.float("epsilon", 1e-5);
                let mut params = Vec::new();
                for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "var")] {
                    params.push(self.const_input(attrs, &inputs, i, what)?.ok_or_else(|| attrs.error(format!("{what} is missing")))?.to_f32());
                }
                let c = x_shape.get(1).copied().unwrap_or(0);
                if params.iter().any(|p| p.len() != c) {
                    return Err(attrs.error(format!("parameters do not match {c} channels of {x_shape:?}")));
                }
                let scale: Vec<f32> = (0..c).map(|k| params[0][k] / (params[3][k] + eps).sqrt()).collect();
                let shift: Vec<f32> = (0..c).map(|k| params[1][k] - params[2][k] * scale[k]).collect();
                let mut pshape = vec![1; rank];
                pshape[1] = c;
                let x = self.value_of(&node.input[0], &first);
                let s = self.graph.add_const(format!("{label}.scale"), pshape.clone(), scale);
                let b = self.graph.add_const(format!("{label}.shift"), pshape, shift);
                let m = self.emit(node, label, Op::Binary(BinaryOp::Mul), vec![x, s], &[format!("{}/scaled", out[0])])?[0];
                self.emit(node, label, Op::Binary(BinaryOp::Add), vec![m, b], &out[..1])?;
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                let shape = match op_type {
                    "Reshape" => {
                        let target = self.const_ints(attrs, &inputs, 1, "shape")?.ok_or_else(|| attrs.error("shape is missing"))?;
                        reshape_target(&x_shape, &target, attrs.int("allowzero", 0) != 0).map_err(|m| attrs.error(m))?
                    }
                    "Flatten" => {
                        let axis = normalize_axis(attrs.int("axis", 1), rank + 1).ok_or_else(|| attrs.error("axis out of range"))?;
                        vec![x_shape[..axis].iter().product(), x_shape[axis..].iter().product()]
                    }
                    _ => {
                        let axes = if self.opset >= 13 { self.const_ints(attrs, &inputs, 1, "axes")? } else { attrs.ints("axes") };
                        squeeze_shape(op_type, &x_shape, axes.as_deref()).map_err(|m| attrs.error(m))?
                    }
                };
                unary(self, Op::Reshape { shape })?;
            }
            "Transpose" => {
                let perm: Vec<usize> = match attrs.ints("perm") {
                    Some(p) => p.iter().map(|&a| normalize_axis(a, rank).ok_or_else(|| attrs.error(format!("perm {p:?} out of range")))).collect::<Result<_>>()?,
                    None => (0..rank).rev().collect(),
                };
                unary(self, Op::Transpose { perm })?;
            }
            "Concat" => {
                let axis = axis_attr("axis", 0, rank)?;
                let ids = values(self, usize::MAX);
                self.emit(node, label, Op::Concat { axis }, ids, &out[..1])?;
            }
            "Split" => {
                let axis = axis_attr("axis", 0, rank)?;
                let n = x_shape[axis];
                let sizes = if self.opset >= 13 { self.const_ints(attrs, &inputs, 1, "split")? } else { attrs.ints("split") };
                let sizes: Vec<usize> = match sizes {
                    Some(s) => s.iter().map(|&v| v.max(0) as usize).collect(),
                    None => {
                        let parts = attrs.int("num_outputs", out.len() as i64).max(1) as usize;
                        let each = n.div_ceil(parts);
                        (0..parts).map(|k| each.min(n.saturating_sub(k * each))).collect()
                    }
                };
                let x = self.value_of(&node.input[0], &first);
                self.emit(node, label, Op::Split { axis, sizes }, vec![x], out)?;
            }
            "Slice" => {
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (attrs.ints("starts").unwrap_or_default(), attrs.ints("ends").unwrap_or_default(), attrs.ints("axes"), None)
                } else {
                    (
                        self.const_ints(attrs, &inputs, 1, "starts")?.unwrap_or_default(),
                        self.const_ints(attrs, &inputs, 2, "ends")?.unwrap_or_default(),
                        self.const_ints(attrs, &inputs, 3, "axes")?,
                        self.const_ints(attrs, &inputs, 4, "steps")?,
                    )
                };
                let (starts, steps, sizes) =
                    slice_params(&x_shape, &starts, &ends, axes.as_deref(), steps.as_deref()).map_err(|m| attrs.error(m))?;
                unary(self, Op::Slice { starts, steps, sizes })?;
            }
            "Pad" => {
                let (pads, value) = if self.opset < 11 {
                    (attrs.ints("pads").unwrap_or_default(), attrs.float("value", 0.0))
                } else {
                    let pads = self.const_ints(attrs, &inputs, 1, "pads")?.ok_or_else(|| attrs.error("pads are missing"))?;
                    let value = self.const_input(attrs, &inputs, 2, "constant_value")?.map_or(0.0, |t| t.to_f32().first().copied().unwrap_or(0.0));
                    (pads, value)
                };
                let axes: Vec<usize> = match self.const_ints(attrs, &inputs, 3, "axes")? {
                    Some(a) => a.iter().map(|&v| normalize_axis(v, rank).ok_or_else(|| attrs.error("axis out of range"))).collect::<Result<_>>()?,
                    None => (0..rank).collect(),
                };
                if pads.len() != 2 * axes.len() {
                    return Err(attrs.error(format!("pads {pads:?} do not match {} axes", axes.len())));
                }
                if pads.iter().any(|&p| p < 0) {
                    return Err(attrs.error(format!("negative pads {pads:?} are not supported")));
                }
                let (mut begin, mut end) = (vec![0; rank], vec![0; rank]);
                for (k, &a) in axes.iter().enumerate() {
                    begin[a] = pads[k] as usize;
                    end[a] = pads[k + axes.len()] as usize;
                }
                let mode = match attrs.string("mode", "constant").as_str() {
                    "constant" => PadMode::Constant(value),
                    "reflect" => PadMode::Reflect,
                    "edge" => PadMode::Edge,
                    m => return Err(attrs.error(format!("pad mode '{m}' is not supported"))),
                };
                unary(self, Op::Pad { begin, end, mode })?;
            }
            "Resize" | "Upsample" => {
                let mode = match attrs.string("mode", "nearest").as_str() {
                    "nearest" => ResizeMode::Nearest,
                    "linear" | "bilinear" => ResizeMode::Linear,
                    m => return Err(attrs.error(format!("mode '{m}' is not supported (nearest and linear are)"))),
                };
                let (scales, sizes) = if op_type == "Upsample" {
                    let scales = match attrs.floats("scales") {
                        Some(s) => Some(s),
                        None => self.const_input(attrs, &inputs, 1, "scales")?.map(|t| t.to_f32()),
                    };
                    (scales, None)
                } else if self.opset < 11 {
                    (self.const_input(attrs, &inputs, 1, "scales")?.map(|t| t.to_f32()), None)
                } else {
                    let scales = self.const_input(attrs, &inputs, 2, "scales")?.map(|t| t.to_f32()).filter(|s| !s.is_empty());
                    let sizes = self.const_input(attrs, &inputs, 3, "sizes")?.map(as_sizes);
                    (scales, sizes)
                };
                let (shape, scales): (Vec<usize>, Option<Vec<f32>>) = match (sizes, scales) {
                    (Some(Some(sizes)), _) if sizes.len() == rank => (sizes, None),
                    (_, Some(scales)) if scales.len() == rank => {
                        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                            return Err(attrs.error(format!("scale {bad} must be positive")));
                        }
                        (x_shape.iter().zip(&scales).map(|(&d, &s)| (d as f32 * s).floor() as usize).collect(), Some(scales))
                    }
                    _ => return Err(attrs.error(format!("needs constant scales or sizes of rank {rank}"))),
                };
                if attrs.has("axes") {
                    return Err(attrs.error("the axes attribute of Resize is not supported"));
                }
                let coord = if op_type == "Upsample" || self.opset < 11 {
                    CoordTransform::Asymmetric
                } else {
                    match attrs.string("coordinate_transformation_mode", "half_pixel").as_str() {
                        "half_pixel" => CoordTransform::HalfPixel,
                        "pytorch_half_pixel" => CoordTransform::PytorchHalfPixel,
                        "align_corners" => CoordTransform::AlignCorners,
                        "asymmetric" => CoordTransform::Asymmetric,
                        "tf_half_pixel_for_nn" => CoordTransform::TfHalfPixelForNn,
                        m => return Err(attrs.error(format!("coordinate_transformation_mode '{m}' is not supported"))),
                    }
                };
                let nearest = if op_type == "Upsample" || self.opset < 11 {
                    NearestMode::Floor
                } else {
                    match attrs.string("nearest_mode", "round_prefer_floor").as_str() {
                        "round_prefer_floor" => NearestMode::RoundPreferFloor,
                        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                        "floor" => NearestMode::Floor,
                        "ceil" => NearestMode::Ceil,
                        m => return Err(attrs.error(format!("nearest_mode '{m}' is not supported"))),
                    }
                };
                unary(self, Op::Resize { mode, coord, nearest, shape, scales })?;
            }
            "Gather" => {
                let axis = axis_attr("axis", 0, rank)?;
                let idx = self.const_input(attrs, &inputs, 1, "indices")?.ok_or_else(|| attrs.error("indices are missing"))?;
                let indices = idx.to_i64().ok_or_else(|| attrs.error("indices must be integers"))?;
                unary(self, Op::Gather { axis, indices, indices_shape: idx.shape.clone() })?;
            }
            other => return Err(attrs.error(format!("operator {other} is not supported"))),
        }
        Ok(())
    }
}
