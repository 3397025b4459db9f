//! .npy files (version 1/2, little-endian float32/float64/int64 in, float32
//! out): the contract for cross-checks with numpy and onnxruntime.

use crate::{Error, Result};

#[derive(Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(bytes: &[u8], what: &str) -> Result<NpyArray> {
    let err = |msg: &str| Error::Invalid(format!("{what}: {msg}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(&format!("unsupported .npy version {v}"))),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").and_then(|r| r.strip_prefix('\'')).and_then(|r| r.split('\'').next()).ok_or_else(|| err("no descr"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape_text = field("shape").and_then(|r| r.strip_prefix('(')).and_then(|r| r.split(')').next()).ok_or_else(|| err("no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| err("bad shape")))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    let data: Vec<f32> = match descr {
        "<f4" | "|f4" => body.chunks_exact(4).take(n).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        "<f8" => body.chunks_exact(8).take(n).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        "<i8" => body.chunks_exact(8).take(n).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        "|u1" => body.iter().take(n).map(|&b| b as f32).collect(),
        other => return Err(err(&format!("element type {other} is not supported (float32, float64, int64, uint8 are)"))),
    };
    if data.len() != n {
        return Err(err(&format!("holds {} values, shape {shape:?} needs {n} (truncated?)", data.len())));
    }
    Ok(NpyArray { shape, data })
}

pub fn write(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so the data starts on a 64-byte boundary, header ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trip_and_errors() {
        for shape in [vec![], vec![3], vec![2, 3, 1]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let bytes = write(&shape, &data);
            assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
            let back = read(&bytes, "t").unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.data, data);
        }
        let bytes = write(&[4], &[1.0; 4]);
        assert!(read(&bytes[..bytes.len() - 2], "t").unwrap_err().to_string().contains("truncated"));
        assert!(read(b"hello world", "t").is_err());
    }
}
