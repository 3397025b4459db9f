//! A small builder of ONNX models in memory (the prost types tract-onnx
//! exposes), for op-conformance tests: each test writes the few nodes it
//! needs, encodes them and runs the bytes through our importer and tract.
#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension::Value as DimValue, tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

/// A graph under construction; `build` encodes it as a model at one opset.
#[derive(Clone)]
pub struct OnnxBuilder {
    opset: i64,
    graph: GraphProto,
    extra_opsets: Vec<(String, i64)>,
    counter: usize,
}

fn value_info(name: &str, shape: Option<&[usize]>) -> ValueInfoProto {
    let shape =
        shape.map(|s| TensorShapeProto { dim: s.iter().map(|&d| Dimension { value: Some(DimValue::DimValue(d as i64)), ..Default::default() }).collect() });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: FLOAT, shape })), ..Default::default() }),
        ..Default::default()
    }
}

pub fn tensor_f32(shape: &[usize], data: &[f32]) -> TensorProto {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
    TensorProto { dims: shape.iter().map(|&d| d as i64).collect(), data_type: FLOAT, float_data: data.to_vec(), ..Default::default() }
}

pub fn tensor_i64(shape: &[usize], data: &[i64]) -> TensorProto {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
    TensorProto { dims: shape.iter().map(|&d| d as i64).collect(), data_type: INT64, int64_data: data.to_vec(), ..Default::default() }
}

// Attributes.
pub fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}
pub fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}
pub fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
}
pub fn a_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Floats as i32, floats: v.to_vec(), ..Default::default() }
}
pub fn a_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::String as i32, s: v.as_bytes().to_vec(), ..Default::default() }
}
pub fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
}

impl OnnxBuilder {
    pub fn new(opset: i64) -> OnnxBuilder {
        OnnxBuilder { opset, graph: GraphProto { name: "test".into(), ..Default::default() }, extra_opsets: vec![], counter: 0 }
    }

    /// Also imports `domain` (for custom-op tests).
    pub fn import_domain(&mut self, domain: &str, version: i64) -> &mut Self {
        self.extra_opsets.push((domain.into(), version));
        self
    }

    /// A float32 graph input with a fixed shape.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.graph.input.push(value_info(name, Some(shape)));
        name.into()
    }

    /// A graph output (type float32, shape left for the importers to infer).
    pub fn output(&mut self, name: &str) -> &mut Self {
        self.graph.output.push(value_info(name, None));
        self
    }

    pub fn init_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let mut t = tensor_f32(shape, data);
        t.name = name.into();
        self.graph.initializer.push(t);
        name.into()
    }

    pub fn init_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        let mut t = tensor_i64(shape, data);
        t.name = name.into();
        self.graph.initializer.push(t);
        name.into()
    }

    /// A node with explicit output names; the node is named `<op>_<k>`.
    pub fn node_out(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> Vec<String> {
        self.counter += 1;
        self.graph.node.push(NodeProto {
            name: format!("{}_{}", op.to_lowercase(), self.counter),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        outputs.iter().map(|s| s.to_string()).collect()
    }

    /// A node with one output named after it; returns the output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("{}_{}_out", op.to_lowercase(), self.counter + 1);
        self.node_out(op, inputs, &[&out], attrs).remove(0)
    }

    /// Replaces the graph outputs (e.g. to run a prefix of the graph).
    pub fn set_outputs(&mut self, names: &[&str]) -> &mut Self {
        self.graph.output = names.iter().map(|n| value_info(n, None)).collect();
        self
    }

    /// The float data of an initializer.
    pub fn initializer(&self, name: &str) -> Vec<f32> {
        self.graph.initializer.iter().find(|t| t.name == name).expect("no such initializer").float_data.clone()
    }

    /// Direct access to the last node (to set a domain or name).
    pub fn last_node(&mut self) -> &mut NodeProto {
        self.graph.node.last_mut().expect("a node was added")
    }

    /// A Constant node holding a tensor (PaddlePaddle keeps weights this way).
    pub fn constant(&mut self, t: TensorProto) -> String {
        self.node("Constant", &[], vec![a_tensor("value", t)])
    }

    pub fn build(&self) -> Vec<u8> {
        let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: self.opset }];
        for (d, v) in &self.extra_opsets {
            opset_import.push(OperatorSetIdProto { domain: d.clone(), version: *v });
        }
        let model = ModelProto {
            ir_version: if self.opset >= 18 { 8 } else { 7 },
            opset_import,
            producer_name: "quant-playground op tests".into(),
            graph: Some(self.graph.clone()),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// Deterministic xorshift64* numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// tract's execution with several inputs (`common::tract_run` takes one).
pub fn tract_run_inputs(bytes: &[u8], inputs: &[(&[usize], &[f32])]) -> Vec<Vec<f32>> {
    let onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_output_types(true).with_ignore_value_info(true);
    let mut model = onnx.model_for_read(&mut &bytes[..]).expect("tract parses");
    for (i, (shape, _)) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(*shape).into()).unwrap();
    }
    let model = model.into_optimized().unwrap().into_runnable().unwrap();
    let xs: TVec<TValue> = inputs.iter().map(|(s, d)| Tensor::from_shape(s, d).unwrap().into()).collect();
    let outs = model.run(xs).unwrap();
    outs.iter().map(|t| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}
