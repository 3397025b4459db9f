//! QDQ import: QuantizeLinear / DequantizeLinear (opset 10, 13+; per tensor and per axis;
//! int8, uint8 and int32 storage) turned into the [`Quant`] annotation of an ordinary float
//! graph, the form every consumer reads (see [`crate::quant`]).
//!
//! # Rules
//! - **DequantizeLinear of a constant integer tensor** (an initializer, a Constant, or a
//!   QuantizeLinear of a float constant, which is folded) becomes a float constant holding the
//!   exact dequantized data `scale[c] · (q - zp[c])` (f32, as onnxruntime computes it). Once the
//!   whole graph is lowered ([`QdqImport::finish`]), what reads it decides its annotation:
//!   - int32 (a bias): none; the data is the exact dequantized bias.
//!   - read only as input 1 of Conv, ConvTranspose, Gemm or MatMul (a weight):
//!     `Quant::Weight` with the file's scales and `axis` (per tensor: axis 0), when the zero
//!     points are symmetric (0 for int8, 128 for uint8) and the integers lie in
//!     `[-(2^(b-1)-1), 2^(b-1)-1]`; otherwise, per tensor, `Quant::Tensor`; otherwise an error
//!     naming the DequantizeLinear node.
//!   - anything else: `Quant::Tensor` per tensor (a per-axis one is an error naming the node).
//!   - the width is 8 bits unless the model's `quant-playground.ranges` metadata (written by
//!     our export) gives another one that the integers fit; the same entry gives the symmetry
//!     of `Quant::Tensor` constants.
//! - **QuantizeLinear -> DequantizeLinear on a computed value** (or a graph input) is the
//!   identity, the value annotated `Quant::Tensor { scale, zero_point, bits: 8, signed: int8
//!   storage, symmetric: false }`: QuantizeLinear saturates to the full int8/uint8 range, so an
//!   asymmetric annotation (`[-128, 127]` or `[0, 255]`) is exactly what every runtime computes,
//!   whatever the zero point (0 and 128 included). A narrower range is recognised only where
//!   the file says it: a Clip feeding the QuantizeLinear whose bounds are exactly the real ends
//!   `scale · (qmin - zp)`, `scale · (qmax - zp)` of a symmetric or sub-8-bit range (what our
//!   export writes) gives that width and symmetry, and the Clip is dropped (it is the
//!   quantizer's own clamp). This makes our own exports round-trip exactly.
//!   The pair is first lowered to a copy node (a `Reshape` to the same shape) whose output is
//!   annotated; [`QdqImport::finish`] then merges it into its input when nothing else reads
//!   the input, so the usual case leaves no trace. A value read both raw and through Q/DQ
//!   keeps the copy, which is then exactly right.
//! - QuantizeLinear output read by anything but DequantizeLinear, or a graph output, and a
//!   DequantizeLinear of a computed integer tensor, are errors (integer tensors do not flow
//!   through the IR). So are per-axis QuantizeLinear on a computed value, `block_size`, and
//!   storage types other than int8, uint8 and int32.

use std::collections::{BTreeMap, HashMap};

use tract_onnx::pb::{tensor_proto::DataType, ModelProto, NodeProto};

use super::attrs::{normalize_axis, Attrs};
use super::export::{dequantize_one, RangeHint, RANGES_KEY};
use super::lower::{Lowered, Lowering};
use super::tensor::{ConstTensor, Data};
use crate::ir::*;
use crate::quant::params::{ChannelParams, QuantParams};
use crate::{Error, Result};

/// The parameters of one QuantizeLinear or DequantizeLinear.
#[derive(Clone, Debug, PartialEq)]
struct LinearParams {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    /// Storage type (`DataType as i32`).
    dtype: i32,
    /// The quantized axis when per axis.
    axis: Option<usize>,
}

impl LinearParams {
    fn zero_point(&self, c: usize) -> i64 {
        self.zero_points[if self.axis.is_some() { c } else { 0 }]
    }
    fn scale(&self, c: usize) -> f32 {
        self.scales[if self.axis.is_some() { c } else { 0 }]
    }
}

/// A QuantizeLinear on a computed value, waiting for its DequantizeLinear.
#[derive(Clone, Debug)]
struct PendingQ {
    value: ValueId,
    params: LinearParams,
}

/// A constant made by DequantizeLinear, annotated once its readers are known.
#[derive(Clone, Debug)]
struct DqConst {
    node: String,
    params: LinearParams,
    q: Vec<i64>,
}

/// The QDQ state of one import.
#[derive(Default)]
pub struct QdqImport {
    pending: HashMap<String, PendingQ>,
    dq_consts: HashMap<String, DqConst>,
    dq_values: Vec<(ValueId, DqConst)>,
    /// Outputs of the copy nodes that stand for Q/DQ pairs.
    copies: Vec<ValueId>,
    hints: BTreeMap<String, RangeHint>,
}

fn storage_range(dtype: i32) -> Option<(i64, i64)> {
    match DataType::try_from(dtype).ok()? {
        DataType::Int8 => Some((-128, 127)),
        DataType::Uint8 => Some((0, 255)),
        DataType::Int32 => Some((i32::MIN as i64, i32::MAX as i64)),
        _ => None,
    }
}

impl QdqImport {
    /// Reads the range hints of our own exports from the model's metadata (ignored when
    /// absent or unreadable: they only refine what the QDQ nodes say).
    pub fn new(model: &ModelProto) -> QdqImport {
        let hints = model
            .metadata_props
            .iter()
            .find(|p| p.key == RANGES_KEY)
            .and_then(|p| serde_json::from_str(&p.value).ok())
            .unwrap_or_default();
        QdqImport { hints, ..Default::default() }
    }

    /// True if `name` is the integer output of a QuantizeLinear on a computed value.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    /// Called when a constant named `name` becomes the graph value `id`.
    pub fn materialized(&mut self, name: &str, id: ValueId) {
        if let Some(c) = self.dq_consts.get(name) {
            self.dq_values.push((id, c.clone()));
        }
    }

    /// Called when `to` is bound to the same constant as `from` (Identity and the like).
    pub fn alias(&mut self, from: &str, to: &str) {
        if let Some(c) = self.dq_consts.get(from).cloned() {
            self.dq_consts.insert(to.to_string(), c);
        }
    }
}

/// The scale, zero point and storage of a QuantizeLinear/DequantizeLinear node.
fn linear_params(l: &Lowering, attrs: &Attrs, inputs: &[Option<Lowered>], x_shape: &[usize], quantize: bool) -> Result<LinearParams> {
    let scale = match inputs.get(1) {
        Some(Some(Lowered::Const(t))) => t,
        _ => return Err(attrs.error("the scale must be a constant")),
    };
    let scales = scale.to_f32();
    if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(attrs.error(format!("scale {bad} is not a finite positive number")));
    }
    let zero = match inputs.get(2) {
        None | Some(None) => None,
        Some(Some(Lowered::Const(t))) => Some(t),
        Some(Some(Lowered::Value(_))) => return Err(attrs.error("the zero point must be a constant")),
    };
    let dtype = match zero {
        Some(z) => z.elem_type,
        // Opset 21: output_dtype when there is no zero point; before, uint8.
        None if quantize && attrs.has("output_dtype") => attrs.int("output_dtype", DataType::Uint8 as i64) as i32,
        None => DataType::Uint8 as i32,
    };
    if storage_range(dtype).is_none() || (quantize && dtype == DataType::Int32 as i32) {
        return Err(attrs.error(format!(
            "{} storage is not supported (int8, uint8{} are)",
            super::tensor::elem_type_name(dtype),
            if quantize { "" } else { " and int32" }
        )));
    }
    if attrs.int("block_size", 0) != 0 {
        return Err(attrs.error("blocked quantization (block_size) is not supported"));
    }
    let zero_points = match zero {
        Some(z) => z.to_i64().ok_or_else(|| attrs.error("the zero point must be integers"))?,
        None => vec![0; scales.len()],
    };
    if zero_points.len() != scales.len() {
        return Err(attrs.error(format!("{} scales but {} zero points", scales.len(), zero_points.len())));
    }
    let rank = x_shape.len();
    let axis_attr = attrs.int("axis", 1);
    let per_axis = !(scales.len() == 1 && (scale.shape.is_empty() || normalize_axis(axis_attr, rank).and_then(|a| x_shape.get(a)) != Some(&1)));
    let axis = if per_axis {
        if l.opset < 13 {
            return Err(attrs.error("per-axis quantization needs opset 13"));
        }
        let a = normalize_axis(axis_attr, rank).ok_or_else(|| attrs.error(format!("axis {axis_attr} out of range for {x_shape:?}")))?;
        if x_shape[a] != scales.len() {
            return Err(attrs.error(format!("{} scales for axis {a} of {x_shape:?}", scales.len())));
        }
        Some(a)
    } else {
        None
    };
    Ok(LinearParams { scales, zero_points, dtype, axis })
}

/// Channel of flat index `i` in `shape` along `axis` (0 when per tensor).
fn channel_of(shape: &[usize], axis: Option<usize>) -> impl Fn(usize) -> usize + '_ {
    let (channels, inner) = match axis {
        Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>().max(1)),
        None => (1, 1),
    };
    move |i| if axis.is_some() { (i / inner) % channels } else { 0 }
}

impl Lowering {
    /// QuantizeLinear or DequantizeLinear (see the module docs).
    pub(super) fn lower_qdq(&mut self, node: &NodeProto, label: &str, attrs: &Attrs, inputs: Vec<Option<Lowered>>) -> Result<()> {
        let x = inputs.first().cloned().flatten().ok_or_else(|| attrs.error("input 0 is missing"))?;
        let x_shape = match &x {
            Lowered::Const(t) => t.shape.clone(),
            Lowered::Value(v) => self.graph.values[*v].shape.clone(),
        };
        let out = node.output.first().ok_or_else(|| attrs.error("has no output"))?.clone();
        if node.op_type == "QuantizeLinear" {
            let params = linear_params(self, attrs, &inputs, &x_shape, true)?;
            match x {
                Lowered::Const(t) => {
                    // Fold: ONNX rounds half to even and saturates to the storage range.
                    if !t.is_float() {
                        return Err(attrs.error("quantizes an integer constant"));
                    }
                    let (lo, hi) = storage_range(params.dtype).expect("checked");
                    let channel = channel_of(&t.shape, params.axis);
                    let q = t
                        .to_f32()
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = channel(i);
                            let r = (v / params.scale(c)).round_ties_even();
                            let r = if r.is_nan() { 0.0 } else { r.clamp(-1e12, 1e12) };
                            (r as i64 + params.zero_point(c)).clamp(lo, hi)
                        })
                        .collect();
                    self.env.insert(out, Lowered::Const(ConstTensor { shape: t.shape.clone(), data: Data::I64(q), elem_type: params.dtype }));
                }
                Lowered::Value(v) => {
                    if params.axis.is_some() {
                        return Err(attrs.error("per-axis quantization of a computed tensor is not supported"));
                    }
                    self.qdq.pending.insert(out.clone(), PendingQ { value: v, params });
                    // Bound so that later lookups find it; `lower` refuses readers other than DequantizeLinear.
                    self.env.insert(out, Lowered::Value(v));
                }
            }
            return Ok(());
        }

        // DequantizeLinear.
        if let Some(q) = self.qdq.pending.get(&node.input[0]).cloned() {
            let params = linear_params(self, attrs, &inputs, &x_shape, false)?;
            if params != q.params {
                return Err(attrs.error(format!(
                    "dequantizes with scale {:?} and zero point {:?}, its QuantizeLinear used {:?} and {:?}",
                    params.scales, params.zero_points, q.params.scales, q.params.zero_points
                )));
            }
            let p = QuantParams {
                scale: params.scales[0],
                zero_point: params.zero_points[0] as i32,
                bits: 8,
                signed: params.dtype == DataType::Int8 as i32,
                symmetric: false,
            };
            p.validate().map_err(|e| attrs.error(e.to_string()))?;
            let shape = self.graph.values[q.value].shape.clone();
            let id = self.graph.add_value(out.clone(), shape.clone());
            self.graph.values[id].quant = Some(Quant::Tensor(p));
            self.graph.nodes.push(Node { name: label.to_string(), op: Op::Reshape { shape }, inputs: vec![q.value], outputs: vec![id] });
            self.env.insert(out, Lowered::Value(id));
            self.qdq.copies.push(id);
            return Ok(());
        }
        let t = match x {
            Lowered::Const(t) => t,
            Lowered::Value(_) => {
                return Err(attrs.error(
                    "dequantizes an integer tensor computed at run time (only QuantizeLinear outputs and constants can be dequantized)",
                ))
            }
        };
        if t.is_float() {
            return Err(attrs.error("dequantizes a float constant"));
        }
        let mut params = linear_params(self, attrs, &inputs, &x_shape, false)?;
        if params.dtype != t.elem_type {
            if inputs.get(2).is_some_and(|z| z.is_some()) {
                return Err(attrs.error(format!(
                    "the data is {} and the zero point {}",
                    super::tensor::elem_type_name(t.elem_type),
                    super::tensor::elem_type_name(params.dtype)
                )));
            }
            params.dtype = t.elem_type; // no zero point: it is 0 of the data's type
        }
        if storage_range(params.dtype).is_none() {
            return Err(attrs.error(format!("{} storage is not supported", super::tensor::elem_type_name(params.dtype))));
        }
        let q = t.to_i64().expect("integer data");
        let channel = channel_of(&t.shape, params.axis);
        let data = q.iter().enumerate().map(|(i, &v)| dequantize_one(v, params.scale(channel(i)), params.zero_point(channel(i)))).collect();
        self.env.insert(out.clone(), Lowered::Const(ConstTensor::f32(t.shape.clone(), data)));
        self.qdq.dq_consts.insert(out, DqConst { node: label.to_string(), params, q });
        Ok(())
    }
}

/// The value-level readers of each value: (node index, input index).
fn readers(graph: &Graph) -> Vec<Vec<(usize, usize)>> {
    let mut r = vec![Vec::new(); graph.values.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        for (k, &i) in node.inputs.iter().enumerate() {
            r[i].push((n, k));
        }
    }
    r
}

/// Parameters of `p`'s scale and zero point whose real range is exactly `[lo, hi]`, narrower
/// than the full 8-bit storage range.
fn narrowed(p: &QuantParams, lo: f32, hi: f32) -> Option<QuantParams> {
    for bits in (2..=8).rev() {
        for symmetric in [true, false] {
            if bits == 8 && !symmetric {
                continue;
            }
            let c = QuantParams { bits, symmetric, ..*p };
            if c.validate().is_ok() && c.real_range() == (lo, hi) {
                return Some(c);
            }
        }
    }
    None
}

impl QdqImport {
    /// Annotates the constants made by DequantizeLinear and resolves the Q/DQ copies; runs
    /// after the graph outputs are bound, before the passes.
    pub fn finish(&mut self, graph: &mut Graph) -> Result<()> {
        self.annotate_constants(graph)?;
        self.merge_copies(graph);
        Ok(())
    }

    fn annotate_constants(&self, graph: &mut Graph) -> Result<()> {
        let readers = readers(graph);
        for (id, c) in &self.dq_values {
            let p = &c.params;
            if p.dtype == DataType::Int32 as i32 || graph.values[*id].quant.is_some() {
                continue;
            }
            let err = |msg: String| Error::node(&c.node, "DequantizeLinear", msg);
            let hint = self.hints.get(&graph.values[*id].name);
            let signed = p.dtype == DataType::Int8 as i32;
            let weight = !readers[*id].is_empty() && readers[*id].iter().all(|&(n, k)| k == 1 && graph.nodes[n].op.has_weights());
            if weight {
                let offset = if signed { 0 } else { 128 };
                let bits = hint.map_or(8, |h| h.bits);
                let fits = |bits: u32| {
                    let qmax = (1i64 << (bits - 1)) - 1;
                    (2..=8).contains(&bits)
                        && p.zero_points.iter().all(|&z| z == offset)
                        && c.q.iter().all(|&q| (q - offset).abs() <= qmax)
                };
                let bits = if fits(bits) { Some(bits) } else { fits(8).then_some(8) };
                if let Some(bits) = bits {
                    let params = ChannelParams { scales: p.scales.clone(), bits, axis: p.axis.unwrap_or(0) };
                    graph.values[*id].quant = Some(Quant::Weight(params));
                    continue;
                }
                if p.axis.is_some() {
                    return Err(err(format!(
                        "a per-channel weight needs zero points {offset} and integers in [{}, {}] (symmetric 8-bit); zero points {:?}",
                        offset - 127,
                        offset + 127,
                        &p.zero_points[..p.zero_points.len().min(8)]
                    )));
                }
            } else if p.axis.is_some() {
                let what: Vec<String> = readers[*id].iter().map(|&(n, k)| format!("{} input {k}", graph.nodes[n].op.name())).collect();
                return Err(err(format!(
                    "per-axis quantization is supported on Conv/Gemm/MatMul weights only; this one is read by {}",
                    if what.is_empty() { "nothing but the graph outputs".into() } else { what.join(", ") }
                )));
            }
            let base = QuantParams { scale: p.scales[0], zero_point: p.zero_points[0] as i32, bits: 8, signed, symmetric: false };
            base.validate().map_err(|e| err(e.to_string()))?;
            let within = |q: &QuantParams| q.validate().is_ok() && c.q.iter().all(|&v| (q.qmin() as i64..=q.qmax() as i64).contains(&v));
            let hinted = hint.map(|h| QuantParams { bits: h.bits, symmetric: h.symmetric, ..base }).filter(within);
            graph.values[*id].quant = Some(Quant::Tensor(hinted.unwrap_or(base)));
        }
        Ok(())
    }

    fn merge_copies(&self, graph: &mut Graph) {
        for &y in &self.copies {
            let Some(p) = graph.nodes.iter().position(|n| n.outputs == [y] && matches!(n.op, Op::Reshape { .. })) else { continue };
            let Some(Quant::Tensor(mut params)) = graph.values[y].quant.clone() else { continue };
            let mut x = graph.nodes[p].inputs[0];
            // The range Clip of a narrower integer range (see the module docs).
            let r = readers(graph);
            let clip = graph.nodes.iter().position(|n| n.outputs.contains(&x));
            if let Some(c) = clip {
                if let Op::Activation(Activation::Clip { min, max }) = graph.nodes[c].op {
                    let only_reader = r[x] == [(p, 0)] && !graph.outputs.contains(&x);
                    if let (true, Some(narrow)) = (only_reader, narrowed(&params, min, max)) {
                        params = narrow;
                        x = graph.nodes[c].inputs[0];
                        graph.nodes[p].inputs[0] = x;
                        graph.nodes.remove(c);
                        graph.values[y].quant = Some(Quant::Tensor(params));
                    }
                }
            }
            let p = graph.nodes.iter().position(|n| n.outputs == [y]).expect("copy node");
            let r = readers(graph);
            let y_is_output = graph.outputs.contains(&y);
            let mergeable = r[x] == [(p, 0)]
                && !graph.outputs.contains(&x)
                && graph.values[x].quant.is_none()
                && !graph.values[x].is_const()
                && !(y_is_output && graph.inputs.contains(&x));
            if !mergeable {
                continue;
            }
            graph.values[x].quant = Some(Quant::Tensor(params));
            if y_is_output {
                graph.values[x].name = graph.values[y].name.clone();
            }
            graph.nodes.remove(p);
            for node in &mut graph.nodes {
                node.inputs.iter_mut().filter(|i| **i == y).for_each(|i| *i = x);
            }
            graph.outputs.iter_mut().filter(|o| **o == y).for_each(|o| *o = x);
        }
    }
}
