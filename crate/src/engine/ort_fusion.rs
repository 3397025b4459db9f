//! Which quantized nodes onnxruntime runs in float, for graphs whose [`Fusion`] is
//! `Onnxruntime` (foreign QDQ files).
//!
//! onnxruntime reads a QDQ file as float ops between DequantizeLinear and QuantizeLinear and
//! replaces a node unit (the op with its DQ inputs and Q outputs) by an integer kernel
//! (QLinearConv, QLinearAdd, QLinearMul, ...) only where its selectors accept it; every other
//! unit runs as DequantizeLinear → float op → QuantizeLinear. On x86 and WebAssembly two rules
//! decide which (onnxruntime 1.30: `qdq_s8_to_u8.cc`, `qdq_selectors.cc`,
//! `qdq_selector_action_transformer.h`):
//! - `QDQS8ToU8Transformer` rewrites an int8 QuantizeLinear → DequantizeLinear pair to uint8
//!   (zero point + 128, the same reals) when the QuantizeLinear has exactly one consumer and
//!   gives no graph output. A value read by two nodes has two DequantizeLinear consumers once
//!   they are made unique per node unit, so it stays int8; constants stay as stored.
//! - Those CPUs have no QLinearConv/MatMul on int8 activations (`QDQIsInt8Allowed`), and every
//!   selector wants a unit's quantized inputs and outputs to share one type.
//!
//! So in a file quantized with int8 activations (`quantize_static(activation_type=QInt8)`), the
//! Convs and Adds around a value read by two nodes (a residual branch) run in float: 14 Convs
//! and 9 Adds of EfficientNet-Lite0 (onnxruntime's profiler confirms both counts). With uint8
//! activations every unit is fused. The int8 engine runs the units named here in float too:
//! Add and Mul dequantize, compute and quantize in f32 as onnxruntime does, and a Conv adds in
//! MLAS's order (`kernels::conv_mlas`). Other unfused units (Gemm, MatMul, pools, table
//! activations) keep their integer form: we do not reproduce onnxruntime's float order there,
//! and exact integers are at least as close to it as another float order.
//!
//! The conversion also decides how a fused Add rounds (QLinearAdd adds the uint8 output zero
//! point before rounding): the planner asks [`storage`] for the type onnxruntime sees.

use crate::ir::{BinaryOp, Fusion, Graph, Op, ValueId};
use crate::quant::Quant;

/// The 8-bit type onnxruntime's kernels see for a quantized value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Storage {
    Uint8,
    Int8,
}

/// How many nodes read `v`.
pub(crate) fn readers(g: &Graph, v: ValueId) -> usize {
    g.nodes.iter().filter(|n| n.inputs.contains(&v)).count()
}

/// The type onnxruntime's kernels see for value `v` of a foreign graph, read by `readers` nodes:
/// uint8 as stored, or int8 converted to uint8 when its QuantizeLinear → DequantizeLinear pair
/// has one reader (a graph output counts as one: it reads the DequantizeLinear); constants stay
/// as stored. `None` for a value not quantized per tensor.
pub(crate) fn storage(g: &Graph, v: ValueId, readers: usize) -> Option<Storage> {
    let value = &g.values[v];
    let Some(Quant::Tensor(p)) = &value.quant else { return None };
    let converted = !value.is_const() && readers + usize::from(g.outputs.contains(&v)) == 1;
    Some(if !p.signed || converted { Storage::Uint8 } else { Storage::Int8 })
}

/// For each node of `g`, why onnxruntime runs it in float, for the nodes whose float result
/// the int8 engine reproduces (Conv, Add, Mul); `None` for every node unless `g.fusion` is
/// [`Fusion::Onnxruntime`].
pub(crate) fn unfused(g: &Graph) -> Vec<Option<String>> {
    let mut why = vec![None; g.nodes.len()];
    if g.fusion != Fusion::Onnxruntime {
        return why;
    }
    let consumers = g.consumers();
    let storage = |v: ValueId| storage(g, v, consumers[v].len());
    // Why a value keeps int8.
    let int8 = |v: ValueId| {
        let value = &g.values[v];
        let cause = match consumers[v].len() {
            _ if value.is_const() => "a constant".to_string(),
            n if g.outputs.contains(&v) => format!("a graph output read by {n} nodes"),
            n => format!("read by {n} nodes"),
        };
        format!("'{}' stays int8 ({cause})", value.name)
    };
    for (i, node) in g.nodes.iter().enumerate() {
        why[i] = match &node.op {
            Op::Conv(_) => {
                let (x, y) = (node.inputs[0], node.outputs[0]);
                match (storage(x), storage(y)) {
                    (Some(Storage::Uint8), Some(Storage::Uint8)) | (None, _) | (_, None) => None,
                    (sx, _) => {
                        let v = if sx == Some(Storage::Int8) { x } else { y };
                        Some(format!("onnxruntime runs it in float: {}, and its x86 and WebAssembly QLinearConv takes uint8 activations only", int8(v)))
                    }
                }
            }
            Op::Binary(op @ (BinaryOp::Add | BinaryOp::Mul)) => {
                let values = [node.inputs[0], node.inputs[1], node.outputs[0]];
                let types = values.map(storage);
                match types {
                    [Some(a), Some(b), Some(y)] if a != b || a != y => {
                        let v = values.into_iter().zip(types).find(|(_, t)| *t == Some(Storage::Int8)).map(|(v, _)| v).expect("one is int8");
                        let kernel = if *op == BinaryOp::Add { "QLinearAdd" } else { "QLinearMul" };
                        Some(format!("onnxruntime runs it in float: {}, and {kernel} needs one type for its inputs and output", int8(v)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
    }
    why
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::ir::{Activation, Conv, Node, Window2d};
    use crate::quant::params::QuantParams;

    fn tensor(signed: bool) -> Option<Quant> {
        Some(Quant::Tensor(QuantParams { scale: 0.05, zero_point: if signed { 0 } else { 128 }, bits: 8, signed, symmetric: false }))
    }

    fn conv(g: &mut Graph, name: &str, x: ValueId, signed: bool) -> ValueId {
        let w = g.add_const(format!("{name}.w"), vec![4, 4, 1, 1], vec![0.5; 16]);
        let y = g.add_value(name, vec![1, 4, 2, 2]);
        g.values[y].quant = tensor(signed);
        let window = Window2d { kernel: [1, 1], strides: [1, 1], dilations: [1, 1], pads: [0; 4] };
        g.nodes.push(Node { name: name.into(), op: Op::Conv(Conv { window, group: 1, activation: Activation::Identity }), inputs: vec![x, w], outputs: vec![y] });
        y
    }

    /// A residual block as onnxruntime's quantizer writes it: `x` feeds the block's first Conv
    /// and the Add; `h` only the second Conv.
    fn residual(signed: bool) -> Graph {
        let mut g = Graph { fusion: Fusion::Onnxruntime, ..Graph::default() };
        let input = g.add_value("input", vec![1, 4, 2, 2]);
        g.values[input].quant = tensor(signed);
        g.inputs.push(input);
        let x = conv(&mut g, "stem", input, signed);
        let h = conv(&mut g, "expand", x, signed);
        let p = conv(&mut g, "project", h, signed);
        let y = g.add_value("sum", vec![1, 4, 2, 2]);
        g.values[y].quant = tensor(signed);
        g.nodes.push(Node { name: "add".into(), op: Op::Binary(BinaryOp::Add), inputs: vec![x, p], outputs: vec![y] });
        let out = conv(&mut g, "head", y, signed);
        g.outputs.push(out);
        g
    }

    fn unfused_names(g: &Graph) -> Vec<(&str, String)> {
        unfused(g).into_iter().enumerate().filter_map(|(i, why)| why.map(|w| (g.nodes[i].name.as_str(), w))).collect()
    }

    #[test]
    fn int8_values_read_twice_leave_their_convs_and_adds_in_float() {
        let g = residual(true);
        let names = unfused_names(&g);
        // stem writes x (read by expand and add), expand reads it; add joins x (int8) with
        // project's output (converted). The graph input and output are read once: converted.
        assert_eq!(names.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["stem", "expand", "add"], "{names:?}");
        assert!(names[0].1.contains("'stem' stays int8 (read by 2 nodes)"), "{}", names[0].1);
        assert!(names[1].1.contains("QLinearConv takes uint8 activations only"), "{}", names[1].1);
        assert!(names[2].1.contains("QLinearAdd"), "{}", names[2].1);
        // The types onnxruntime's kernels see (which also choose the int8 Add's rounding).
        let seen = |name: &str| {
            let v = g.find_value(name).unwrap();
            storage(&g, v, readers(&g, v))
        };
        assert_eq!(seen("stem"), Some(Storage::Int8));
        assert_eq!([seen("input"), seen("expand"), seen("project"), seen("sum"), seen("head")], [Some(Storage::Uint8); 5]);
    }

    #[test]
    fn uint8_files_and_our_own_graphs_run_every_node_in_integers() {
        assert!(unfused_names(&residual(false)).is_empty());
        let ours = Graph { fusion: Fusion::Integer, ..residual(true) };
        assert!(unfused(&ours).iter().all(Option::is_none));
    }
}
