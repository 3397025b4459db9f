//! Typed access to ONNX node attributes with errors that name the node.

use tract_onnx::pb::{AttributeProto, NodeProto};

use super::tensor::{decode, ConstTensor};
use crate::{Error, Result};

pub struct Attrs<'a> {
    node: &'a NodeProto,
    name: &'a str,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto, name: &'a str) -> Attrs<'a> {
        Attrs { node, name }
    }

    fn get(&self, key: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == key)
    }

    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::node(self.name, &self.node.op_type, msg)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn int(&self, key: &str, default: i64) -> i64 {
        self.get(key).map_or(default, |a| a.i)
    }

    pub fn float(&self, key: &str, default: f32) -> f32 {
        self.get(key).map_or(default, |a| a.f)
    }

    pub fn ints(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key).map(|a| a.ints.clone())
    }

    pub fn floats(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key).map(|a| a.floats.clone())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn tensor(&self, key: &str) -> Result<Option<ConstTensor>> {
        self.get(key)
            .and_then(|a| a.t.as_ref())
            .map(|t| decode(t, &format!("{} attribute '{key}'", self.name)))
            .transpose()
    }

    /// A list of non-negative sizes (kernel_shape, strides ...).
    pub fn sizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.ints(key)
            .map(|v| {
                v.iter()
                    .map(|&x| usize::try_from(x).map_err(|_| self.error(format!("attribute '{key}' has a negative value: {v:?}"))))
                    .collect()
            })
            .transpose()
    }
}

/// Makes an axis in `-rank..rank` non-negative.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}
