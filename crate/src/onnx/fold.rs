//! Constant folding at import: nodes whose inputs are all constants are
//! evaluated here, on f32 and i64 tensors alike. This resolves the shape
//! arithmetic exporters write (Shape -> Gather -> Concat -> Reshape), the
//! weights PaddlePaddle keeps in Constant nodes, and casts, so that what
//! reaches the IR is only f32 compute. Float compute on constants that is not
//! covered here (a Conv of constants, say) is lowered to IR nodes and folded
//! by `ir::passes::fold_constants` with the FP32 engine itself.

use super::attrs::{normalize_axis, Attrs};
use super::tensor::{ConstTensor, Data};
use crate::kernels::elementwise::broadcast_shape;
use crate::kernels::layout;
use crate::Result;

/// Element types the folder computes on.
trait Elem: Copy + PartialOrd + Default + 'static {
    fn binary(op: &str, a: Self, b: Self) -> Option<Self>;
    fn unary(op: &str, a: Self) -> Option<Self>;
}

impl Elem for f32 {
    fn binary(op: &str, a: f32, b: f32) -> Option<f32> {
        Some(match op {
            "Add" => a + b,
            "Sub" => a - b,
            "Mul" => a * b,
            "Div" => a / b,
            "Pow" => a.powf(b),
            "Max" => a.max(b),
            "Min" => a.min(b),
            "Mod" => a % b,
            _ => return None,
        })
    }
    fn unary(op: &str, a: f32) -> Option<f32> {
        Some(match op {
            "Neg" => -a,
            "Abs" => a.abs(),
            "Floor" => a.floor(),
            "Ceil" => a.ceil(),
            "Round" => a.round_ties_even(),
            "Sqrt" => a.sqrt(),
            "Reciprocal" => 1.0 / a,
            "Exp" => a.exp(),
            "Log" => a.ln(),
            "Relu" => a.max(0.0),
            "Sigmoid" => 1.0 / (1.0 + (-a).exp()),
            "Tanh" => a.tanh(),
            _ => return None,
        })
    }
}

impl Elem for i64 {
    fn binary(op: &str, a: i64, b: i64) -> Option<i64> {
        Some(match op {
            "Add" => a.wrapping_add(b),
            "Sub" => a.wrapping_sub(b),
            "Mul" => a.wrapping_mul(b),
            // ONNX integer division truncates, like C.
            "Div" => a.checked_div(b)?,
            "Max" => a.max(b),
            "Min" => a.min(b),
            "Mod" => a.checked_rem(b)?,
            "Pow" => a.checked_pow(u32::try_from(b).ok()?)?,
            _ => return None,
        })
    }
    fn unary(op: &str, a: i64) -> Option<i64> {
        Some(match op {
            "Neg" => -a,
            "Abs" => a.abs(),
            "Floor" | "Ceil" | "Round" => a,
            "Relu" => a.max(0),
            "Not" => (a == 0) as i64,
            _ => return None,
        })
    }
}

/// Row-major strides of `shape` aligned right to `rank`, 0 on broadcast axes.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for (i, &d) in shape.iter().enumerate().rev() {
        let a = out.len() - shape.len() + i;
        strides[a] = if d == 1 { 0 } else { s };
        s *= d;
    }
    strides
}

/// Visits every output index of a broadcast, giving the flat offsets into each input.
fn for_each_broadcast(out: &[usize], inputs: &[&[usize]], mut f: impl FnMut(&[usize])) {
    let strides: Vec<Vec<usize>> = inputs.iter().map(|s| broadcast_strides(s, out)).collect();
    let total: usize = out.iter().product();
    let mut index = vec![0usize; out.len()];
    let mut offsets = vec![0usize; inputs.len()];
    for _ in 0..total {
        f(&offsets);
        for a in (0..out.len()).rev() {
            index[a] += 1;
            for (o, s) in offsets.iter_mut().zip(&strides) {
                *o += s[a];
            }
            if index[a] < out[a] {
                break;
            }
            for (o, s) in offsets.iter_mut().zip(&strides) {
                *o -= s[a] * out[a];
            }
            index[a] = 0;
        }
    }
}

fn binary<T: Elem>(op: &str, a: &[T], sa: &[usize], b: &[T], sb: &[usize], out_shape: &[usize]) -> Option<Vec<T>> {
    let mut out = Vec::with_capacity(out_shape.iter().product());
    let mut ok = true;
    for_each_broadcast(out_shape, &[sa, sb], |o| match T::binary(op, a[o[0]], b[o[1]]) {
        Some(v) => out.push(v),
        None => ok = false,
    });
    ok.then_some(out)
}

fn compare<T: Elem>(op: &str, a: &[T], sa: &[usize], b: &[T], sb: &[usize], out_shape: &[usize]) -> Vec<i64> {
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for_each_broadcast(out_shape, &[sa, sb], |o| {
        let (x, y) = (a[o[0]], b[o[1]]);
        out.push(match op {
            "Equal" => x == y,
            "Less" => x < y,
            "LessOrEqual" => x <= y,
            "Greater" => x > y,
            _ => x >= y,
        } as i64)
    });
    out
}

/// Applies a layout function to either element type.
macro_rules! on_data {
    ($t:expr, |$v:ident| $body:expr) => {
        match &$t.data {
            Data::F32($v) => Data::F32($body),
            Data::I64($v) => Data::I64($body),
        }
    };
}

fn with(t: &ConstTensor, shape: Vec<usize>, data: Data) -> ConstTensor {
    ConstTensor { shape, data, elem_type: t.elem_type }
}

/// A shape given as a tensor: every value a non-negative integer.
pub fn as_sizes(t: &ConstTensor) -> Option<Vec<usize>> {
    t.to_i64()?.into_iter().map(|v| usize::try_from(v).ok()).collect()
}

/// Resolves an ONNX Reshape target (0 copies the input dim unless `allow_zero`, -1 infers).
pub fn reshape_target(input: &[usize], target: &[i64], allow_zero: bool) -> std::result::Result<Vec<usize>, String> {
    let n: usize = input.iter().product();
    let mut infer = None;
    let mut out = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        out.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if !allow_zero => *input.get(i).ok_or_else(|| format!("target {target:?} copies axis {i} that {input:?} lacks"))?,
            d if d >= 0 => d as usize,
            _ => return Err(format!("invalid target shape {target:?}")),
        });
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || n % known != 0 {
            return Err(format!("cannot reshape {input:?} to {target:?}"));
        }
        out[i] = n / known;
    }
    if out.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {input:?} ({n} elements) to {target:?}"));
    }
    Ok(out)
}

/// Normalises ONNX Slice starts/ends/axes/steps against `shape` into
/// per-axis (start, step, count).
pub fn slice_params(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> std::result::Result<(Vec<usize>, Vec<isize>, Vec<usize>), String> {
    let rank = shape.len();
    let mut first: Vec<usize> = vec![0; rank];
    let mut step: Vec<isize> = vec![1; rank];
    let mut count: Vec<usize> = shape.to_vec();
    if starts.len() != ends.len() {
        return Err(format!("starts {starts:?} and ends {ends:?} differ in length"));
    }
    for i in 0..starts.len() {
        let axis = match axes {
            Some(ax) => normalize_axis(*ax.get(i).ok_or("axes shorter than starts")?, rank).ok_or(format!("axis {:?} out of range", ax[i]))?,
            None => i,
        };
        if axis >= rank {
            return Err(format!("slice of {} axes on a tensor of rank {rank}", starts.len()));
        }
        let d = shape[axis] as i64;
        let t = steps.map_or(1, |s| s.get(i).copied().unwrap_or(1));
        if t == 0 {
            return Err("slice step 0".into());
        }
        let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let mut s = starts[i];
        let mut e = ends[i];
        if s < 0 {
            s += d;
        }
        if e < 0 {
            e += d;
        }
        let (s, e) = if t > 0 { (clampi(s, 0, d), clampi(e, 0, d)) } else { (clampi(s, 0, d - 1), clampi(e, -1, d - 1)) };
        let (span, stride) = if t > 0 { ((e - s).max(0), t) } else { ((s - e).max(0), -t) };
        let n = (span + stride - 1) / stride;
        first[axis] = if n > 0 { s as usize } else { 0 };
        step[axis] = t as isize;
        count[axis] = n as usize;
    }
    Ok((first, step, count))
}

/// Evaluates `op` on constant inputs. `Ok(None)` means the folder does not
/// cover the op: the caller lowers it to the IR with constant inputs.
pub fn fold(op: &str, attrs: &Attrs, inputs: &[Option<&ConstTensor>], opset: i64) -> Result<Option<Vec<ConstTensor>>> {
    let input = |i: usize| -> Result<&ConstTensor> {
        inputs.get(i).copied().flatten().ok_or_else(|| attrs.error(format!("input {i} is missing")))
    };
    let ints = |i: usize, what: &str| -> Result<Vec<i64>> {
        input(i)?.to_i64().ok_or_else(|| attrs.error(format!("{what} must be integers")))
    };
    let bad = |msg: String| attrs.error(msg);
    let one = |t: ConstTensor| Ok(Some(vec![t]));
    match op {
        "Identity" => one(input(0)?.clone()),
        "Constant" => {
            if let Some(t) = attrs.tensor("value")? {
                one(t)
            } else if attrs.has("value_float") {
                one(ConstTensor::f32(vec![], vec![attrs.float("value_float", 0.0)]))
            } else if let Some(v) = attrs.floats("value_floats") {
                one(ConstTensor::f32(vec![v.len()], v))
            } else if attrs.has("value_int") {
                one(ConstTensor::i64(vec![], vec![attrs.int("value_int", 0)]))
            } else if let Some(v) = attrs.ints("value_ints") {
                one(ConstTensor::i64(vec![v.len()], v))
            } else {
                Err(bad("Constant without a supported value attribute".into()))
            }
        }
        "Cast" => {
            let x = input(0)?;
            let to = attrs.int("to", 1) as i32;
            use tract_onnx::pb::tensor_proto::DataType as D;
            let data = match D::try_from(to) {
                Ok(D::Float | D::Double | D::Float16 | D::Bfloat16) => Data::F32(x.to_f32()),
                Ok(D::Bool) => Data::I64(x.to_f32().iter().map(|&v| (v != 0.0) as i64).collect()),
                Ok(_) => Data::I64(match &x.data {
                    Data::I64(v) => v.clone(),
                    // ONNX casts float to int by truncation toward zero.
                    Data::F32(v) => v.iter().map(|&f| f.trunc() as i64).collect(),
                }),
                Err(_) => return Err(bad(format!("cast to unknown type {to}"))),
            };
            one(ConstTensor { shape: x.shape.clone(), data, elem_type: to })
        }
        "ConstantOfShape" => {
            let shape = as_sizes(input(0)?).ok_or_else(|| bad("shape must be non-negative integers".into()))?;
            let n = shape.iter().product();
            let value = attrs.tensor("value")?;
            // Without `value` the spec says float32 zero (tract 0.23 makes it f64).
            one(match value {
                Some(v) => match v.data {
                    Data::F32(d) => ConstTensor { shape, data: Data::F32(vec![d[0]; n]), elem_type: v.elem_type },
                    Data::I64(d) => ConstTensor { shape, data: Data::I64(vec![d[0]; n]), elem_type: v.elem_type },
                },
                None => ConstTensor::f32(shape, vec![0.0; n]),
            })
        }
        "Range" => {
            let (s, l, d) = (input(0)?, input(1)?, input(2)?);
            if s.is_float() || l.is_float() || d.is_float() {
                let (s, l, d) = (s.to_f32()[0], l.to_f32()[0], d.to_f32()[0]);
                let n = ((l - s) / d).ceil().max(0.0) as usize;
                one(ConstTensor::f32(vec![n], (0..n).map(|i| s + i as f32 * d).collect()))
            } else {
                let (s, l, d) = (ints(0, "start")?[0], ints(1, "limit")?[0], ints(2, "delta")?[0]);
                if d == 0 {
                    return Err(bad("Range with delta 0".into()));
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                one(ConstTensor::i64(vec![n], (0..n as i64).map(|i| s + i * d).collect()))
            }
        }
        "Size" => one(ConstTensor::i64(vec![], vec![input(0)?.len() as i64])),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Mod" | "Sum" => {
            let op = if op == "Sum" { "Add" } else { op };
            let mut acc = input(0)?.clone();
            for i in 1..inputs.len() {
                let b = input(i)?;
                let shape = broadcast_shape(&acc.shape, &b.shape)
                    .ok_or_else(|| bad(format!("shapes {:?} and {:?} do not broadcast", acc.shape, b.shape)))?;
                let data = match (&acc.data, &b.data) {
                    (Data::I64(x), Data::I64(y)) => binary(op, x, &acc.shape, y, &b.shape, &shape).map(Data::I64),
                    _ => binary(op, &acc.to_f32(), &acc.shape, &b.to_f32(), &b.shape, &shape).map(Data::F32),
                };
                let data = data.ok_or_else(|| bad("integer division by zero or overflow".into()))?;
                let elem_type = if matches!(data, Data::F32(_)) && !acc.is_float() { b.elem_type } else { acc.elem_type };
                acc = ConstTensor { shape, data, elem_type };
            }
            one(acc)
        }
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
            let (a, b) = (input(0)?, input(1)?);
            let shape = broadcast_shape(&a.shape, &b.shape).ok_or_else(|| bad("shapes do not broadcast".into()))?;
            let data = match (&a.data, &b.data) {
                (Data::I64(x), Data::I64(y)) => compare(op, x, &a.shape, y, &b.shape, &shape),
                _ => compare(op, &a.to_f32(), &a.shape, &b.to_f32(), &b.shape, &shape),
            };
            one(ConstTensor { shape, data: Data::I64(data), elem_type: tract_onnx::pb::tensor_proto::DataType::Bool as i32 })
        }
        "Where" => {
            let (c, x, y) = (input(0)?, input(1)?, input(2)?);
            let cond = c.to_i64().ok_or_else(|| bad("condition must be boolean".into()))?;
            let shape = broadcast_shape(&c.shape, &x.shape)
                .and_then(|s| broadcast_shape(&s, &y.shape))
                .ok_or_else(|| bad("shapes do not broadcast".into()))?;
            fn pick<T: Copy>(shape: &[usize], shapes: [&[usize]; 3], cond: &[i64], xs: &[T], ys: &[T]) -> Vec<T> {
                let mut out = Vec::new();
                for_each_broadcast(shape, &shapes, |o| out.push(if cond[o[0]] != 0 { xs[o[1]] } else { ys[o[2]] }));
                out
            }
            let shapes = [c.shape.as_slice(), x.shape.as_slice(), y.shape.as_slice()];
            let data = match (&x.data, &y.data) {
                (Data::I64(a), Data::I64(b)) => Data::I64(pick(&shape, shapes, &cond, a, b)),
                _ => Data::F32(pick(&shape, shapes, &cond, &x.to_f32(), &y.to_f32())),
            };
            one(ConstTensor { shape, data, elem_type: x.elem_type })
        }
        "Neg" | "Abs" | "Floor" | "Ceil" | "Round" | "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Relu" | "Sigmoid" | "Tanh" | "Not" => {
            let x = input(0)?;
            let data = match &x.data {
                Data::F32(v) => v.iter().map(|&a| f32::unary(op, a)).collect::<Option<Vec<_>>>().map(Data::F32),
                Data::I64(v) => v.iter().map(|&a| i64::unary(op, a)).collect::<Option<Vec<_>>>().map(Data::I64),
            };
            Ok(data.map(|d| vec![with(x, x.shape.clone(), d)]))
        }
        "Reshape" => {
            let x = input(0)?;
            let target = ints(1, "shape")?;
            let shape = reshape_target(&x.shape, &target, attrs.int("allowzero", 0) != 0).map_err(bad)?;
            one(with(x, shape, x.data.clone()))
        }
        "Flatten" => {
            let x = input(0)?;
            let axis = normalize_axis(attrs.int("axis", 1), x.shape.len() + 1).ok_or_else(|| bad("axis out of range".into()))?;
            let shape = vec![x.shape[..axis].iter().product(), x.shape[axis..].iter().product()];
            one(with(x, shape, x.data.clone()))
        }
        "Unsqueeze" | "Squeeze" => {
            let x = input(0)?;
            let axes = if opset >= 13 && inputs.len() > 1 && inputs[1].is_some() { Some(ints(1, "axes")?) } else { attrs.ints("axes") };
            let shape = squeeze_shape(op, &x.shape, axes.as_deref()).map_err(bad)?;
            one(with(x, shape, x.data.clone()))
        }
        "Concat" => {
            let parts: Vec<&ConstTensor> = inputs.iter().flatten().copied().collect();
            let rank = parts[0].shape.len();
            let axis = normalize_axis(attrs.int("axis", 0), rank).ok_or_else(|| bad("axis out of range".into()))?;
            let mut shape = parts[0].shape.clone();
            shape[axis] = parts.iter().map(|p| p.shape.get(axis).copied().unwrap_or(0)).sum();
            if parts.iter().any(|p| p.shape.len() != rank || (0..rank).any(|a| a != axis && p.shape[a] != shape[a])) {
                return Err(bad(format!("cannot concatenate shapes {:?}", parts.iter().map(|p| &p.shape).collect::<Vec<_>>())));
            }
            let n = shape.iter().product();
            let data = if parts.iter().all(|p| !p.is_float()) {
                let owned: Vec<Vec<i64>> = parts.iter().map(|p| p.to_i64().unwrap_or_default()).collect();
                let views: Vec<(&[i64], &[usize])> = owned.iter().zip(&parts).map(|(d, p)| (d.as_slice(), p.shape.as_slice())).collect();
                let mut out = vec![0i64; n];
                layout::concat(&views, axis, &mut out);
                Data::I64(out)
            } else {
                let owned: Vec<Vec<f32>> = parts.iter().map(|p| p.to_f32()).collect();
                let views: Vec<(&[f32], &[usize])> = owned.iter().zip(&parts).map(|(d, p)| (d.as_slice(), p.shape.as_slice())).collect();
                let mut out = vec![0f32; n];
                layout::concat(&views, axis, &mut out);
                Data::F32(out)
            };
            one(ConstTensor { shape, data, elem_type: parts[0].elem_type })
        }
        "Gather" => {
            let (x, idx) = (input(0)?, input(1)?);
            let axis = normalize_axis(attrs.int("axis", 0), x.shape.len()).ok_or_else(|| bad("axis out of range".into()))?;
            let indices = idx.to_i64().ok_or_else(|| bad("indices must be integers".into()))?;
            let n = x.shape[axis] as i64;
            if let Some(i) = indices.iter().find(|&&i| i < -n || i >= n) {
                return Err(bad(format!("index {i} out of range for axis {axis} of {:?}", x.shape)));
            }
            let mut shape = x.shape[..axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[axis + 1..]);
            let total = shape.iter().product();
            let data = on_data!(x, |v| {
                let mut out = vec![Default::default(); total];
                layout::gather(v, &x.shape, axis, &indices, &mut out);
                out
            });
            one(with(x, shape, data))
        }
        "Slice" => {
            let x = input(0)?;
            let (starts, ends, axes, steps) = if opset < 10 {
                (attrs.ints("starts").unwrap_or_default(), attrs.ints("ends").unwrap_or_default(), attrs.ints("axes"), None)
            } else {
                let opt = |i: usize, what: &str| -> Result<Option<Vec<i64>>> {
                    if inputs.get(i).copied().flatten().is_some() { Ok(Some(ints(i, what)?)) } else { Ok(None) }
                };
                (ints(1, "starts")?, ints(2, "ends")?, opt(3, "axes")?, opt(4, "steps")?)
            };
            let (first, step, count) = slice_params(&x.shape, &starts, &ends, axes.as_deref(), steps.as_deref()).map_err(bad)?;
            let total = count.iter().product();
            let data = on_data!(x, |v| {
                let mut out = vec![Default::default(); total];
                layout::slice(v, &x.shape, &first, &step, &mut out, &count);
                out
            });
            one(with(x, count, data))
        }
        "Transpose" => {
            let x = input(0)?;
            let perm: Vec<usize> = match attrs.ints("perm") {
                Some(p) => p.iter().map(|&a| a as usize).collect(),
                None => (0..x.shape.len()).rev().collect(),
            };
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape.get(p).copied().unwrap_or(0)).collect();
            let data = on_data!(x, |v| {
                let mut out = vec![Default::default(); v.len()];
                layout::transpose(v, &x.shape, &perm, &mut out);
                out
            });
            one(with(x, shape, data))
        }
        "Expand" => {
            let x = input(0)?;
            let target = as_sizes(input(1)?).ok_or_else(|| bad("shape must be non-negative integers".into()))?;
            let shape = broadcast_shape(&x.shape, &target).ok_or_else(|| bad(format!("cannot expand {:?} to {target:?}", x.shape)))?;
            let data = on_data!(x, |v| {
                let mut out = Vec::new();
                for_each_broadcast(&shape, &[&x.shape], |o| out.push(v[o[0]]));
                out
            });
            one(with(x, shape, data))
        }
        "ReduceProd" | "ReduceSum" | "ReduceMax" | "ReduceMin" if input(0)?.shape.len() <= 1 => {
            // Shape arithmetic only (e.g. the product of a shape vector).
            let x = input(0)?;
            let keep = attrs.int("keepdims", 1) != 0;
            let shape = if keep && !x.shape.is_empty() { vec![1] } else { vec![] };
            let data = match &x.data {
                Data::I64(v) => Data::I64(vec![match op {
                    "ReduceProd" => v.iter().product(),
                    "ReduceSum" => v.iter().sum(),
                    "ReduceMax" => v.iter().copied().max().unwrap_or(i64::MIN),
                    _ => v.iter().copied().min().unwrap_or(i64::MAX),
                }]),
                Data::F32(v) => Data::F32(vec![match op {
                    "ReduceProd" => v.iter().product(),
                    "ReduceSum" => v.iter().sum(),
                    "ReduceMax" => v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    _ => v.iter().copied().fold(f32::INFINITY, f32::min),
                }]),
            };
            one(with(x, shape, data))
        }
        _ => Ok(None),
    }
}

/// Output shape of Squeeze/Unsqueeze with optional axes.
pub fn squeeze_shape(op: &str, shape: &[usize], axes: Option<&[i64]>) -> std::result::Result<Vec<usize>, String> {
    if op == "Unsqueeze" {
        let axes = axes.ok_or("Unsqueeze needs axes")?;
        let rank = shape.len() + axes.len();
        let mut norm: Vec<usize> = axes.iter().map(|&a| normalize_axis(a, rank).ok_or(format!("axis {a} out of range"))).collect::<std::result::Result<_, _>>()?;
        norm.sort_unstable();
        let mut out = shape.to_vec();
        for a in norm {
            out.insert(a, 1);
        }
        Ok(out)
    } else {
        let axes: Vec<usize> = match axes {
            Some(ax) => ax.iter().map(|&a| normalize_axis(a, shape.len()).ok_or(format!("axis {a} out of range"))).collect::<std::result::Result<_, _>>()?,
            None => (0..shape.len()).filter(|&a| shape[a] == 1).collect(),
        };
        if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
            return Err(format!("cannot squeeze axis {a} of size {} in {shape:?}", shape[a]));
        }
        Ok(shape.iter().enumerate().filter(|(a, _)| !axes.contains(a)).map(|(_, &d)| d).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reshape_targets_follow_onnx_rules() {
        assert_eq!(reshape_target(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(reshape_target(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert_eq!(reshape_target(&[1, 1280, 1, 1], &[1, -1], false).unwrap(), vec![1, 1280]);
        assert!(reshape_target(&[2, 3], &[4, -1], false).is_err());
        assert!(reshape_target(&[2, 3], &[-1, -1], false).is_err());
    }

    #[test]
    fn slices_clamp_like_onnx() {
        // x[1:1000] on 5 elements, x[::-1], x[-2:], empty slices.
        assert_eq!(slice_params(&[5], &[1], &[1000], None, None).unwrap(), (vec![1], vec![1], vec![4]));
        assert_eq!(slice_params(&[5], &[-1], &[i64::MIN], None, Some(&[-1])).unwrap(), (vec![4], vec![-1], vec![5]));
        assert_eq!(slice_params(&[5, 6], &[-2], &[i64::MAX], Some(&[1]), None).unwrap(), (vec![0, 4], vec![1, 1], vec![5, 2]));
        assert_eq!(slice_params(&[5], &[3], &[1], None, None).unwrap().2, vec![0]);
        assert_eq!(slice_params(&[7], &[0], &[7], None, Some(&[3])).unwrap().2, vec![3]);
    }

    #[test]
    fn broadcast_visits_match_numpy() {
        let a = [1i64, 2, 3];
        let b = [10i64, 20];
        let out = binary("Add", &a, &[1, 3], &b, &[2, 1], &[2, 3]).unwrap();
        assert_eq!(out, vec![11, 12, 13, 21, 22, 23]);
        assert_eq!(binary("Div", &[7i64, -7], &[2], &[2i64], &[1], &[2]).unwrap(), vec![3, -3]);
        assert!(binary("Div", &[1i64], &[1], &[0i64], &[1], &[1]).is_none());
    }

    #[test]
    fn squeeze_and_unsqueeze() {
        assert_eq!(squeeze_shape("Unsqueeze", &[3, 4], Some(&[0, -1])).unwrap(), vec![1, 3, 4, 1]);
        assert_eq!(squeeze_shape("Squeeze", &[1, 3, 1], None).unwrap(), vec![3]);
        assert!(squeeze_shape("Squeeze", &[2, 3], Some(&[0])).is_err());
    }
}
