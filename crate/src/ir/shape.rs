//! Static shape inference: the output shapes of an op from its input shapes.
//! Import uses it to type the graph; `Graph::validate` re-checks it.

use super::op::*;
use crate::kernels::elementwise::broadcast_shape;

type Shapes = Vec<Vec<usize>>;

fn want(inputs: &[&[usize]], n: usize) -> Result<(), String> {
    if inputs.len() < n {
        return Err(format!("expects {n} inputs, has {}", inputs.len()));
    }
    Ok(())
}

fn rank4<'a>(shape: &'a [usize], what: &str) -> Result<&'a [usize], String> {
    if shape.len() != 4 {
        return Err(format!("{what} must be 4-D [N,C,H,W], has shape {shape:?}"));
    }
    Ok(shape)
}

fn window_out(w: &Window2d, x: &[usize], channels: usize, ceil_mode: bool) -> Result<Vec<usize>, String> {
    let h = w.output_size(0, x[2], ceil_mode);
    let wd = w.output_size(1, x[3], ceil_mode);
    match (h, wd) {
        (Some(h), Some(wd)) if h > 0 && wd > 0 => Ok(vec![x[0], channels, h, wd]),
        _ => Err(format!(
            "window {:?} (dilations {:?}, strides {:?}, pads {:?}) does not fit input {x:?}",
            w.kernel, w.dilations, w.strides, w.pads
        )),
    }
}

/// numpy matmul output shape.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!("MatMul inner dimensions differ: {a:?} x {b:?}"));
    }
    let batch = broadcast_shape(&a2[..a2.len() - 2], &b2[..b2.len() - 2])
        .ok_or_else(|| format!("MatMul batch dimensions do not broadcast: {a:?} x {b:?}"))?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

/// Output shapes of `op` given its input shapes, or a message saying why the
/// shapes do not fit the op.
pub fn infer_shapes(op: &Op, inputs: &[&[usize]]) -> Result<Shapes, String> {
    Ok(match op {
        Op::Conv(c) => {
            want(inputs, 2)?;
            let x = rank4(inputs[0], "input")?;
            let w = rank4(inputs[1], "weight")?;
            if c.group == 0 || x[1] != w[1] * c.group || w[0] % c.group != 0 {
                return Err(format!("input {x:?} with {} groups does not fit weight {w:?}", c.group));
            }
            if [w[2], w[3]] != c.window.kernel {
                return Err(format!("weight {w:?} does not match kernel {:?}", c.window.kernel));
            }
            if inputs.len() > 2 && inputs[2] != [w[0]] {
                return Err(format!("bias shape {:?}, expected [{}]", inputs[2], w[0]));
            }
            vec![window_out(&c.window, x, w[0], false)?]
        }
        Op::ConvTranspose(c) => {
            want(inputs, 2)?;
            let x = rank4(inputs[0], "input")?;
            let w = rank4(inputs[1], "weight")?;
            if x[1] != w[0] || c.group == 0 || w[0] % c.group != 0 {
                return Err(format!("input {x:?} with {} groups does not fit weight {w:?}", c.group));
            }
            let m = w[1] * c.group;
            let mut out = vec![x[0], m, 0, 0];
            for a in 0..2 {
                let full = c.window.strides[a] * (x[2 + a] - 1)
                    + c.output_padding[a]
                    + c.window.dilations[a] * (c.window.kernel[a] - 1)
                    + 1;
                let pads = c.window.pads[a] + c.window.pads[a + 2];
                if full <= pads {
                    return Err(format!("pads {:?} remove the whole output", c.window.pads));
                }
                out[2 + a] = full - pads;
            }
            vec![out]
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            want(inputs, 2)?;
            let (a, b) = (inputs[0], inputs[1]);
            if a.len() != 2 || b.len() != 2 {
                return Err(format!("Gemm operands must be 2-D, have {a:?} and {b:?}"));
            }
            let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
            let (k2, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
            if k != k2 {
                return Err(format!("Gemm inner dimensions differ: {a:?} x {b:?} (transA {trans_a}, transB {trans_b})"));
            }
            if inputs.len() > 2 && broadcast_shape(inputs[2], &[m, n]).as_deref() != Some(&[m, n][..]) {
                return Err(format!("C shape {:?} does not broadcast to [{m}, {n}]", inputs[2]));
            }
            vec![vec![m, n]]
        }
        Op::MatMul => {
            want(inputs, 2)?;
            vec![matmul_shape(inputs[0], inputs[1])?]
        }
        Op::Binary(_) => {
            want(inputs, 2)?;
            vec![broadcast_shape(inputs[0], inputs[1])
                .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", inputs[0], inputs[1]))?]
        }
        Op::PRelu => {
            want(inputs, 2)?;
            if broadcast_shape(inputs[0], inputs[1]).as_deref() != Some(inputs[0]) {
                return Err(format!("slope {:?} does not broadcast to {:?}", inputs[1], inputs[0]));
            }
            vec![inputs[0].to_vec()]
        }
        Op::Unary(_) | Op::Activation(_) => {
            want(inputs, 1)?;
            vec![inputs[0].to_vec()]
        }
        Op::Softmax { axis, .. } => {
            want(inputs, 1)?;
            if *axis >= inputs[0].len() {
                return Err(format!("axis {axis} out of range for shape {:?}", inputs[0]));
            }
            vec![inputs[0].to_vec()]
        }
        Op::MaxPool { window, ceil_mode } | Op::AveragePool { window, ceil_mode, .. } => {
            want(inputs, 1)?;
            let x = rank4(inputs[0], "input")?;
            vec![window_out(window, x, x[1], *ceil_mode)?]
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool => {
            want(inputs, 1)?;
            let x = inputs[0];
            if x.len() < 3 {
                return Err(format!("input must be [N,C,spatial...], has shape {x:?}"));
            }
            let mut out = x.to_vec();
            out[2..].iter_mut().for_each(|d| *d = 1);
            vec![out]
        }
        Op::Reduce { axes, keep_dims, .. } => {
            want(inputs, 1)?;
            let x = inputs[0];
            if axes.iter().any(|&a| a >= x.len()) {
                return Err(format!("axes {axes:?} out of range for shape {x:?}"));
            }
            let out = x
                .iter()
                .enumerate()
                .filter_map(|(a, &d)| match (axes.contains(&a), keep_dims) {
                    (false, _) => Some(d),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            vec![out]
        }
        Op::Reshape { shape } => {
            want(inputs, 1)?;
            let n: usize = inputs[0].iter().product();
            if shape.iter().product::<usize>() != n {
                return Err(format!("cannot reshape {:?} ({n} elements) to {shape:?}", inputs[0]));
            }
            vec![shape.clone()]
        }
        Op::Transpose { perm } => {
            want(inputs, 1)?;
            let x = inputs[0];
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.len()).collect::<Vec<_>>() {
                return Err(format!("perm {perm:?} is not a permutation of the axes of {x:?}"));
            }
            vec![perm.iter().map(|&p| x[p]).collect()]
        }
        Op::Concat { axis } => {
            want(inputs, 1)?;
            let first = inputs[0];
            if *axis >= first.len() {
                return Err(format!("axis {axis} out of range for shape {first:?}"));
            }
            let mut out = first.to_vec();
            out[*axis] = 0;
            for s in inputs {
                let same_elsewhere = s.len() == first.len() && (0..s.len()).all(|a| a == *axis || s[a] == first[a]);
                if !same_elsewhere {
                    return Err(format!("cannot concatenate {first:?} and {s:?} along axis {axis}"));
                }
                out[*axis] += s[*axis];
            }
            vec![out]
        }
        Op::Split { axis, sizes } => {
            want(inputs, 1)?;
            let x = inputs[0];
            if *axis >= x.len() || sizes.iter().sum::<usize>() != x[*axis] {
                return Err(format!("cannot split {x:?} along axis {axis} into {sizes:?}"));
            }
            sizes
                .iter()
                .map(|&s| {
                    let mut out = x.to_vec();
                    out[*axis] = s;
                    out
                })
                .collect()
        }
        Op::Slice { starts, steps, sizes } => {
            want(inputs, 1)?;
            let x = inputs[0];
            if starts.len() != x.len() || steps.len() != x.len() || sizes.len() != x.len() {
                return Err(format!("slice of rank {} on a tensor of rank {}", starts.len(), x.len()));
            }
            for a in 0..x.len() {
                if sizes[a] == 0 {
                    continue;
                }
                let last = starts[a] as isize + (sizes[a] as isize - 1) * steps[a];
                if starts[a] >= x[a] || last < 0 || last >= x[a] as isize {
                    return Err(format!("slice on axis {a} leaves the tensor {x:?}"));
                }
            }
            vec![sizes.clone()]
        }
        Op::Pad { begin, end, .. } => {
            want(inputs, 1)?;
            let x = inputs[0];
            if begin.len() != x.len() || end.len() != x.len() {
                return Err(format!("pads of rank {} on a tensor of rank {}", begin.len(), x.len()));
            }
            vec![x.iter().zip(begin).zip(end).map(|((d, b), e)| d + b + e).collect()]
        }
        Op::Resize { shape, .. } => {
            want(inputs, 1)?;
            if shape.len() != inputs[0].len() {
                return Err(format!("output rank {} differs from input shape {:?}", shape.len(), inputs[0]));
            }
            vec![shape.clone()]
        }
        Op::Gather { axis, indices, indices_shape } => {
            want(inputs, 1)?;
            let x = inputs[0];
            if *axis >= x.len() {
                return Err(format!("axis {axis} out of range for shape {x:?}"));
            }
            let n = x[*axis] as i64;
            if let Some(bad) = indices.iter().find(|&&i| i < -n || i >= n) {
                return Err(format!("index {bad} out of range for axis {axis} of {x:?}"));
            }
            let mut out = x[..*axis].to_vec();
            out.extend_from_slice(indices_shape);
            out.extend_from_slice(&x[axis + 1..]);
            vec![out]
        }
    })
}
