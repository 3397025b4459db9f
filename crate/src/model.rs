//! A loaded model: import, the FP32 engine, and the summary the page and
//! `inspect` show. The entry point for the wasm API and the CLI.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::{Fp32Engine, Int8Engine};
use crate::onnx::{self, ImportOptions, InputInfo, ModelMeta};
use crate::preprocess::Preprocess;
use crate::{Error, Result};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// The output's quantization, when the model is quantized and the output is too (its
    /// scale is the output's quantization step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quant: Option<crate::quant::Quant>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    pub name: String,
    pub op: String,
    pub weight_shape: Vec<usize>,
    pub params: usize,
}

/// What a user sees of a model before doing anything with it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    pub producer: String,
    pub opset: i64,
    pub file_bytes: usize,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<TensorInfo>,
    /// ONNX op type -> count, as in the file.
    pub onnx_ops: BTreeMap<String, usize>,
    /// IR op -> count after folding and fusion (what runs).
    pub ops: Vec<(String, usize)>,
    pub parameters: usize,
    /// Layers with weights: what PTQ quantizes.
    pub quantizable: Vec<LayerInfo>,
    /// Ops that have no quantized form and run in float between quantized layers (their
    /// inputs dequantized); see `quant::plan`.
    pub float_ops: Vec<String>,
    /// True when values carry quantization (a QDQ file, or a PTQ result).
    pub quantized: bool,
    /// A quantized model's rounding convention (`fp32`: onnxruntime's, `fixed-point`: TFLite's).
    pub requantization: Option<&'static str>,
    /// A quantized model's fusion (`integer`: every node with an integer form runs with integer
    /// kernels; `onnxruntime`: those onnxruntime fuses, for a foreign QDQ file).
    pub fusion: Option<&'static str>,
    /// Nodes of a quantized model that the int8 engine runs in float, and why.
    pub int8_float: Vec<FloatNode>,
    pub ignored_domains: Vec<String>,
    /// A preprocessing guess for the first input, if it looks like an image.
    pub preprocess: Option<Preprocess>,
}

/// A node the int8 engine runs in float (dequantize, float kernel, quantize).
#[derive(Clone, Debug, Serialize)]
pub struct FloatNode {
    pub node: String,
    pub op: String,
    pub reason: String,
}

pub struct Model {
    /// The FP32 engine; on a quantized model (a QDQ file) the fake-quantized simulation.
    pub engine: Fp32Engine,
    /// The int8 engine of a quantized model: what `run` uses for it.
    pub int8: Option<Int8Engine>,
    pub meta: ModelMeta,
    pub onnx_ops: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// ONNX op histogram straight from the file (works even when import fails).
pub fn onnx_op_histogram(bytes: &[u8], max_bytes: usize) -> Result<BTreeMap<String, usize>> {
    let model = onnx::parse(bytes, max_bytes)?;
    let mut hist = BTreeMap::new();
    for node in &model.graph.expect("checked by parse").node {
        let op = if node.domain.is_empty() || node.domain == "ai.onnx" { node.op_type.clone() } else { format!("{}::{}", node.domain, node.op_type) };
        *hist.entry(op).or_default() += 1;
    }
    Ok(hist)
}

impl Model {
    pub fn load(bytes: &[u8], options: &ImportOptions) -> Result<Model> {
        let onnx_ops = onnx_op_histogram(bytes, options.max_bytes)?;
        let imported = onnx::import(bytes, options)?;
        let quantized = imported.graph.values.iter().any(|v| v.quant.is_some());
        let int8 = if quantized { Some(Int8Engine::new(imported.graph.clone())?) } else { None };
        Ok(Model { engine: Fp32Engine::new(imported.graph), int8, meta: imported.meta, onnx_ops })
    }

    pub fn summary(&self) -> ModelSummary {
        let g = self.engine.graph();
        let quantizable = g
            .nodes
            .iter()
            .filter(|n| n.op.has_weights() && n.inputs.get(1).is_some_and(|&w| g.values[w].is_const()))
            .map(|n| {
                let w = &g.values[n.inputs[1]];
                LayerInfo { name: n.name.clone(), op: n.op.name().to_string(), weight_shape: w.shape.clone(), params: w.len() }
            })
            .collect();
        let mut float_ops: Vec<String> = g
            .nodes
            .iter()
            .filter(|n| crate::quant::plan::role(&n.op) == crate::quant::plan::Role::Float)
            .map(|n| n.op.name().to_string())
            .collect();
        float_ops.sort();
        float_ops.dedup();
        ModelSummary {
            producer: self.meta.producer.clone(),
            opset: self.meta.opset,
            file_bytes: self.meta.file_bytes,
            inputs: self.meta.inputs.clone(),
            outputs: g
                .outputs
                .iter()
                .map(|&o| TensorInfo { name: g.values[o].name.clone(), shape: g.values[o].shape.clone(), quant: g.values[o].quant.clone() })
                .collect(),
            onnx_ops: self.onnx_ops.clone(),
            ops: g.op_histogram(),
            parameters: g.parameter_count(),
            quantizable,
            float_ops,
            quantized: self.is_quantized(),
            requantization: self.is_quantized().then(|| g.requantization.name()),
            fusion: self.is_quantized().then(|| g.fusion.name()),
            int8_float: self
                .int8
                .iter()
                .flat_map(|e| e.float_nodes())
                .map(|(node, op, reason)| FloatNode { node, op, reason })
                .collect(),
            ignored_domains: self.meta.ignored_domains.clone(),
            preprocess: self.meta.inputs.first().and_then(|i| Preprocess::guess(&i.shape)),
        }
    }

    /// True when the model's graph carries quantization (loaded from a QDQ file, or made by
    /// PTQ): the FP32 engine then simulates it.
    pub fn is_quantized(&self) -> bool {
        self.engine.graph().values.iter().any(|v| v.quant.is_some())
    }

    /// [`run`](Self::run) reporting every value computed (dequantized on the int8 engine).
    pub fn run_observed(&self, inputs: &[&[f32]], observe: &mut dyn FnMut(crate::ir::ValueId, &[f32])) -> Result<Vec<Vec<f32>>> {
        match &self.int8 {
            Some(int8) => int8.run_observed(inputs, observe),
            None => self.engine.run_observed(inputs, observe),
        }
    }

    pub fn input_names(&self) -> Vec<String> {
        self.meta.inputs.iter().map(|i| i.name.clone()).collect()
    }

    /// Runs on named inputs (any order; every input must be given).
    pub fn run_named(&self, inputs: &[(String, Vec<f32>)]) -> Result<Vec<Output>> {
        let g = self.engine.graph();
        let mut ordered: Vec<&[f32]> = Vec::with_capacity(g.inputs.len());
        for &id in &g.inputs {
            let name = &g.values[id].name;
            let data = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.as_slice())
                .ok_or_else(|| Error::Input { name: name.clone(), msg: "was not given".into() })?;
            ordered.push(data);
        }
        if let Some((extra, _)) = inputs.iter().find(|(n, _)| !g.inputs.iter().any(|&id| &g.values[id].name == n)) {
            return Err(Error::Input { name: extra.clone(), msg: format!("the model has no such input (inputs: {})", self.input_names().join(", ")) });
        }
        self.run(&ordered)
    }

    /// Runs the model: the int8 engine for a quantized model, else the FP32 engine.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Output>> {
        let g = self.engine.graph();
        let results = match &self.int8 {
            Some(int8) => int8.run(inputs)?,
            None => self.engine.run(inputs)?,
        };
        Ok(g.outputs
            .iter()
            .zip(results)
            .map(|(&o, data)| Output { name: g.values[o].name.clone(), shape: g.values[o].shape.clone(), data })
            .collect())
    }
}
