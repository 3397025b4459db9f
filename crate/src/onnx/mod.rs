//! ONNX import: bytes -> [`Imported`] (an IR graph plus what the user should
//! know about it), QDQ files included (`qdq`: QuantizeLinear/DequantizeLinear become the
//! graph's quantization annotation); and export: an IR graph -> a standard ONNX model,
//! QDQ where the graph is quantized ([`export`]).
//!
//! tract-onnx's protobuf types parse the file; we lower ONNX nodes directly
//! into our IR rather than lowering tract's decluttered graph, because
//! declutter rewrites ops into tract internals (EinSum, Max+Min, MoveAxis)
//! that lose the ONNX structure quantization works on and export writes back,
//! and because leaving tract's op registry out keeps the wasm small. tract's
//! own typed execution stays the FP32 oracle in tests.

mod attrs;
pub mod export;
mod fold;
mod lower;
mod qdq;
pub mod tensor;

use std::collections::HashMap;

use prost::Message;
use serde::Serialize;
use tract_onnx::pb::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto, ValueInfoProto};

pub use export::{export, ExportOptions, DEFAULT_EXPORT_OPSET};
pub use lower::SUPPORTED_OPS;
use lower::{node_label, Lowered, Lowering};

use crate::ir::{passes, Graph};
use crate::{Error, Result};

/// Default upper bound of a model file: a tab holds the model several times
/// over (bytes, IR, packed weights, quantized copies).
pub const DEFAULT_MAX_MODEL_BYTES: usize = 512 << 20;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Shapes chosen by the caller for inputs with dynamic or any dims.
    pub input_shapes: HashMap<String, Vec<usize>>,
    pub max_bytes: usize,
    /// The graph's [`Fusion`](crate::ir::Fusion) whatever the file says (by default: what our
    /// export recorded, else onnxruntime's).
    pub fusion: Option<crate::ir::Fusion>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { input_shapes: HashMap::new(), max_bytes: DEFAULT_MAX_MODEL_BYTES, fusion: None }
    }
}

/// One dimension as the file declares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DeclaredDim {
    Fixed(usize),
    Symbolic(String),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputInfo {
    pub name: String,
    pub declared: Vec<DeclaredDim>,
    /// The static shape used.
    pub shape: Vec<usize>,
    /// How the dynamic dims were fixed, for the user to see ("batch = 1 (default)").
    pub choices: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelMeta {
    pub producer: String,
    pub opset: i64,
    pub file_bytes: usize,
    pub inputs: Vec<InputInfo>,
    /// Opset domains the file imports but no node uses (ignored).
    pub ignored_domains: Vec<String>,
}

pub struct Imported {
    pub graph: Graph,
    pub meta: ModelMeta,
}

/// Parses ONNX bytes into the protobuf model.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<ModelProto> {
    if bytes.len() > max_bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    if bytes.is_empty() {
        return Err(Error::NotOnnx("the file is empty".into()));
    }
    let model = ModelProto::decode(bytes).map_err(|e| Error::NotOnnx(format!("protobuf decoding failed ({e}); truncated or not an .onnx file?")))?;
    if model.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(Error::NotOnnx("the file holds no graph nodes".into()));
    }
    Ok(model)
}

fn declared_dims(vi: &ValueInfoProto) -> Option<Vec<DeclaredDim>> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(v)) if *v > 0 => DeclaredDim::Fixed(*v as usize),
                Some(DimValue::DimParam(p)) if !p.is_empty() => DeclaredDim::Symbolic(p.clone()),
                _ => DeclaredDim::Symbolic("?".into()),
            })
            .collect(),
    )
}

fn elem_type(vi: &ValueInfoProto) -> Option<i32> {
    let type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    Some(t.elem_type)
}

/// Fixes the shape of an input: the caller's choice, else the declared dims
/// with a default for each dynamic one (batch 1, spatial 224).
fn choose_shape(name: &str, declared: &[DeclaredDim], chosen: Option<&Vec<usize>>) -> Result<(Vec<usize>, Vec<String>)> {
    if let Some(shape) = chosen {
        if shape.len() != declared.len() && !declared.is_empty() {
            return Err(Error::Input { name: name.into(), msg: format!("shape {shape:?} has rank {}, the model declares rank {}", shape.len(), declared.len()) });
        }
        for (a, (d, &s)) in declared.iter().zip(shape).enumerate() {
            if let DeclaredDim::Fixed(f) = d {
                if *f != s {
                    return Err(Error::Input { name: name.into(), msg: format!("dimension {a} is fixed to {f} by the model, {s} was asked") });
                }
            }
        }
        if shape.contains(&0) {
            return Err(Error::Input { name: name.into(), msg: format!("shape {shape:?} has a zero dimension") });
        }
        let choices = declared
            .iter()
            .zip(shape)
            .enumerate()
            .filter_map(|(a, (d, s))| match d {
                DeclaredDim::Symbolic(p) if p == "?" => Some(format!("dim {a} = {s}")),
                DeclaredDim::Symbolic(p) => Some(format!("{p} = {s}")),
                DeclaredDim::Fixed(_) => None,
            })
            .collect();
        return Ok((shape.clone(), choices));
    }
    let rank = declared.len();
    // An image-like input: rank 4 with 1 or 3 channels first (NCHW) or last (NHWC).
    let nhwc = rank == 4 && matches!(declared[3], DeclaredDim::Fixed(1 | 3)) && !matches!(declared[1], DeclaredDim::Fixed(1 | 3));
    let mut choices = Vec::new();
    let mut shape = Vec::with_capacity(rank);
    for (a, d) in declared.iter().enumerate() {
        shape.push(match d {
            DeclaredDim::Fixed(v) => *v,
            DeclaredDim::Symbolic(p) => {
                let spatial = rank == 4 && if nhwc { a == 1 || a == 2 } else { a >= 2 };
                let v = if a == 0 {
                    1
                } else if spatial {
                    224
                } else {
                    return Err(Error::Input {
                        name: name.into(),
                        msg: format!("dimension {a} ('{p}') is dynamic and has no sensible default; choose the input shape"),
                    });
                };
                let label = if p == "?" { format!("dim {a}") } else { p.clone() };
                choices.push(format!("{label} = {v} (default)"));
                v
            }
        });
    }
    Ok((shape, choices))
}

/// Imports ONNX bytes into the IR.
pub fn import(bytes: &[u8], options: &ImportOptions) -> Result<Imported> {
    let model = parse(bytes, options.max_bytes)?;
    let graph = model.graph.as_ref().expect("checked by parse");
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| Error::NotOnnx("no default-domain opset is imported".into()))?;

    // Every unsupported op at once, before anything is lowered.
    let mut unsupported: Vec<String> = Vec::new();
    for node in &graph.node {
        let known_domain = node.domain.is_empty() || node.domain == "ai.onnx";
        if !known_domain || !SUPPORTED_OPS.contains(&node.op_type.as_str()) {
            let op = if known_domain { node.op_type.clone() } else { format!("{}::{}", node.domain, node.op_type) };
            unsupported.push(format!("{op} (node '{}')", node_label(node)));
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    let used_domains: Vec<&str> = graph.node.iter().map(|n| n.domain.as_str()).collect();
    let ignored_domains = model
        .opset_import
        .iter()
        .filter(|o| !o.domain.is_empty() && o.domain != "ai.onnx" && !used_domains.contains(&o.domain.as_str()))
        .map(|o| o.domain.clone())
        .collect();

    let mut lowering = Lowering::new(opset);
    lowering.qdq = qdq::QdqImport::new(&model);
    for init in &graph.initializer {
        let t = tensor::decode(init, &init.name)?;
        lowering.env.insert(init.name.clone(), Lowered::Const(t));
    }
    let mut inputs = Vec::new();
    for vi in &graph.input {
        if lowering.env.contains_key(&vi.name) {
            continue; // an initializer listed as input (IR version < 4)
        }
        if let Some(t) = elem_type(vi) {
            if t != 1 {
                return Err(Error::Input {
                    name: vi.name.clone(),
                    msg: format!("has element type {}; only float32 inputs are supported", tensor::elem_type_name(t)),
                });
            }
        }
        let declared = declared_dims(vi)
            .ok_or_else(|| Error::Input { name: vi.name.clone(), msg: "declares no tensor shape; choose the input shape".into() })?;
        let (shape, choices) = choose_shape(&vi.name, &declared, options.input_shapes.get(&vi.name))?;
        let id = lowering.graph.add_value(vi.name.clone(), shape.clone());
        lowering.graph.inputs.push(id);
        lowering.env.insert(vi.name.clone(), Lowered::Value(id));
        inputs.push(InputInfo { name: vi.name.clone(), declared, shape, choices });
    }
    if let Some(unknown) = options.input_shapes.keys().find(|k| !inputs.iter().any(|i| &i.name == *k)) {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::Input { name: unknown.clone(), msg: format!("the model has no such input (inputs: {})", names.join(", ")) });
    }

    for node in &graph.node {
        lowering.lower(node)?;
    }
    for vi in &graph.output {
        if lowering.qdq.is_pending(&vi.name) {
            return Err(Error::Invalid(format!("graph output '{}' is the integer output of a QuantizeLinear; only float outputs are supported", vi.name)));
        }
        match lowering.env.get(&vi.name).cloned() {
            Some(Lowered::Value(id)) => {
                let id = if lowering.graph.outputs.contains(&id) || lowering.graph.inputs.contains(&id) {
                    // The same value named twice, or an input passed through: a copy keeps names distinct.
                    let shape = lowering.graph.values[id].shape.clone();
                    let copy = lowering.graph.add_value(vi.name.clone(), shape.clone());
                    lowering.graph.nodes.push(crate::ir::Node {
                        name: vi.name.clone(),
                        op: crate::ir::Op::Reshape { shape },
                        inputs: vec![id],
                        outputs: vec![copy],
                    });
                    copy
                } else {
                    lowering.graph.values[id].name = vi.name.clone();
                    id
                };
                lowering.graph.outputs.push(id);
            }
            Some(Lowered::Const(t)) => {
                let id = lowering.graph.add_const(vi.name.clone(), t.shape.clone(), t.to_f32());
                lowering.graph.outputs.push(id);
            }
            None => return Err(Error::Invalid(format!("graph output '{}' is not produced by any node", vi.name))),
        }
    }
    let mut ir = lowering.graph;
    ir.requantization = requantization(&model)?;
    ir.fusion = match options.fusion {
        Some(f) => f,
        None => fusion(&model)?,
    };
    lowering.qdq.finish(&mut ir)?;
    passes::optimize(&mut ir)?;
    ir.validate()?;
    let meta = ModelMeta {
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        opset,
        file_bytes: bytes.len(),
        inputs,
        ignored_domains,
    };
    Ok(Imported { graph: ir, meta })
}

/// Which nodes the int8 engine fuses: what our exports record (`export::FUSION_KEY`), every one
/// for our exports that predate the key (they record their requantization), and those
/// onnxruntime fuses for any other file, so that a foreign QDQ file runs as onnxruntime runs it.
fn fusion(model: &ModelProto) -> Result<crate::ir::Fusion> {
    let entry = |key: &str| model.metadata_props.iter().find(|p| p.key == key);
    match entry(export::FUSION_KEY) {
        Some(p) => crate::ir::Fusion::parse(&p.value)
            .ok_or_else(|| Error::Invalid(format!("metadata {} is '{}', not 'integer' or 'onnxruntime'", p.key, p.value))),
        None if entry(export::REQUANTIZATION_KEY).is_some() => Ok(crate::ir::Fusion::Integer),
        None => Ok(crate::ir::Fusion::Onnxruntime),
    }
}

/// The requantization our exports record (`export::REQUANTIZATION_KEY`); onnxruntime's f32
/// convention for every other model.
fn requantization(model: &ModelProto) -> Result<crate::ir::Requantization> {
    match model.metadata_props.iter().find(|p| p.key == export::REQUANTIZATION_KEY) {
        None => Ok(crate::ir::Requantization::default()),
        Some(p) => crate::ir::Requantization::parse(&p.value).ok_or_else(|| {
            Error::Invalid(format!("metadata {} is '{}', not 'fp32' or 'fixed-point'", p.key, p.value))
        }),
    }
}
