//! ONNX export: an IR [`Graph`], quantized or not, written back as a standard ONNX model
//! (`tract_onnx::pb` types, prost-encoded) that onnxruntime, TensorRT and OpenVINO read.
//!
//! # What is written
//! - Every IR op as its ONNX op, attributes spelled out (pads, strides, dilations, group ...;
//!   shapes, slices, pads, split sizes, Resize scales or sizes and Gather indices as
//!   initializers). A fused activation becomes its own node after the op (Relu, Clip with
//!   `min`/`max` inputs, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh; SiLU as
//!   `x * Sigmoid(x)`); import fuses them back.
//! - Graph inputs and outputs keep their names; other values keep theirs where they are
//!   unique, generated names (`<value>_quantized`, `<value>_scale` ...) are made unique.
//! - Opset [`DEFAULT_EXPORT_OPSET`] (17) unless [`ExportOptions::opset`] says otherwise
//!   (13..=21: per-axis DequantizeLinear needs 13; at 13 HardSwish is written as
//!   `x * HardSigmoid(x)`).
//!
//! # QDQ form (what a [`Quant`] annotation becomes)
//! - A `Quant::Tensor` activation (or graph input): `QuantizeLinear -> DequantizeLinear` right
//!   after its producer, every consumer reading the DequantizeLinear output. A quantized graph
//!   output keeps its name on the DequantizeLinear output. int8 storage (`signed`) writes an
//!   int8 zero point, uint8 storage a uint8 one.
//! - When the annotated integer range is narrower than the storage type's (symmetric ranges,
//!   which drop the most negative integer, and widths below 8 bits), a `Clip` to the range's
//!   real ends `[scale · (qmin - zp), scale · (qmax - zp)]` precedes the QuantizeLinear:
//!   QuantizeLinear saturates to the full int8/uint8 range, the Clip makes onnxruntime compute
//!   what we do, and import reads the width and symmetry back from it (see `onnx::qdq`).
//! - A `Quant::Weight`: an int8 initializer and a DequantizeLinear, per channel (1-D scale,
//!   `axis`) or per tensor (scalar scale), zero point 0. **Weights narrower than 8 bits are
//!   stored in int8 with their clamped integers** (`[-(2^(b-1)-1), 2^(b-1)-1]`, e.g.
//!   `[-7, 7]` at 4 bits); any runtime reads them as 8-bit weights that happen to use a
//!   smaller range, which is exact. The width is recorded in the model's metadata (below).
//! - The bias of a Conv, ConvTranspose or Gemm whose input and weight are quantized: an int32
//!   initializer `round(b / (s_x · s_w[c]))` and a DequantizeLinear at scale `s_x · s_w[c]`
//!   (what onnxruntime's quantizer writes and what its QLinearConv fusion expects).
//! - A `Quant::Tensor` constant (an elementwise op's operand): int8 or uint8 initializer and a
//!   per-tensor DequantizeLinear.
//! - Everything else, and every layer kept in float, stays float.
//!
//! Every quantized constant's data is exactly `dequantize(q)` (the invariant of
//! [`crate::quant`]), so the integers are recovered by rounding `data / scale`; a constant
//! whose data is not on its grid is an error naming it (a bias that is not is written in
//! float). DequantizeLinear computes `(q - zp) · scale` in f32, which gives the data back bit
//! for bit (a `-0.0` comes back as `0.0`).
//!
//! Metadata: `metadata_props["quant-playground.ranges"]` is a JSON object from each quantized
//! constant's tensor name to its `{"bits", "symmetric"}`, which QDQ cannot express for
//! constants (an int8 initializer holding `[-7, 7]` is a 4-bit weight only by intent).
//! Import uses it when present; other tools ignore it.
//! `metadata_props["quant-playground.requantization"]` names how the int8 engine rounded the
//! model (`fp32`, onnxruntime's, or `fixed-point`, TFLite's; see
//! [`crate::kernels::int8::Requantization`]), so that importing the file runs the same
//! integers. A QDQ file without it is run in `fp32`, as onnxruntime runs it.
//! `metadata_props["quant-playground.fusion"]` says which nodes the int8 engine ran with
//! integer kernels (`integer`: all; `onnxruntime`: those onnxruntime fuses, for a re-exported
//! foreign file; see [`crate::ir::Fusion`]). A QDQ file without either key runs as onnxruntime
//! fuses it.
//!
//! Tested by `crate/tests/qdq.rs` (round trips, every op, names, the QDQ structure) and by
//! `tests/ort/` (onnx's checker and onnxruntime on the exported files).

use std::collections::{BTreeMap, HashSet};

use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::ir::*;
use crate::quant::params::{ChannelParams, QuantParams};
use crate::{Error, Result};

/// The opset [`export`] writes by default: onnxruntime 1.x runs it everywhere (web included),
/// and it has HardSwish (14) and per-axis DequantizeLinear (13).
pub const DEFAULT_EXPORT_OPSET: i64 = 17;

/// The opsets [`export`] can write.
pub const EXPORT_OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// `producer_name` of exported models.
pub const PRODUCER_NAME: &str = "quant-playground";

/// The metadata key holding the widths of quantized constants (see the module docs).
pub const RANGES_KEY: &str = "quant-playground.ranges";

/// The metadata key naming the model's [`Requantization`] (see the module docs).
pub const REQUANTIZATION_KEY: &str = "quant-playground.requantization";

/// The metadata key naming the model's [`Fusion`](crate::ir::Fusion) (see the module docs).
pub const FUSION_KEY: &str = "quant-playground.fusion";

/// What QDQ cannot say about a quantized constant: its width and (for `Quant::Tensor`
/// constants) whether its range is symmetric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeHint {
    pub bits: u32,
    #[serde(default)]
    pub symmetric: bool,
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Default-domain opset, in [`EXPORT_OPSETS`].
    pub opset: i64,
    /// The graph's name.
    pub graph_name: String,
    /// The model's `doc_string`.
    pub doc_string: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_EXPORT_OPSET,
            graph_name: "quant-playground".into(),
            doc_string: "Exported by quant-playground (ONNX QDQ where the model is quantized).".into(),
        }
    }
}

/// Writes `graph` as ONNX model bytes. See the module docs.
pub fn export(graph: &Graph, options: &ExportOptions) -> Result<Vec<u8>> {
    Ok(export_model(graph, options)?.encode_to_vec())
}

/// [`export`] before encoding.
pub fn export_model(graph: &Graph, options: &ExportOptions) -> Result<ModelProto> {
    if !EXPORT_OPSETS.contains(&options.opset) {
        return Err(Error::Invalid(format!(
            "export opset {} is outside {}..={}",
            options.opset,
            EXPORT_OPSETS.start(),
            EXPORT_OPSETS.end()
        )));
    }
    let mut w = Writer::new(graph, options.opset);
    w.write()?;
    let Writer { nodes, initializers, ranges, names, .. } = w;
    let value_info = |id: ValueId| value_info(&names[id], &graph.values[id].shape);
    let graph_proto = GraphProto {
        name: options.graph_name.clone(),
        node: nodes,
        initializer: initializers,
        input: graph.inputs.iter().map(|&i| value_info(i)).collect(),
        output: graph.outputs.iter().map(|&o| value_info(o)).collect(),
        ..Default::default()
    };
    let mut metadata_props = Vec::new();
    if graph.values.iter().any(|v| v.quant.is_some()) {
        metadata_props.push(StringStringEntryProto {
            key: REQUANTIZATION_KEY.into(),
            value: graph.requantization.name().into(),
        });
        metadata_props.push(StringStringEntryProto { key: FUSION_KEY.into(), value: graph.fusion.name().into() });
    }
    if !ranges.is_empty() {
        metadata_props.push(StringStringEntryProto {
            key: RANGES_KEY.into(),
            value: serde_json::to_string(&ranges).expect("range hints serialise"),
        });
    }
    Ok(ModelProto {
        ir_version: ir_version(options.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: options.opset }],
        producer_name: PRODUCER_NAME.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: options.doc_string.clone(),
        graph: Some(graph_proto),
        metadata_props,
        ..Default::default()
    })
}

/// The IR version of the ONNX release that introduced `opset`.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dims = shape.iter().map(|&d| Dimension { value: Some(DimValue::DimValue(d as i64)), ..Default::default() }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---- tensors and attributes ----

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims(shape),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims(shape),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An integer tensor of type `dtype` (int8, uint8 or int32), values already in its range.
fn tensor_int(name: &str, shape: &[usize], dtype: DataType, data: &[i64]) -> TensorProto {
    let raw_data = match dtype {
        DataType::Int8 => data.iter().map(|&v| v as i8 as u8).collect(),
        DataType::Uint8 => data.iter().map(|&v| v as u8).collect(),
        DataType::Int32 => data.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        other => unreachable!("integer storage {other:?}"),
    };
    TensorProto { name: name.into(), dims: dims(shape), data_type: dtype as i32, raw_data, ..Default::default() }
}

fn a_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn a_usizes(name: &str, v: &[usize]) -> AttributeProto {
    a_ints(name, &dims(v))
}

fn a_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

fn a_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::String as i32, s: s.as_bytes().to_vec(), ..Default::default() }
}

/// `scale · (q - zp)` in f32: what DequantizeLinear computes, and what import stores.
pub(crate) fn dequantize_one(q: i64, scale: f32, zero_point: i64) -> f32 {
    scale * (q - zero_point) as f32
}

/// The integer `q` with `dequantize_one(q, scale, zp) == x` inside `[qmin, qmax]`, if any.
fn exact_integer(x: f32, scale: f32, zero_point: i64, qmin: i64, qmax: i64) -> Option<i64> {
    let r = (x / scale).round_ties_even();
    if !r.is_finite() || r.abs() > (1u64 << 40) as f32 {
        return None;
    }
    let q = r as i64 + zero_point;
    ((qmin..=qmax).contains(&q) && dequantize_one(q, scale, zero_point) == x).then_some(q)
}

/// `(outer, channels, inner)` of channel axis `axis` in `shape`.
fn channel_layout(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The integers of quantized constant data: per channel (scales along `axis`) or per tensor.
fn integers(
    data: &[f32],
    shape: &[usize],
    scales: &[f32],
    axis: Option<usize>,
    zero_point: i64,
    range: (i64, i64),
) -> std::result::Result<Vec<i64>, String> {
    let (_, channels, inner) = match axis {
        Some(a) if a < shape.len() && shape[a] == scales.len() => channel_layout(shape, a),
        Some(a) => return Err(format!("{} scales do not match axis {a} of shape {shape:?}", scales.len())),
        None => (1, 1, data.len().max(1)),
    };
    data.iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = if axis.is_some() { (i / inner) % channels } else { 0 };
            exact_integer(x, scales[c], zero_point, range.0, range.1).ok_or_else(|| {
                format!("element {i} ({x}) is not scale · (q - zero point) for an integer q in [{}, {}] (scale {})", range.0, range.1, scales[c])
            })
        })
        .collect()
}

// ---- the writer ----

struct Writer<'g> {
    g: &'g Graph,
    opset: i64,
    /// The unique ONNX name of each IR value (graph inputs and outputs keep theirs).
    names: Vec<String>,
    /// The tensor consumers read for each value: its name, or its DequantizeLinear output.
    read: Vec<String>,
    used: HashSet<String>,
    node_names: HashSet<String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    ranges: BTreeMap<String, RangeHint>,
}

fn unique(used: &mut HashSet<String>, base: &str) -> String {
    let base = if base.is_empty() { "t" } else { base };
    let mut name = base.to_string();
    let mut k = 1;
    while used.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    used.insert(name.clone());
    name
}

impl<'g> Writer<'g> {
    fn new(g: &'g Graph, opset: i64) -> Writer<'g> {
        let mut used = HashSet::new();
        let mut names = vec![String::new(); g.values.len()];
        // Graph inputs and outputs first: they keep their names exactly.
        for &id in g.inputs.iter().chain(&g.outputs) {
            if names[id].is_empty() {
                names[id] = unique(&mut used, &g.values[id].name);
            }
        }
        for (id, v) in g.values.iter().enumerate() {
            if names[id].is_empty() {
                let base = if v.name.is_empty() { format!("value_{id}") } else { v.name.clone() };
                names[id] = unique(&mut used, &base);
            }
        }
        let read = names.clone();
        Writer { g, opset, names, read, used, node_names: HashSet::new(), nodes: Vec::new(), initializers: Vec::new(), ranges: BTreeMap::new() }
    }

    fn fresh(&mut self, base: &str) -> String {
        unique(&mut self.used, base)
    }

    fn node(&mut self, op_type: &str, name: &str, inputs: Vec<String>, outputs: Vec<String>, attribute: Vec<AttributeProto>) {
        let name = unique(&mut self.node_names, name);
        self.nodes.push(NodeProto { name, op_type: op_type.into(), input: inputs, output: outputs, attribute, ..Default::default() });
    }

    fn init(&mut self, mut t: TensorProto, base: &str) -> String {
        let name = self.fresh(base);
        t.name = name.clone();
        self.initializers.push(t);
        name
    }

    fn init_f32(&mut self, base: &str, shape: &[usize], data: &[f32]) -> String {
        self.init(tensor_f32("", shape, data), base)
    }

    fn init_i64(&mut self, base: &str, shape: &[usize], data: &[i64]) -> String {
        self.init(tensor_i64("", shape, data), base)
    }

    fn write(&mut self) -> Result<()> {
        let g = self.g;
        self.write_constants()?;
        for &i in &g.inputs {
            let name = self.names[i].clone();
            self.quantize_activation(i, &name, &name)?;
        }
        for node in &g.nodes {
            // Each output: the name the op writes (`raw`) and what consumers read.
            let mut raws = Vec::with_capacity(node.outputs.len());
            for &o in &node.outputs {
                let quantized = matches!(g.values[o].quant, Some(Quant::Tensor(_)));
                let raw = if quantized && g.outputs.contains(&o) {
                    let base = format!("{}_float", self.names[o]);
                    self.fresh(&base)
                } else {
                    self.names[o].clone()
                };
                raws.push(raw);
            }
            self.write_node(node, &raws)?;
            for (&o, raw) in node.outputs.iter().zip(&raws) {
                let name = self.names[o].clone();
                self.quantize_activation(o, raw, &name)?;
            }
        }
        Ok(())
    }

    /// Q/DQ after the value `id` written as `raw`, when it is a quantized activation; a graph
    /// output's DequantizeLinear writes `name`.
    fn quantize_activation(&mut self, id: ValueId, raw: &str, name: &str) -> Result<()> {
        let Some(Quant::Tensor(p)) = &self.g.values[id].quant else { return Ok(()) };
        let p = *p;
        p.validate().map_err(|e| Error::Invalid(format!("value '{name}': {e}")))?;
        let dq_out = if raw == name {
            let base = format!("{name}_dequantized");
            self.fresh(&base)
        } else {
            name.to_string()
        };
        let mut x = raw.to_string();
        if needs_range_clip(&p) {
            let (lo, hi) = p.real_range();
            let lo = self.init_f32(&format!("{name}_range_min"), &[], &[lo]);
            let hi = self.init_f32(&format!("{name}_range_max"), &[], &[hi]);
            let clipped = self.fresh(&format!("{name}_clipped"));
            self.node("Clip", &format!("{name}_range"), vec![x, lo, hi], vec![clipped.clone()], vec![]);
            x = clipped;
        }
        let scale = self.init_f32(&format!("{name}_scale"), &[], &[p.scale]);
        let zp_type = if p.signed { DataType::Int8 } else { DataType::Uint8 };
        let zp = self.init(tensor_int("", &[], zp_type, &[p.zero_point as i64]), &format!("{name}_zero_point"));
        let q = self.fresh(&format!("{name}_quantized"));
        self.node("QuantizeLinear", &format!("{name}_QuantizeLinear"), vec![x, scale.clone(), zp.clone()], vec![q.clone()], vec![]);
        self.node("DequantizeLinear", &format!("{name}_DequantizeLinear"), vec![q, scale, zp], vec![dq_out.clone()], vec![]);
        self.read[id] = dq_out;
        Ok(())
    }

    /// Initializers (and DequantizeLinear nodes) for every constant the graph reads.
    fn write_constants(&mut self) -> Result<()> {
        let g = self.g;
        // Biases that become int32: value -> (scales, axis of the bias) from their layer.
        let mut bias_scales: Vec<Option<(Vec<f32>, Option<usize>)>> = vec![None; g.values.len()];
        for node in &g.nodes {
            if !matches!(node.op, Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. }) || node.inputs.len() < 3 {
                continue;
            }
            let (x, w, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
            let (Some(Quant::Tensor(xp)), Some(Quant::Weight(wp))) = (&g.values[x].quant, &g.values[w].quant) else { continue };
            let bias = &g.values[b];
            if !bias.is_const() || bias.quant.is_some() || bias_scales[b].is_some() {
                continue;
            }
            if wp.is_per_tensor() {
                bias_scales[b] = Some((vec![xp.scale * wp.scales[0]], None));
            } else if let Some(axis) = bias_axis(&bias.shape, wp.scales.len()) {
                bias_scales[b] = Some((wp.scales.iter().map(|&s| xp.scale * s).collect(), Some(axis)));
            }
        }
        let mut seen = vec![false; g.values.len()];
        let read_ids = g.nodes.iter().flat_map(|n| n.inputs.iter()).chain(&g.outputs);
        for &id in read_ids {
            if seen[id] || !g.values[id].is_const() {
                continue;
            }
            seen[id] = true;
            let v = &g.values[id];
            let data = g.const_data(id).expect("checked const");
            let name = self.names[id].clone();
            let err = |msg: String| Error::Tensor { name: name.clone(), msg };
            match &v.quant {
                Some(Quant::Weight(p)) => {
                    let q = weight_integers(data, &v.shape, p).map_err(|m| err(format!("quantized weight: {m}")))?;
                    // Per axis for several channels, and for one channel on an axis other
                    // than 0 (so that the axis reads back); per tensor otherwise.
                    let on_axis = v.shape.get(p.axis) == Some(&p.scales.len());
                    let axis = (on_axis && (!p.is_per_tensor() || p.axis != 0)).then_some(p.axis);
                    self.dequantized(&name, &v.shape, DataType::Int8, &q, &p.scales, &vec![0; p.scales.len()], axis);
                    self.ranges.insert(name, RangeHint { bits: p.bits, symmetric: true });
                }
                Some(Quant::Tensor(p)) => {
                    p.validate().map_err(|e| err(e.to_string()))?;
                    let range = (p.qmin() as i64, p.qmax() as i64);
                    let q = integers(data, &v.shape, &[p.scale], None, p.zero_point as i64, range)
                        .map_err(|m| err(format!("quantized constant: {m}")))?;
                    let dtype = if p.signed { DataType::Int8 } else { DataType::Uint8 };
                    self.dequantized(&name, &v.shape, dtype, &q, &[p.scale], &[p.zero_point as i64], None);
                    self.ranges.insert(name, RangeHint { bits: p.bits, symmetric: p.symmetric });
                }
                None => {
                    let as_int32 = bias_scales[id].as_ref().and_then(|(scales, axis)| {
                        let q = integers(data, &v.shape, scales, *axis, 0, (i32::MIN as i64, i32::MAX as i64)).ok()?;
                        Some((q, scales.clone(), *axis))
                    });
                    match as_int32 {
                        Some((q, scales, axis)) => {
                            let zeros = vec![0; scales.len()];
                            self.dequantized(&name, &v.shape, DataType::Int32, &q, &scales, &zeros, axis);
                        }
                        None => self.initializers.push(tensor_f32(&name, &v.shape, data)),
                    }
                }
            }
        }
        Ok(())
    }

    /// An integer initializer and the DequantizeLinear writing `name`; per axis when `axis`
    /// is given (1-D scale and zero point), else per tensor (scalars).
    #[allow(clippy::too_many_arguments)]
    fn dequantized(&mut self, name: &str, shape: &[usize], dtype: DataType, q: &[i64], scales: &[f32], zps: &[i64], axis: Option<usize>) {
        let param_shape: &[usize] = if axis.is_some() { &[scales.len()] } else { &[] };
        let (scales, zps) = if axis.is_some() { (scales, zps) } else { (&scales[..1], &zps[..1]) };
        let data = self.init(tensor_int("", shape, dtype, q), &format!("{name}_quantized"));
        let scale = self.init_f32(&format!("{name}_scale"), param_shape, scales);
        let zp = self.init(tensor_int("", param_shape, dtype, zps), &format!("{name}_zero_point"));
        let attrs = axis.map(|a| vec![a_int("axis", a as i64)]).unwrap_or_default();
        self.node("DequantizeLinear", &format!("{name}_DequantizeLinear"), vec![data, scale, zp], vec![name.to_string()], attrs);
    }

    /// Writes an activation node `input -> output` (Identity never reaches here).
    fn activation(&mut self, act: Activation, input: String, output: String, name: &str) {
        let one = |w: &mut Self, op: &str, attrs: Vec<AttributeProto>| w.node(op, name, vec![input.clone()], vec![output.clone()], attrs);
        match act {
            Activation::Identity => one(self, "Identity", vec![]),
            Activation::Relu => one(self, "Relu", vec![]),
            Activation::Sigmoid => one(self, "Sigmoid", vec![]),
            Activation::Tanh => one(self, "Tanh", vec![]),
            Activation::LeakyRelu { alpha } => one(self, "LeakyRelu", vec![a_float("alpha", alpha)]),
            Activation::HardSigmoid { alpha, beta } => one(self, "HardSigmoid", vec![a_float("alpha", alpha), a_float("beta", beta)]),
            Activation::HardSwish if self.opset >= 14 => one(self, "HardSwish", vec![]),
            Activation::HardSwish => {
                // Opset 13 has no HardSwish: x * HardSigmoid(x, 1/6, 1/2), which import fuses back.
                let gate = self.fresh(&format!("{output}_hardsigmoid"));
                let attrs = vec![a_float("alpha", 1.0 / 6.0), a_float("beta", 0.5)];
                self.node("HardSigmoid", &format!("{name}_hardsigmoid"), vec![input.clone()], vec![gate.clone()], attrs);
                self.node("Mul", name, vec![input, gate], vec![output], vec![]);
            }
            Activation::Silu => {
                let gate = self.fresh(&format!("{output}_sigmoid"));
                self.node("Sigmoid", &format!("{name}_sigmoid"), vec![input.clone()], vec![gate.clone()], vec![]);
                self.node("Mul", name, vec![input, gate], vec![output], vec![]);
            }
            Activation::Clip { min, max } => {
                let mut inputs = vec![input];
                inputs.push(if min == f32::NEG_INFINITY { String::new() } else { self.init_f32(&format!("{name}_min"), &[], &[min]) });
                if max != f32::INFINITY {
                    inputs.push(self.init_f32(&format!("{name}_max"), &[], &[max]));
                }
                while inputs.last().is_some_and(|s| s.is_empty()) {
                    inputs.pop();
                }
                self.node("Clip", name, inputs, vec![output], vec![]);
            }
        }
    }

    /// An op whose own output goes through its fused activation (if any) to `out`.
    fn with_activation(&mut self, op_type: &str, node: &Node, inputs: Vec<String>, out: &str, attrs: Vec<AttributeProto>, act: Activation) {
        if act == Activation::Identity {
            self.node(op_type, &node.name, inputs, vec![out.to_string()], attrs);
        } else {
            let pre = self.fresh(&format!("{out}_{}", op_type.to_lowercase()));
            self.node(op_type, &node.name, inputs, vec![pre.clone()], attrs);
            self.activation(act, pre, out.to_string(), &format!("{}_{}", node.name, activation_name(act)));
        }
    }

    fn write_node(&mut self, node: &Node, outs: &[String]) -> Result<()> {
        let g = self.g;
        let inputs: Vec<String> = node.inputs.iter().map(|&i| self.read[i].clone()).collect();
        let x_shape = node.inputs.first().map(|&i| g.values[i].shape.clone()).unwrap_or_default();
        let out = outs[0].clone();
        let name = node.name.clone();
        let unsupported = |msg: String| Error::node(&node.name, node.op.name(), format!("cannot be exported: {msg}"));
        let simple = |w: &mut Self, op_type: &str, attrs: Vec<AttributeProto>| w.node(op_type, &name, inputs.clone(), vec![out.clone()], attrs);
        match &node.op {
            Op::Conv(c) => {
                let attrs = window_attrs(&c.window, true).into_iter().chain([a_int("group", c.group as i64)]).collect();
                self.with_activation("Conv", node, inputs, &out, attrs, c.activation);
            }
            Op::ConvTranspose(c) => {
                let mut attrs = window_attrs(&c.window, true);
                attrs.push(a_int("group", c.group as i64));
                attrs.push(a_usizes("output_padding", &c.output_padding));
                self.with_activation("ConvTranspose", node, inputs, &out, attrs, c.activation);
            }
            Op::Gemm { trans_a, trans_b, alpha, beta, activation } => {
                let attrs = vec![a_int("transA", *trans_a as i64), a_int("transB", *trans_b as i64), a_float("alpha", *alpha), a_float("beta", *beta)];
                self.with_activation("Gemm", node, inputs, &out, attrs, *activation);
            }
            Op::MatMul => simple(self, "MatMul", vec![]),
            Op::Binary(_) | Op::Unary(_) | Op::PRelu => simple(self, node.op.name(), vec![]),
            Op::Activation(act) => self.activation(*act, inputs[0].clone(), out, &name),
            Op::Softmax { axis, log } => simple(self, if *log { "LogSoftmax" } else { "Softmax" }, vec![a_int("axis", *axis as i64)]),
            Op::MaxPool { window, ceil_mode } => {
                let mut attrs = window_attrs(window, true);
                attrs.push(a_int("ceil_mode", *ceil_mode as i64));
                simple(self, "MaxPool", attrs);
            }
            Op::AveragePool { window, ceil_mode, count_include_pad } => {
                let dilated = window.dilations != [1, 1];
                if dilated && self.opset < 19 {
                    return Err(unsupported(format!("dilated AveragePool needs opset 19, exporting at {}", self.opset)));
                }
                let mut attrs = window_attrs(window, dilated);
                attrs.push(a_int("ceil_mode", *ceil_mode as i64));
                attrs.push(a_int("count_include_pad", *count_include_pad as i64));
                simple(self, "AveragePool", attrs);
            }
            Op::GlobalAveragePool | Op::GlobalMaxPool => simple(self, node.op.name(), vec![]),
            Op::Reduce { op, axes, keep_dims } => {
                let keep = a_int("keepdims", *keep_dims as i64);
                let axes_i64 = dims(axes);
                if self.opset >= 18 || *op == ReduceOp::Sum {
                    let a = self.init_i64(&format!("{name}_axes"), &[axes.len()], &axes_i64);
                    self.node(node.op.name(), &name, vec![inputs[0].clone(), a], vec![out], vec![keep]);
                } else {
                    simple(self, node.op.name(), vec![a_ints("axes", &axes_i64), keep]);
                }
            }
            Op::Reshape { shape } => {
                let s = self.init_i64(&format!("{name}_shape"), &[shape.len()], &dims(shape));
                // A 0 in the target copies the input's dim unless allowzero (opset 14).
                let attrs = if shape.contains(&0) {
                    if self.opset < 14 {
                        return Err(unsupported("a target shape with a 0 dimension needs opset 14".into()));
                    }
                    vec![a_int("allowzero", 1)]
                } else {
                    vec![]
                };
                self.node("Reshape", &name, vec![inputs[0].clone(), s], vec![out], attrs);
            }
            Op::Transpose { perm } => simple(self, "Transpose", vec![a_usizes("perm", perm)]),
            Op::Concat { axis } => simple(self, "Concat", vec![a_int("axis", *axis as i64)]),
            Op::Split { axis, sizes } => {
                let s = self.init_i64(&format!("{name}_split"), &[sizes.len()], &dims(sizes));
                self.node("Split", &name, vec![inputs[0].clone(), s], outs.to_vec(), vec![a_int("axis", *axis as i64)]);
            }
            Op::Slice { starts, steps, sizes } => {
                let rank = x_shape.len();
                let (mut s, mut e, mut a, mut t) = (vec![], vec![], vec![], vec![]);
                for k in 0..rank {
                    let (first, step, count, dim) = (starts[k] as i64, steps[k] as i64, sizes[k] as i64, x_shape[k] as i64);
                    if first == 0 && step == 1 && count == dim {
                        continue;
                    }
                    let end = if count == 0 {
                        first
                    } else if step > 0 {
                        first + step * (count - 1) + 1
                    } else {
                        // One past the last index going down; below 0 means "before the start".
                        let end = first + step * (count - 1) - 1;
                        if end < 0 {
                            -dim - 1
                        } else {
                            end
                        }
                    };
                    s.push(first);
                    e.push(end);
                    a.push(k as i64);
                    t.push(step);
                }
                let n = a.len();
                let ins = vec![
                    inputs[0].clone(),
                    self.init_i64(&format!("{name}_starts"), &[n], &s),
                    self.init_i64(&format!("{name}_ends"), &[n], &e),
                    self.init_i64(&format!("{name}_axes"), &[n], &a),
                    self.init_i64(&format!("{name}_steps"), &[n], &t),
                ];
                self.node("Slice", &name, ins, vec![out], vec![]);
            }
            Op::Pad { begin, end, mode } => {
                let pads: Vec<i64> = begin.iter().chain(end).map(|&p| p as i64).collect();
                let mut ins = vec![inputs[0].clone(), self.init_i64(&format!("{name}_pads"), &[pads.len()], &pads)];
                let mode = match mode {
                    PadMode::Constant(v) => {
                        ins.push(self.init_f32(&format!("{name}_value"), &[], &[*v]));
                        "constant"
                    }
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                };
                self.node("Pad", &name, ins, vec![out], vec![a_str("mode", mode)]);
            }
            Op::Resize { mode, coord, nearest, shape, scales } => {
                let mut ins = vec![inputs[0].clone(), String::new()];
                match scales {
                    Some(s) => ins.push(self.init_f32(&format!("{name}_scales"), &[s.len()], s)),
                    None => {
                        ins.push(String::new());
                        ins.push(self.init_i64(&format!("{name}_sizes"), &[shape.len()], &dims(shape)));
                    }
                }
                let coord = match coord {
                    CoordTransform::HalfPixel => "half_pixel",
                    CoordTransform::PytorchHalfPixel => "pytorch_half_pixel",
                    CoordTransform::AlignCorners => "align_corners",
                    CoordTransform::Asymmetric => "asymmetric",
                    CoordTransform::TfHalfPixelForNn => {
                        if self.opset >= 18 {
                            return Err(unsupported("tf_half_pixel_for_nn was removed from Resize in opset 18".into()));
                        }
                        "tf_half_pixel_for_nn"
                    }
                };
                let nearest = match nearest {
                    NearestMode::RoundPreferFloor => "round_prefer_floor",
                    NearestMode::RoundPreferCeil => "round_prefer_ceil",
                    NearestMode::Floor => "floor",
                    NearestMode::Ceil => "ceil",
                };
                let mode = match mode {
                    ResizeMode::Nearest => "nearest",
                    ResizeMode::Linear => "linear",
                };
                let attrs = vec![a_str("mode", mode), a_str("coordinate_transformation_mode", coord), a_str("nearest_mode", nearest)];
                self.node("Resize", &name, ins, vec![out], attrs);
            }
            Op::Gather { axis, indices, indices_shape } => {
                let idx = self.init_i64(&format!("{name}_indices"), indices_shape, indices);
                self.node("Gather", &name, vec![inputs[0].clone(), idx], vec![out], vec![a_int("axis", *axis as i64)]);
            }
        }
        Ok(())
    }
}

/// The axis of a bias of `shape` holding `channels` values along one dimension (all others 1).
fn bias_axis(shape: &[usize], channels: usize) -> Option<usize> {
    let axis = shape.iter().rposition(|&d| d == channels)?;
    shape.iter().enumerate().all(|(a, &d)| a == axis || d == 1).then_some(axis)
}

/// The int8 integers of a weight annotated `Quant::Weight`, checked against its range.
fn weight_integers(data: &[f32], shape: &[usize], p: &ChannelParams) -> std::result::Result<Vec<i64>, String> {
    crate::quant::params::check_bits(p.bits).map_err(|e| e.to_string())?;
    if let Some(bad) = p.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(format!("scale {bad} is not a finite positive number"));
    }
    let qmax = p.qmax() as i64;
    let axis = (!p.is_per_tensor()).then_some(p.axis);
    integers(data, shape, &p.scales, axis, 0, (-qmax, qmax))
}

/// kernel_shape, strides, pads and (when `dilations`) dilations of a 2-D window.
fn window_attrs(w: &Window2d, dilations: bool) -> Vec<AttributeProto> {
    let mut attrs = vec![a_usizes("kernel_shape", &w.kernel), a_usizes("strides", &w.strides), a_usizes("pads", &w.pads)];
    if dilations {
        attrs.push(a_usizes("dilations", &w.dilations));
    }
    attrs
}

/// True when the integer range of `p` is narrower than its storage type's (which
/// QuantizeLinear saturates to): export then writes a range Clip before the QuantizeLinear.
pub fn needs_range_clip(p: &QuantParams) -> bool {
    let storage = if p.signed { (-128, 127) } else { (0, 255) };
    (p.qmin(), p.qmax()) != storage
}
