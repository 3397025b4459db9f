//! Constant tensors of an ONNX file (initializers, Constant nodes, folded
//! subgraphs): float data as f32, integer and boolean data as i64 (shapes,
//! indices, axes and, later, quantized weights).

use tract_onnx::pb::{tensor_proto::DataType, TensorProto};

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConstTensor {
    pub shape: Vec<usize>,
    pub data: Data,
    /// The ONNX element type the data came from (`DataType as i32`), so that
    /// casts and quantized tensors keep their meaning.
    pub elem_type: i32,
}

impl ConstTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> ConstTensor {
        ConstTensor { shape, data: Data::F32(data), elem_type: DataType::Float as i32 }
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> ConstTensor {
        ConstTensor { shape, data: Data::I64(data), elem_type: DataType::Int64 as i32 }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_float(&self) -> bool {
        matches!(self.data, Data::F32(_))
    }

    /// The values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64; floats must be whole numbers.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::F32(v) => v.iter().map(|&x| (x.fract() == 0.0).then_some(x as i64)).collect(),
        }
    }
}

pub fn elem_type_name(t: i32) -> String {
    DataType::try_from(t).map(|d| d.as_str_name().to_lowercase()).unwrap_or_else(|_| format!("type {t}"))
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let value = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000,
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(value)
}

/// Decodes a TensorProto; `what` names it in errors.
pub fn decode(t: &TensorProto, what: &str) -> Result<ConstTensor> {
    let err = |msg: String| Error::Tensor { name: what.to_string(), msg };
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(err("weights are stored in an external file; save the model with its weights inside the .onnx file".into()));
    }
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension in {:?}", t.dims))))
        .collect::<Result<Vec<usize>>>()?;
    let n: usize = shape.iter().product();
    let dt = DataType::try_from(t.data_type).map_err(|_| err(format!("unknown element type {}", t.data_type)))?;
    let raw = &t.raw_data;
    let data = match dt {
        DataType::Float => Data::F32(if raw.is_empty() {
            t.float_data.clone()
        } else {
            le_chunks::<4>(raw).map(f32::from_le_bytes).collect()
        }),
        DataType::Double => Data::F32(if raw.is_empty() {
            t.double_data.iter().map(|&x| x as f32).collect()
        } else {
            le_chunks::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect()
        }),
        DataType::Float16 => Data::F32(if raw.is_empty() {
            t.int32_data.iter().map(|&x| f16_to_f32(x as u16)).collect()
        } else {
            le_chunks::<2>(raw).map(|b| f16_to_f32(u16::from_le_bytes(b))).collect()
        }),
        DataType::Bfloat16 => Data::F32(if raw.is_empty() {
            t.int32_data.iter().map(|&x| f32::from_bits((x as u32) << 16)).collect()
        } else {
            le_chunks::<2>(raw).map(|b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16)).collect()
        }),
        DataType::Int64 => Data::I64(if raw.is_empty() {
            t.int64_data.clone()
        } else {
            le_chunks::<8>(raw).map(i64::from_le_bytes).collect()
        }),
        DataType::Uint64 => Data::I64(if raw.is_empty() {
            t.uint64_data.iter().map(|&x| x as i64).collect()
        } else {
            le_chunks::<8>(raw).map(|b| u64::from_le_bytes(b) as i64).collect()
        }),
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint16 | DataType::Uint8 | DataType::Bool => {
            Data::I64(if raw.is_empty() {
                t.int32_data.iter().map(|&x| x as i64).collect()
            } else {
                match dt {
                    DataType::Int32 => le_chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect(),
                    DataType::Int16 => le_chunks::<2>(raw).map(|b| i16::from_le_bytes(b) as i64).collect(),
                    DataType::Uint16 => le_chunks::<2>(raw).map(|b| u16::from_le_bytes(b) as i64).collect(),
                    DataType::Int8 => raw.iter().map(|&b| b as i8 as i64).collect(),
                    _ => raw.iter().map(|&b| b as i64).collect(),
                }
            })
        }
        DataType::Uint32 => Data::I64(if raw.is_empty() {
            t.uint64_data.iter().map(|&x| x as i64).collect()
        } else {
            le_chunks::<4>(raw).map(|b| u32::from_le_bytes(b) as i64).collect()
        }),
        other => return Err(err(format!("element type {} is not supported", other.as_str_name().to_lowercase()))),
    };
    let tensor = ConstTensor { shape, data, elem_type: t.data_type };
    if tensor.len() != n {
        return Err(err(format!("holds {} values, its shape {:?} needs {n} (truncated file?)", tensor.len(), tensor.shape)));
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn half_floats_decode_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn raw_and_typed_fields_agree_and_truncation_is_named() {
        let mut t = TensorProto { dims: vec![2], data_type: DataType::Float as i32, ..Default::default() };
        t.raw_data = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
        assert_eq!(decode(&t, "w").unwrap().data, Data::F32(vec![1.5, -2.0]));
        t.raw_data.truncate(6);
        let msg = decode(&t, "w").unwrap_err().to_string();
        assert!(msg.contains("'w'") && msg.contains("truncated"), "{msg}");
        let t = TensorProto { dims: vec![3], data_type: DataType::Int8 as i32, raw_data: vec![255, 1, 128], ..Default::default() };
        assert_eq!(decode(&t, "q").unwrap().data, Data::I64(vec![-1, 1, -128]));
    }
}
