//! Which values of a graph PTQ quantizes, and where each one's parameters come from.
//!
//! Every op has a [`Role`]:
//! - **Compute** ops make new values (Conv, Gemm, Add, activations, average pools, Concat...):
//!   their activation inputs and outputs are quantized; an output's range is calibrated.
//! - **Follow** ops move or select values without changing them (Reshape, Transpose, MaxPool,
//!   Slice, nearest Resize, zero Pad...): the output takes the input's parameters, so the int8
//!   engine copies integers and export writes the same scale on both sides (onnxruntime does the
//!   same). A Follow op on a float value stays float.
//! - **Float** ops (Softmax, Div, Exp, reductions...) have no quantized form worth having; they
//!   read dequantized values.
//!
//! A node the user keeps in float gets the Float role whatever its op. Its neighbours still
//! quantize the values they share with it: a kept-float Conv between two quantized Convs reads a
//! dequantized input and its output is quantized again for the next layer, which is what
//! QDQ export writes and what onnxruntime runs.

use super::super::ir::{Activation, Graph, Node, Op, PadMode, ResizeMode, ValueId};
use crate::ir::BinaryOp;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Compute,
    Follow,
    Float,
}

pub fn role(op: &Op) -> Role {
    match op {
        Op::Conv(_) | Op::ConvTranspose(_) | Op::Gemm { .. } | Op::MatMul => Role::Compute,
        Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul) => Role::Compute,
        Op::Activation(_) | Op::PRelu => Role::Compute,
        Op::AveragePool { .. } | Op::GlobalAveragePool | Op::Concat { .. } => Role::Compute,
        Op::Resize { mode: ResizeMode::Linear, .. } => Role::Compute,
        Op::Pad { mode: PadMode::Constant(v), .. } if *v != 0.0 => Role::Compute,
        Op::Resize { .. } | Op::Pad { .. } => Role::Follow,
        Op::MaxPool { .. } | Op::GlobalMaxPool => Role::Follow,
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::Split { .. } | Op::Gather { .. } => Role::Follow,
        Op::Binary(_) | Op::Unary(_) | Op::Softmax { .. } | Op::Reduce { .. } => Role::Float,
    }
}

/// Where a value's quantization comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuePlan {
    /// Stays f32.
    Float,
    /// An activation (or graph input) whose range is calibrated.
    Observed,
    /// Takes the parameters of another value (always an `Observed` one).
    SameAs(ValueId),
    /// The weight of a Conv, ConvTranspose, Gemm or MatMul; `axis` is its output-channel axis.
    Weight { axis: usize },
    /// A constant operand of a Compute op other than a weight, quantized per tensor.
    Constant,
}

#[derive(Clone, Debug)]
pub struct QuantPlan {
    pub values: Vec<ValuePlan>,
    /// Per node: its role after the user's keep-float list.
    pub roles: Vec<Role>,
}

impl QuantPlan {
    /// The value whose calibrated range `v` uses, if `v` is an activation to quantize.
    pub fn observed_root(&self, v: ValueId) -> Option<ValueId> {
        match self.values[v] {
            ValuePlan::Observed => Some(v),
            ValuePlan::SameAs(r) => Some(r),
            _ => None,
        }
    }
}

/// The output-channel axis of a weighted node's weight (input 1), or None if the node has no
/// constant weight there.
pub fn weight_axis(graph: &Graph, node: &Node) -> Option<usize> {
    let w = *node.inputs.get(1)?;
    let value = graph.value(w);
    if !value.is_const() {
        return None;
    }
    match &node.op {
        Op::Conv(_) => Some(0),
        // [C_in, M / group, kh, kw]: per channel only when one group holds every output.
        Op::ConvTranspose(c) if c.group == 1 => Some(1),
        Op::ConvTranspose(_) => None,
        Op::Gemm { trans_b, .. } => Some(if *trans_b { 0 } else { 1 }),
        Op::MatMul => Some(value.shape.len().saturating_sub(1)),
        _ => None,
    }
}

/// Plans the quantization of `graph`, keeping the nodes named in `keep_float` in float.
/// Unknown names are an error (a typo must not silently quantize the layer).
pub fn plan(graph: &Graph, keep_float: &[String]) -> Result<QuantPlan> {
    for name in keep_float {
        if !graph.nodes.iter().any(|n| &n.name == name) {
            let known: Vec<&str> = graph.nodes.iter().filter(|n| n.op.has_weights()).take(8).map(|n| n.name.as_str()).collect();
            return Err(Error::Invalid(format!("keep-float: the model has no node named '{name}' (layers are named like: {})", known.join(", "))));
        }
    }
    let roles: Vec<Role> = graph.nodes.iter().map(|n| if keep_float.contains(&n.name) { Role::Float } else { role(&n.op) }).collect();
    let mut values = vec![ValuePlan::Float; graph.values.len()];
    for (node, &role) in graph.nodes.iter().zip(&roles) {
        if role != Role::Compute {
            continue;
        }
        let axis = weight_axis(graph, node);
        for (i, &v) in node.inputs.iter().enumerate() {
            let weighted = node.op.has_weights();
            values[v] = match (i, graph.value(v).is_const()) {
                // A Conv/Gemm bias becomes int32 with the weights; it is not annotated.
                (2, _) if weighted => continue,
                (1, true) if weighted => match axis {
                    Some(axis) => ValuePlan::Weight { axis },
                    None => ValuePlan::Constant,
                },
                (_, true) => ValuePlan::Constant,
                (_, false) => ValuePlan::Observed,
            };
        }
        for &o in &node.outputs {
            values[o] = ValuePlan::Observed;
        }
    }
    // Follow ops in order, so chains (Reshape after Transpose after MaxPool) resolve forwards.
    for (node, &role) in graph.nodes.iter().zip(&roles) {
        if role != Role::Follow {
            continue;
        }
        let x = node.inputs[0];
        let root = match values[x] {
            ValuePlan::Observed => Some(x),
            ValuePlan::SameAs(r) => Some(r),
            _ => None,
        };
        if let Some(root) = root {
            for &o in &node.outputs {
                values[o] = ValuePlan::SameAs(root);
            }
        }
    }
    Ok(QuantPlan { values, roles })
}

/// Leaves the model's outputs in float: each graph output, and back through the Follow ops
/// that only carry it (Reshape, Transpose...), the Compute op making it then writes float (the
/// int8 engine runs that last op on dequantized inputs). Detector heads whose logits span
/// hundreds of units lose their small, decisive values on an 8-bit grid; the cost is one
/// layer per output run in float.
pub fn keep_outputs_float(graph: &Graph, plan: &mut QuantPlan) {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let mut stack: Vec<ValueId> = graph.outputs.clone();
    while let Some(v) = stack.pop() {
        if matches!(plan.values[v], ValuePlan::Float | ValuePlan::Weight { .. } | ValuePlan::Constant) {
            continue;
        }
        // Another reader that needs the integers keeps the value quantized.
        let needed = consumers[v].iter().any(|&n| plan.roles[n] == Role::Compute);
        if needed {
            continue;
        }
        plan.values[v] = ValuePlan::Float;
        if let Some(n) = producers[v] {
            if plan.roles[n] == Role::Follow {
                // The Follow op now writes float, so its input need not be quantized for it.
                let x = graph.nodes[n].inputs[0];
                if consumers[x].iter().all(|&c| c == n || plan.roles[c] != Role::Compute) && !graph.outputs.contains(&x) {
                    stack.push(x);
                }
            }
        }
    }
    // Values that followed a value now float have nothing to follow: calibrate them.
    for v in 0..plan.values.len() {
        if let ValuePlan::SameAs(r) = plan.values[v] {
            if plan.values[r] == ValuePlan::Float {
                plan.values[v] = ValuePlan::Observed;
            }
        }
    }
}

/// Folds a ReLU or a `Clip(0, max)` node into the range of the value it reads, when that value
/// is made by a node and read by nothing else: the value takes the activation output's
/// parameters (`SameAs`). With asymmetric activations that grid starts at exactly 0 (its zero
/// point is `qmin`) and ends at most at `max`, so the producer's own requantization and clamp
/// to `[qmin, qmax]` already apply the activation: the activation node becomes the identity on
/// integers (a clamp table, run as min/max), and the sum is rounded once, onto the finer grid
/// of the activation's range, instead of onto its own range and then again. This is what the
/// fused activations of Conv/Gemm get from their epilogue, for any producer (Add, Concat,
/// average pools...). Symmetric activations put 0 mid-grid, so nothing folds.
pub fn fold_clamps_into_producers(graph: &Graph, plan: &mut QuantPlan) {
    let producers = graph.producers();
    let consumers = graph.consumers();
    for (n, node) in graph.nodes.iter().enumerate() {
        if folding_clamp(&node.op).is_none() || plan.roles[n] != Role::Compute {
            continue;
        }
        let (x, y) = (node.inputs[0], node.outputs[0]);
        // The producer's role does not matter: a kept-float producer's output is quantized
        // for its quantized reader anyway, and the plans with and without it then agree.
        if producers[x].is_some() && plan.values[x] == ValuePlan::Observed && plan.values[y] == ValuePlan::Observed && consumers[x] == [n] && !graph.outputs.contains(&x) {
            plan.values[x] = ValuePlan::SameAs(y);
        }
    }
}

/// The activation of a ReLU or `Clip(0, max)` node, the ones that fold into the range of the
/// value they read ([`fold_clamps_into_producers`]); also how QAT and the per-layer error
/// recognise a folded pair (equal parameters on both sides).
pub fn folding_clamp(op: &Op) -> Option<Activation> {
    match *op {
        Op::Activation(act @ Activation::Relu) => Some(act),
        Op::Activation(act @ Activation::Clip { min, max }) if min == 0.0 && max > 0.0 => Some(act),
        _ => None,
    }
}

/// True for fused activations the int8 engine applies as a clamp of the output range; others
/// (HardSwish, SiLU, Sigmoid...) need their own quantized input.
pub fn folds_into_range(act: Activation) -> bool {
    matches!(act, Activation::Identity | Activation::Relu | Activation::Clip { .. })
}

/// Splits activations that do not fold into the output range out of Conv/ConvTranspose/Gemm
/// into their own node, so the pre-activation value can be quantized (as QDQ writes it:
/// Conv -> Q/DQ -> HardSwish -> Q/DQ). Value ids of existing values are unchanged.
pub fn split_fused_activations(graph: &mut Graph) {
    let mut n = 0;
    while n < graph.nodes.len() {
        let act = graph.nodes[n].op.fused_activation();
        if let Some(act) = act.filter(|&a| !folds_into_range(a)) {
            let y = graph.nodes[n].outputs[0];
            let name = graph.nodes[n].name.clone();
            let pre = graph.add_value(format!("{}.preact", graph.values[y].name), graph.values[y].shape.clone());
            match &mut graph.nodes[n].op {
                Op::Conv(c) => c.activation = Activation::Identity,
                Op::ConvTranspose(c) => c.activation = Activation::Identity,
                Op::Gemm { activation, .. } => *activation = Activation::Identity,
                _ => unreachable!("fused_activation is Some only for these"),
            }
            graph.nodes[n].outputs[0] = pre;
            let node = Node { name: format!("{name}.{}", crate::ir::activation_name(act)), op: Op::Activation(act), inputs: vec![pre], outputs: vec![y] };
            graph.nodes.insert(n + 1, node);
            n += 1;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Conv, Window2d};

    fn conv(activation: Activation) -> Op {
        Op::Conv(Conv { window: Window2d { kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pads: [0; 4] }, group: 1, activation })
    }

    /// x -> Conv(HardSwish) -> MaxPool -> Reshape -> Softmax -> y
    fn graph() -> Graph {
        let mut g = Graph::default();
        let x = g.add_value("x", vec![1, 2, 4, 4]);
        let w = g.add_const("w", vec![3, 2, 1, 1], vec![0.5; 6]);
        let b = g.add_const("b", vec![3], vec![0.1; 3]);
        let c = g.add_value("c", vec![1, 3, 4, 4]);
        let p = g.add_value("p", vec![1, 3, 2, 2]);
        let r = g.add_value("r", vec![1, 12]);
        let y = g.add_value("y", vec![1, 12]);
        let window = Window2d { kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [0; 4] };
        g.nodes.push(Node { name: "conv".into(), op: conv(Activation::HardSwish), inputs: vec![x, w, b], outputs: vec![c] });
        g.nodes.push(Node { name: "pool".into(), op: Op::MaxPool { window, ceil_mode: false }, inputs: vec![c], outputs: vec![p] });
        g.nodes.push(Node { name: "flat".into(), op: Op::Reshape { shape: vec![1, 12] }, inputs: vec![p], outputs: vec![r] });
        g.nodes.push(Node { name: "softmax".into(), op: Op::Softmax { axis: 1, log: false }, inputs: vec![r], outputs: vec![y] });
        g.inputs = vec![x];
        g.outputs = vec![y];
        g.validate().unwrap();
        g
    }

    #[test]
    fn follow_ops_share_the_parameters_of_their_input_and_float_ops_stay_float() {
        let mut g = graph();
        split_fused_activations(&mut g);
        g.validate().unwrap();
        assert_eq!(g.nodes.len(), 5);
        assert_eq!(g.nodes[1].op, Op::Activation(Activation::HardSwish));
        let p = plan(&g, &[]).unwrap();
        let id = |name: &str| g.find_value(name).unwrap();
        assert_eq!(p.values[id("x")], ValuePlan::Observed);
        assert_eq!(p.values[id("w")], ValuePlan::Weight { axis: 0 });
        assert_eq!(p.values[id("b")], ValuePlan::Float);
        assert_eq!(p.values[id("c.preact")], ValuePlan::Observed);
        assert_eq!(p.values[id("c")], ValuePlan::Observed);
        assert_eq!(p.values[id("p")], ValuePlan::SameAs(id("c")));
        assert_eq!(p.values[id("r")], ValuePlan::SameAs(id("c")));
        assert_eq!(p.values[id("y")], ValuePlan::Float);
    }

    /// x, z -> Add -> a -> act -> y, with `a` also read by `extra` when asked.
    fn add_then(act: Activation, extra: bool) -> Graph {
        let mut g = Graph::default();
        let x = g.add_value("x", vec![1, 4]);
        let z = g.add_value("z", vec![1, 4]);
        let a = g.add_value("a", vec![1, 4]);
        let y = g.add_value("y", vec![1, 4]);
        g.nodes.push(Node { name: "add".into(), op: Op::Binary(BinaryOp::Add), inputs: vec![x, z], outputs: vec![a] });
        g.nodes.push(Node { name: "act".into(), op: Op::Activation(act), inputs: vec![a], outputs: vec![y] });
        g.inputs = vec![x, z];
        g.outputs = vec![y];
        if extra {
            let e = g.add_value("e", vec![1, 4]);
            g.nodes.push(Node { name: "extra".into(), op: Op::Binary(BinaryOp::Mul), inputs: vec![a, x], outputs: vec![e] });
            g.outputs.push(e);
        }
        g.validate().unwrap();
        g
    }

    #[test]
    fn relu_and_clip_at_zero_fold_into_the_range_of_the_value_they_read() {
        let folded = |act, extra, keep: &[&str]| {
            let g = add_then(act, extra);
            let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
            let mut p = plan(&g, &keep).unwrap();
            fold_clamps_into_producers(&g, &mut p);
            let (a, y) = (g.find_value("a").unwrap(), g.find_value("y").unwrap());
            match p.values[a] {
                ValuePlan::SameAs(r) => {
                    assert_eq!((r, p.values[y]), (y, ValuePlan::Observed));
                    true
                }
                other => {
                    assert_eq!(other, ValuePlan::Observed);
                    false
                }
            }
        };
        assert!(folded(Activation::Relu, false, &[]));
        assert!(folded(Activation::Clip { min: 0.0, max: 6.0 }, false, &[]));
        // A kept-float Add still writes a value quantized for the ReLU: the same plan.
        assert!(folded(Activation::Relu, false, &["add"]));
        // Not a clamp at 0 (its grid would not start at the clamp), another reader, a
        // kept-float activation, a non-clamp activation.
        assert!(!folded(Activation::Clip { min: 1.0, max: 6.0 }, false, &[]));
        assert!(!folded(Activation::Relu, true, &[]));
        assert!(!folded(Activation::Relu, false, &["act"]));
        assert!(!folded(Activation::HardSwish, false, &[]));
    }

    #[test]
    fn kept_float_nodes_run_in_float_and_unknown_names_are_errors() {
        let g = graph();
        let p = plan(&g, &["conv".to_string()]).unwrap();
        assert_eq!(p.roles[0], Role::Float);
        assert_eq!(p.values[g.find_value("w").unwrap()], ValuePlan::Float);
        assert_eq!(p.values[g.find_value("c").unwrap()], ValuePlan::Float);
        let err = plan(&g, &["cnov".to_string()]).unwrap_err().to_string();
        assert!(err.contains("no node named 'cnov'") && err.contains("conv"), "{err}");
    }
}
