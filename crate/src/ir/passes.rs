//! Graph rewrites applied after import, each a general mechanism rather than
//! a model-specific pattern:
//! - `fold_constants`: nodes with only constant inputs are evaluated once;
//! - `fuse_decomposed_hard_activations`: `clip(x + 3, 0, 6) / 6` -> HardSigmoid and
//!   `x * clip(x + 3, 0, 6) / 6` -> HardSwish, as PaddlePaddle and older PyTorch export them;
//! - `fuse_gated_activations`: `x * sigmoid(x)` -> SiLU, `x * hardsigmoid(x)` -> HardSwish;
//! - `fold_affine_into_conv`: a per-output-channel Mul/Div/Add/Sub on a Conv or
//!   Gemm output (BatchNormalization lowers to exactly that) merges into its
//!   weights and bias;
//! - `fuse_activations`: a pointwise activation merges into the Conv/Gemm before it.
//!
//! On a quantized graph (values annotated by PTQ or QDQ import, see [`crate::quant`]) no pass
//! merges across a quantized value or changes quantized data: a pattern whose intermediate
//! value carries a [`Quant`], or that would rewrite an annotated weight or constant, is left
//! as it is, so the annotation (and what it means to the int8 engine and to export) survives.

use std::sync::Arc;

use super::*;
use crate::engine::fp32::eval_node;

pub fn optimize(graph: &mut Graph) -> Result<()> {
    fold_constants(graph)?;
    fuse_decomposed_hard_activations(graph);
    graph.prune();
    fuse_gated_activations(graph);
    while fold_affine_into_conv(graph) {}
    fuse_activations(graph);
    graph.prune();
    Ok(())
}

/// Evaluates every node whose inputs are all constants.
pub fn fold_constants(graph: &mut Graph) -> Result<()> {
    let mut folded = vec![false; graph.nodes.len()];
    for n in 0..graph.nodes.len() {
        let node = &graph.nodes[n];
        if node.inputs.is_empty() || !node.inputs.iter().all(|&i| graph.values[i].is_const()) || node.outputs.iter().any(|o| graph.outputs.contains(o)) {
            continue;
        }
        if node.inputs.iter().chain(&node.outputs).any(|&v| is_quantized(graph, v)) {
            continue; // quantized data stays as annotated
        }
        let args: Vec<&[f32]> = node.inputs.iter().map(|&i| graph.const_data(i).expect("checked const")).collect();
        let results = eval_node(graph, node, &args)?;
        let outputs = node.outputs.clone();
        for (o, data) in outputs.into_iter().zip(results) {
            graph.values[o].data = Some(Arc::new(data));
        }
        folded[n] = true;
    }
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        !folded[i - 1]
    });
    Ok(())
}

fn is_quantized(graph: &Graph, v: ValueId) -> bool {
    graph.values[v].quant.is_some()
}

/// The single node reading `value`, if exactly one does and it is not a graph output.
fn sole_consumer(graph: &Graph, consumers: &[Vec<usize>], value: ValueId) -> Option<usize> {
    match consumers[value].as_slice() {
        [only] if !graph.outputs.contains(&value) => Some(*only),
        _ => None,
    }
}

/// The value of a constant holding a single number.
fn scalar_const(graph: &Graph, id: ValueId) -> Option<f32> {
    match graph.const_data(id) {
        Some([v]) => Some(*v),
        _ => None,
    }
}

/// If `node` computes `v * k` or `v / (1/k)` with a constant scalar, returns (v, k).
fn scaled_by(graph: &Graph, node: &Node) -> Option<(ValueId, f32)> {
    let (a, b) = (*node.inputs.first()?, *node.inputs.get(1)?);
    match node.op {
        Op::Binary(BinaryOp::Mul) => scalar_const(graph, b).map(|k| (a, k)).or_else(|| scalar_const(graph, a).map(|k| (b, k))),
        Op::Binary(BinaryOp::Div) => scalar_const(graph, b).map(|k| (a, 1.0 / k)),
        _ => None,
    }
}

/// If `v` is `clip(x + 3, 0, 6)` (a Relu6 of x shifted by 3), returns x.
fn relu6_of_x_plus_3(graph: &Graph, producers: &[Option<usize>], v: ValueId) -> Option<ValueId> {
    let clip = &graph.nodes[producers[v]?];
    if clip.op != Op::Activation(Activation::Clip { min: 0.0, max: 6.0 }) {
        return None;
    }
    let add = &graph.nodes[producers[clip.inputs[0]]?];
    if add.op != Op::Binary(BinaryOp::Add) {
        return None;
    }
    let (a, b) = (add.inputs[0], add.inputs[1]);
    let x = if scalar_const(graph, b) == Some(3.0) { a } else if scalar_const(graph, a) == Some(3.0) { b } else { return None };
    // The sum, the clip and the constants are merged away: none may be quantized.
    if [v, clip.inputs[0], a, b].iter().any(|&i| is_quantized(graph, i) && i != x) {
        return None;
    }
    (graph.values[x].shape == graph.values[v].shape).then_some(x)
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// Rewrites the decomposed forms of HardSigmoid and HardSwish into the ops;
/// the nodes they leave unused are pruned afterwards.
fn fuse_decomposed_hard_activations(graph: &mut Graph) {
    let producers = graph.producers();
    for n in 0..graph.nodes.len() {
        let Some((v, k)) = scaled_by(graph, &graph.nodes[n]) else { continue };
        if !close(k, 1.0 / 6.0) || graph.nodes[n].inputs.iter().any(|&i| i != v && is_quantized(graph, i)) || is_quantized(graph, v) {
            continue;
        }
        let (x, act) = if let Some(x) = relu6_of_x_plus_3(graph, &producers, v) {
            (x, Activation::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 })
        } else {
            let Some(p) = producers[v] else { continue };
            let mul = &graph.nodes[p];
            if mul.op != Op::Binary(BinaryOp::Mul) {
                continue;
            }
            let (a, b) = (mul.inputs[0], mul.inputs[1]);
            match (relu6_of_x_plus_3(graph, &producers, b), relu6_of_x_plus_3(graph, &producers, a)) {
                (Some(x), _) if x == a => (x, Activation::HardSwish),
                (_, Some(x)) if x == b => (x, Activation::HardSwish),
                _ => continue,
            }
        };
        if graph.values[x].shape != graph.values[graph.nodes[n].outputs[0]].shape {
            continue;
        }
        graph.nodes[n].op = Op::Activation(act);
        graph.nodes[n].inputs = vec![x];
    }
}

/// Replaces `x * act(x)` by the fused activation where `act` makes it one.
fn fuse_gated_activations(graph: &mut Graph) {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let mut dead = vec![false; graph.nodes.len()];
    for n in 0..graph.nodes.len() {
        let Op::Binary(BinaryOp::Mul) = graph.nodes[n].op else { continue };
        let (a, b) = (graph.nodes[n].inputs[0], graph.nodes[n].inputs[1]);
        for (x, gate) in [(a, b), (b, a)] {
            let Some(p) = producers[gate] else { continue };
            let fused = match graph.nodes[p].op {
                Op::Activation(Activation::Sigmoid) => Activation::Silu,
                Op::Activation(Activation::HardSigmoid { alpha, beta })
                    if (alpha - 1.0 / 6.0).abs() < 1e-6 && (beta - 0.5).abs() < 1e-6 =>
                {
                    Activation::HardSwish
                }
                _ => continue,
            };
            if graph.nodes[p].inputs[0] != x || graph.values[x].shape != graph.values[graph.nodes[n].outputs[0]].shape {
                continue;
            }
            if is_quantized(graph, gate) {
                continue; // the gate's own quantization would be lost
            }
            graph.nodes[n].op = Op::Activation(fused);
            graph.nodes[n].inputs = vec![x];
            if sole_consumer(graph, &consumers, gate) == Some(n) {
                dead[p] = true;
            }
            break;
        }
    }
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        !dead[i - 1]
    });
}

/// Per-output-channel values of a constant that broadcasts against an output
/// of shape `out` (channel axis `axis`), or None if it varies along another axis.
fn per_channel(graph: &Graph, id: ValueId, out: &[usize], axis: usize) -> Option<Vec<f32>> {
    let v = &graph.values[id];
    let data = v.data.as_ref()?;
    if v.shape.len() > out.len() {
        return None;
    }
    let offset = out.len() - v.shape.len();
    let channels = out[axis];
    for (a, &d) in v.shape.iter().enumerate() {
        if d != 1 && a + offset != axis {
            return None;
        }
    }
    if data.len() == 1 {
        Some(vec![data[0]; channels])
    } else if data.len() == channels && axis >= offset && v.shape[axis - offset] == channels {
        Some(data.to_vec())
    } else {
        None
    }
}

/// Merges one per-channel affine op into the Conv/Gemm producing its input;
/// returns whether anything changed.
fn fold_affine_into_conv(graph: &mut Graph) -> bool {
    let consumers = graph.consumers();
    for p in 0..graph.nodes.len() {
        let is_conv = match &graph.nodes[p].op {
            Op::Conv(c) if c.activation == Activation::Identity => true,
            Op::Gemm { activation: Activation::Identity, alpha, .. } if *alpha == 1.0 && graph.values[graph.nodes[p].inputs[1]].is_const() => false,
            _ => continue,
        };
        // Output channels are axis 1 for both: Conv [N, M, H, W], Gemm [rows, M].
        let channel_axis = 1;
        let y = graph.nodes[p].outputs[0];
        let Some(n) = sole_consumer(graph, &consumers, y) else { continue };
        let Op::Binary(op) = graph.nodes[n].op else { continue };
        // Quantized weights, bias grid, output or affine constant: nothing to merge into.
        // (A bias on the int32 grid goes with quantized weights.)
        if graph.nodes[p].inputs[1..].iter().chain(&graph.nodes[n].inputs).any(|&v| is_quantized(graph, v)) {
            continue;
        }
        let inputs = &graph.nodes[n].inputs;
        let other = if inputs[0] == y { inputs[1] } else { inputs[0] };
        if (op == BinaryOp::Sub || op == BinaryOp::Div) && inputs[0] != y {
            continue; // c - y and c / y are not affine in the weights
        }
        let out_shape = graph.values[y].shape.clone();
        if graph.values[graph.nodes[n].outputs[0]].shape != out_shape {
            continue; // the constant broadcasts the output to a larger shape
        }
        let Some(k) = per_channel(graph, other, &out_shape, channel_axis) else { continue };
        let (scale, shift): (Vec<f32>, Vec<f32>) = match op {
            BinaryOp::Mul => (k, vec![]),
            BinaryOp::Div => (k.iter().map(|v| 1.0 / v).collect(), vec![]),
            BinaryOp::Add => (vec![], k),
            BinaryOp::Sub => (vec![], k.iter().map(|v| -v).collect()),
            _ => continue,
        };
        let channels = out_shape[channel_axis];
        // New weight: scale each output channel. Conv weight [M, ...]; Gemm
        // B is [K, N] (or [N, K] with transB) with N the output channels.
        let w_id = graph.nodes[p].inputs[1];
        let mut w: Vec<f32> = graph.values[w_id].data.as_ref().expect("const").to_vec();
        if !scale.is_empty() {
            let trans_b = matches!(graph.nodes[p].op, Op::Gemm { trans_b: true, .. });
            if is_conv || trans_b {
                let per = w.len() / channels;
                w.chunks_mut(per).zip(&scale).for_each(|(row, s)| row.iter_mut().for_each(|v| *v *= s));
            } else {
                w.chunks_mut(channels).for_each(|row| row.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s));
            }
        }
        // New bias of shape [M]: old bias (Conv) or C (Gemm, only when per column).
        let old_bias: Vec<f32> = match graph.nodes[p].inputs.get(2) {
            None => vec![0.0; channels],
            // A Conv bias is [M] by definition (it does not broadcast numpy-style
            // against [N, M, H, W], so `per_channel` would reject it).
            Some(&b) if is_conv => match graph.const_data(b) {
                Some(v) if v.len() == channels => v.to_vec(),
                _ => continue,
            },
            Some(&b) => {
                let beta = if let Op::Gemm { beta, .. } = graph.nodes[p].op { beta } else { 1.0 };
                match per_channel(graph, b, &out_shape, channel_axis) {
                    Some(v) => v.iter().map(|x| x * beta).collect(),
                    None => continue,
                }
            }
        };
        let bias: Vec<f32> = (0..channels)
            .map(|c| {
                let s = if scale.is_empty() { 1.0 } else { scale[c] };
                let t = if shift.is_empty() { 0.0 } else { shift[c] };
                old_bias[c] * s + t
            })
            .collect();
        let w_shape = graph.values[w_id].shape.clone();
        let name = graph.nodes[p].name.clone();
        let new_w = graph.add_const(format!("{name}.weight"), w_shape, w);
        let new_b = graph.add_const(format!("{name}.bias"), vec![channels], bias);
        let out = graph.nodes[n].outputs[0];
        let node = &mut graph.nodes[p];
        node.inputs.truncate(1);
        node.inputs.push(new_w);
        node.inputs.push(new_b);
        node.outputs[0] = out;
        if let Op::Gemm { beta, .. } = &mut node.op {
            *beta = 1.0;
        }
        graph.nodes.remove(n);
        graph.prune();
        return true;
    }
    false
}

/// Merges a pointwise activation into the Conv, ConvTranspose or Gemm before it.
fn fuse_activations(graph: &mut Graph) {
    let consumers = graph.consumers();
    let mut dead = vec![false; graph.nodes.len()];
    for p in 0..graph.nodes.len() {
        if graph.nodes[p].op.fused_activation() != Some(Activation::Identity) {
            continue;
        }
        let y = graph.nodes[p].outputs[0];
        let Some(n) = sole_consumer(graph, &consumers, y) else { continue };
        let Op::Activation(act) = graph.nodes[n].op else { continue };
        if is_quantized(graph, y) {
            continue; // the op's quantized output is read by the activation
        }
        match &mut graph.nodes[p].op {
            Op::Conv(c) => c.activation = act,
            Op::ConvTranspose(c) => c.activation = act,
            Op::Gemm { activation, .. } => *activation = act,
            _ => unreachable!("fused_activation is Some only for these"),
        }
        graph.nodes[p].outputs[0] = graph.nodes[n].outputs[0];
        dead[n] = true;
    }
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        !dead[i - 1]
    });
}
