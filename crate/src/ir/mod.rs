//! The intermediate representation every numeric mode runs on.
//!
//! A [`Graph`] is a DAG of [`Node`]s in topological order over [`Value`]s with
//! static shapes; weights are constant values. The same graph is executed
//! three ways: in FP32 (`engine::fp32`), fake-quantized with gradients (QAT),
//! and in int8. Ops keep ONNX semantics and the model's own layout (NCHW or
//! NHWC), so export can write them back as ONNX.

mod op;
pub mod passes;
mod shape;

use std::collections::HashMap;
use std::sync::Arc;

pub use op::*;
pub use shape::infer_shapes;

pub use crate::kernels::int8::Requantization;
pub use crate::quant::Quant;
use crate::{Error, Result};

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// A tensor of the graph: an activation or, when `data` is set, a constant.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Option<Arc<Vec<f32>>>,
    /// How the value is quantized, if it is (see [`Quant`]). Set by PTQ and by QDQ import;
    /// the FP32 engine then simulates it, the int8 engine runs it, export writes it.
    pub quant: Option<Quant>,
}

impl Value {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_const(&self) -> bool {
        self.data.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The ONNX node name (or a name made from its first output when the model has none).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// How the int8 forms of this graph's quantized nodes round (the int8 engine, the
    /// simulation, QAT): set by PTQ from its config, read from an imported model's metadata.
    pub requantization: Requantization,
    /// Which quantized nodes run with integer kernels: all of them, or those onnxruntime fuses
    /// (a foreign QDQ file); read from an imported model's metadata.
    pub fusion: Fusion,
}

/// Which of a quantized graph's nodes the int8 engine (and the simulation) runs with integer
/// kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fusion {
    /// Every node that has an integer form: graphs from PTQ and QAT, and our exports.
    #[default]
    Integer,
    /// The node units onnxruntime's CPU execution provider leaves unfused on x86 and
    /// WebAssembly run in float as it runs them, a Conv in its summation order
    /// (`engine::ort_fusion`, `kernels::conv_mlas`): foreign QDQ files, so that the int8 engine
    /// computes onnxruntime's integers.
    Onnxruntime,
}

impl Fusion {
    pub fn name(self) -> &'static str {
        match self {
            Fusion::Integer => "integer",
            Fusion::Onnxruntime => "onnxruntime",
        }
    }

    pub fn parse(s: &str) -> Option<Fusion> {
        [Fusion::Integer, Fusion::Onnxruntime].into_iter().find(|f| f.name() == s)
    }
}

impl Graph {
    pub fn add_value(&mut self, name: impl Into<String>, shape: Vec<usize>) -> ValueId {
        self.values.push(Value { name: name.into(), shape, data: None, quant: None });
        self.values.len() - 1
    }

    pub fn add_const(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> ValueId {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.values.push(Value { name: name.into(), shape, data: Some(Arc::new(data)), quant: None });
        self.values.len() - 1
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id]
    }

    /// The constant data of a value, if it is a constant.
    pub fn const_data(&self, id: ValueId) -> Option<&[f32]> {
        self.values[id].data.as_deref().map(|v| v.as_slice())
    }

    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// For each value, the nodes that read it (in node order).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut consumers = vec![Vec::new(); self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                if !consumers[i].contains(&n) {
                    consumers[i].push(n);
                }
            }
        }
        consumers
    }

    /// For each value, the node that writes it (None for inputs and constants).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut producers = vec![None; self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            for &o in &node.outputs {
                producers[o] = Some(n);
            }
        }
        producers
    }

    /// Number of weights (elements of constant values that nodes read).
    pub fn parameter_count(&self) -> usize {
        let mut seen = vec![false; self.values.len()];
        let mut count = 0;
        for node in &self.nodes {
            for &i in &node.inputs {
                if self.values[i].is_const() && !seen[i] {
                    seen[i] = true;
                    count += self.values[i].len();
                }
            }
        }
        count
    }

    /// Multiply-accumulates of node `n` on its input shapes: those of a convolution or of a
    /// Gemm/MatMul (each output, or for ConvTranspose each input, times the weights it meets);
    /// 0 for every other op.
    pub fn node_macs(&self, n: usize) -> u64 {
        let node = &self.nodes[n];
        let numel = |v: ValueId| self.values[v].len() as u64;
        let shape = |v: ValueId| &self.values[v].shape;
        let per = |v: ValueId, axis: usize| {
            let s = shape(v);
            s.get(axis).filter(|&&d| d > 0).map_or(0, |&d| numel(v) / d as u64)
        };
        match (&node.op, node.inputs.get(1)) {
            // Weights [Cout, Cin/group, kh, kw]: each output meets Cin/group·kh·kw of them.
            (Op::Conv(_), Some(&w)) => numel(node.outputs[0]) * per(w, 0),
            // Weights [Cin, Cout/group, kh, kw]: each input is spread over Cout/group·kh·kw.
            (Op::ConvTranspose(_), Some(&w)) => numel(node.inputs[0]) * per(w, 0),
            (Op::Gemm { .. } | Op::MatMul, Some(_)) => {
                let a = shape(node.inputs[0]);
                let k = match &node.op {
                    Op::Gemm { trans_a: true, .. } => a.first(),
                    _ => a.last(),
                };
                numel(node.outputs[0]) * k.copied().unwrap_or(1) as u64
            }
            _ => 0,
        }
    }

    /// Op type name -> number of nodes, in a stable order.
    pub fn op_histogram(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for node in &self.nodes {
            *counts.entry(node.op.name()).or_default() += 1;
        }
        let mut hist: Vec<(String, usize)> = counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        hist.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hist
    }

    /// Removes nodes whose outputs nobody reads and values nobody uses,
    /// renumbering values. Keeps graph inputs even when unused.
    pub fn prune(&mut self) {
        let mut live = vec![false; self.values.len()];
        for &o in &self.outputs {
            live[o] = true;
        }
        for &i in &self.inputs {
            live[i] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (n, node) in self.nodes.iter().enumerate().rev() {
            if node.outputs.iter().any(|&o| live[o]) {
                keep[n] = true;
                for &i in &node.inputs {
                    live[i] = true;
                }
                for &o in &node.outputs {
                    live[o] = true;
                }
            }
        }
        let mut remap = vec![usize::MAX; self.values.len()];
        let mut values = Vec::new();
        for (id, value) in self.values.drain(..).enumerate() {
            if live[id] {
                remap[id] = values.len();
                values.push(value);
            }
        }
        self.values = values;
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = nodes
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(mut node, _)| {
                node.inputs.iter_mut().for_each(|i| *i = remap[*i]);
                node.outputs.iter_mut().for_each(|o| *o = remap[*o]);
                node
            })
            .collect();
        self.inputs.iter_mut().for_each(|i| *i = remap[*i]);
        self.outputs.iter_mut().for_each(|o| *o = remap[*o]);
    }

    /// Checks the invariants every executor relies on: topological order,
    /// each value written once, shapes consistent with the ops.
    pub fn validate(&self) -> Result<()> {
        let mut defined = vec![false; self.values.len()];
        for &i in &self.inputs {
            defined[i] = true;
        }
        for (id, v) in self.values.iter().enumerate() {
            if v.is_const() {
                defined[id] = true;
            }
        }
        for node in &self.nodes {
            for &i in &node.inputs {
                if !defined[i] {
                    return Err(Error::node(&node.name, node.op.name(), format!("reads '{}' before it is computed", self.values[i].name)));
                }
            }
            let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&i| self.values[i].shape.as_slice()).collect();
            let out_shapes = infer_shapes(&node.op, &in_shapes).map_err(|msg| Error::node(&node.name, node.op.name(), msg))?;
            for (&o, shape) in node.outputs.iter().zip(&out_shapes) {
                if defined[o] {
                    return Err(Error::node(&node.name, node.op.name(), format!("writes '{}' a second time", self.values[o].name)));
                }
                if &self.values[o].shape != shape {
                    return Err(Error::node(
                        &node.name,
                        node.op.name(),
                        format!("output '{}' has shape {:?}, the op gives {:?}", self.values[o].name, self.values[o].shape, shape),
                    ));
                }
                defined[o] = true;
            }
        }
        for &o in &self.outputs {
            if !defined[o] {
                return Err(Error::Invalid(format!("graph output '{}' is never computed", self.values[o].name)));
            }
        }
        Ok(())
    }
}
