//! ONNX export and QDQ import (`onnx::export`, `onnx::qdq`):
//! - round trips export -> import give the same graph (ops, names, shapes, annotations,
//!   constant data bit for bit) and the same outputs bit for bit: float and annotated graphs,
//!   the shipped models and a graph of every IR op, at several opsets; PTQ results;
//! - the QDQ structure of an export (int8 per-channel weights with `axis`, int32 biases at
//!   `s_x · s_w`, uint8 zero points, the range Clip of narrower ranges, names kept);
//! - foreign QDQ files (onnxruntime's quantize_static output in tests/fixtures/ort-qdq/) import
//!   as quantized graphs and classify like the float models;
//! - the import's errors name the node; the passes leave quantized values alone.
//!
//! onnxruntime itself runs the exported files in tests/ort/ (`make test-ort`).

mod common;

use common::*;
use prost::Message;
use quant_playground::engine::Fp32Engine;
use quant_playground::ir::*;
use quant_playground::onnx::export::{export_model, RANGES_KEY};
use quant_playground::onnx::{self, ExportOptions, ImportOptions};
use quant_playground::preprocess::Layout;
use quant_playground::quant::params::{from_range, quantize_weights, WeightRange};
use quant_playground::quant::ptq::{snap_bias, Calibrator, QuantConfig};
use quant_playground::quant::Quant;
use quant_playground::Model;
use tract_onnx::pb;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ort-qdq");

struct Shipped {
    name: &'static str,
    bytes: &'static [u8],
    options: ImportOptions,
    frames: Vec<Vec<f32>>,
}

fn shipped() -> Vec<Shipped> {
    let frames = |preset: &str, w: usize, h: usize, layout: Layout| -> Vec<Vec<f32>> {
        IMAGES[..3].iter().map(|(_, bytes)| image_tensor(bytes, preset, w, h, layout)).collect()
    };
    let mut ppocr = ImportOptions::default();
    ppocr.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    vec![
        Shipped { name: "efficientnet_lite0", bytes: EFFICIENTNET, options: ImportOptions::default(), frames: frames("lite", 224, 224, Layout::Nchw) },
        Shipped { name: "blazeface_front_128", bytes: BLAZEFACE, options: ImportOptions::default(), frames: frames("signed", 128, 128, Layout::Nhwc) },
        Shipped { name: "ppocr_cls_mobile_v2", bytes: PPOCR, options: ppocr, frames: frames("ppocr", 192, 48, Layout::Nchw) },
    ]
}

fn load(bytes: &[u8], options: &ImportOptions) -> Graph {
    onnx::import(bytes, options).unwrap().graph
}

fn export(g: &Graph, opset: i64) -> Vec<u8> {
    onnx::export(g, &ExportOptions { opset, ..Default::default() }).unwrap_or_else(|e| panic!("export at opset {opset}: {e}"))
}

fn reimport(g: &Graph, opset: i64) -> Graph {
    let bytes = export(g, opset);
    onnx::import(&bytes, &ImportOptions::default()).unwrap_or_else(|e| panic!("re-import of the opset {opset} export: {e}")).graph
}

fn run(g: &Graph, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    Fp32Engine::new(g.clone()).run(inputs).unwrap()
}

/// Bits of f32 data, with -0.0 read as 0.0 (DequantizeLinear gives `0 · s = +0`).
fn bits(data: &[f32]) -> Vec<u32> {
    data.iter().map(|&x| if x == 0.0 { 0 } else { x.to_bits() }).collect()
}

fn describe(g: &Graph) -> String {
    g.nodes.iter().map(|n| format!("{} {}", n.op.name(), n.name)).collect::<Vec<_>>().join("\n")
}

fn assert_same_value(a: &Graph, ia: ValueId, b: &Graph, ib: ValueId, what: &str) {
    let (va, vb) = (&a.values[ia], &b.values[ib]);
    assert_eq!(va.name, vb.name, "{what}: value names");
    assert_eq!(va.shape, vb.shape, "{what}: shape of '{}'", va.name);
    assert_eq!(va.quant, vb.quant, "{what}: quantization of '{}'", va.name);
    match (&va.data, &vb.data) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!(bits(x) == bits(y), "{what}: data of constant '{}' differs", va.name),
        _ => panic!("{what}: '{}' is constant on one side only", va.name),
    }
}

/// Same nodes (ops, names), same values (names, shapes, annotations, constant data), same
/// inputs and outputs.
fn assert_same_graph(a: &Graph, b: &Graph, what: &str) {
    assert_eq!(a.nodes.len(), b.nodes.len(), "{what}: node count\n--- before\n{}\n--- after\n{}", describe(a), describe(b));
    for (na, nb) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(na.op, nb.op, "{what}: node '{}'", na.name);
        assert_eq!(na.name, nb.name, "{what}: node names");
        assert_eq!(na.inputs.len(), nb.inputs.len(), "{what}: inputs of '{}'", na.name);
        for (&ia, &ib) in na.inputs.iter().zip(&nb.inputs).chain(na.outputs.iter().zip(&nb.outputs)) {
            assert_same_value(a, ia, b, ib, &format!("{what}, node '{}'", na.name));
        }
    }
    assert_eq!(a.inputs.len(), b.inputs.len(), "{what}: inputs");
    assert_eq!(a.outputs.len(), b.outputs.len(), "{what}: outputs");
    for (&ia, &ib) in a.inputs.iter().zip(&b.inputs).chain(a.outputs.iter().zip(&b.outputs)) {
        assert_same_value(a, ia, b, ib, &format!("{what}, graph input/output"));
    }
}

fn assert_same_outputs(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(bits(x) == bits(y), "{what}: output {k} differs");
    }
}

/// The output-channel axis of a weighted node's weight, as PTQ chooses it.
fn weight_axis(g: &Graph, node: &Node) -> Option<usize> {
    let w = *node.inputs.get(1)?;
    if !g.values[w].is_const() {
        return None;
    }
    match &node.op {
        Op::Conv(_) => Some(0),
        Op::ConvTranspose(c) if c.group == 1 => Some(1),
        Op::Gemm { trans_b, .. } => Some(if *trans_b { 0 } else { 1 }),
        Op::MatMul => Some(g.values[w].shape.len() - 1),
        _ => None,
    }
}

/// Annotates a float graph in test code, the way PTQ would but with every variant mixed in:
/// activations from observed ranges (int8 and uint8 storage, asymmetric and symmetric, 8 and
/// 4 bits), weights per channel and per tensor at 8 and 4 bits written back dequantized,
/// biases snapped to their int32 grid, constant elementwise operands per tensor.
fn annotate(g: &Graph, frames: &[&[f32]]) -> Graph {
    let mut ranges: Vec<Option<(f32, f32)>> = vec![None; g.values.len()];
    let mut widen = |v: ValueId, data: &[f32]| {
        let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        let r = ranges[v].get_or_insert((lo, hi));
        *r = (r.0.min(lo), r.1.max(hi));
    };
    let engine = Fp32Engine::new(g.clone());
    for frame in frames {
        widen(g.inputs[0], frame);
        engine.run_observed(&[frame], &mut |v, data| widen(v, data)).unwrap();
    }
    let mut q = g.clone();
    for (v, range) in ranges.iter().enumerate() {
        let Some((lo, hi)) = range else { continue };
        let (bits, symmetric, signed) = (if v % 11 == 3 { 4 } else { 8 }, v % 7 == 2, v % 5 != 1);
        q.values[v].quant = Some(Quant::Tensor(from_range(*lo, *hi, bits, symmetric).with_storage(signed)));
    }
    for n in 0..q.nodes.len() {
        let node = q.nodes[n].clone();
        if let Some(axis) = weight_axis(&q, &node) {
            let w = node.inputs[1];
            if q.values[w].quant.is_none() {
                let (bits, per_channel) = (if n % 3 == 1 { 4 } else { 8 }, n % 4 != 2);
                let range = if bits < 8 { WeightRange::Mse } else { WeightRange::MaxAbs };
                let data = q.const_data(w).unwrap().to_vec();
                let shape = q.values[w].shape.clone();
                let (params, ints) = quantize_weights(&data, &shape, per_channel.then_some(axis), bits, range);
                q.values[w].data = Some(params.dequantize(&ints, &shape).into());
                q.values[w].quant = Some(Quant::Weight(params));
            }
            let (Some(Quant::Tensor(xp)), Some(Quant::Weight(wp)), Some(&b)) = (q.values[node.inputs[0]].quant.clone(), q.values[w].quant.clone(), node.inputs.get(2)) else { continue };
            if !matches!(node.op, Op::MatMul) && q.values[b].is_const() && (wp.is_per_tensor() || wp.scales.len() == q.values[b].len()) {
                let snapped = snap_bias(q.const_data(b).unwrap(), xp.scale, &wp);
                q.values[b].data = Some(snapped.into());
            }
        } else if matches!(node.op, Op::Binary(_) | Op::PRelu) {
            for &c in &node.inputs {
                if q.values[c].is_const() && q.values[c].quant.is_none() {
                    let data = q.const_data(c).unwrap().to_vec();
                    let (lo, hi) = data.iter().fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
                    let p = from_range(lo, hi, 8, c % 2 == 0).with_storage(c % 3 != 0);
                    q.values[c].data = Some(data.iter().map(|&x| p.fake_quantize(x)).collect::<Vec<_>>().into());
                    q.values[c].quant = Some(Quant::Tensor(p));
                }
            }
        }
    }
    q.validate().unwrap();
    q
}

#[test]
fn float_models_round_trip_exactly() {
    for m in shipped() {
        let g = load(m.bytes, &m.options);
        let back = reimport(&g, 17);
        assert_same_graph(&g, &back, m.name);
        let x: &[f32] = &m.frames[0];
        assert_same_outputs(&run(&g, &[x]), &run(&back, &[x]), m.name);
        assert!(back.values.iter().all(|v| v.quant.is_none()), "{}: a float model stays float", m.name);
    }
}

#[test]
fn annotated_models_round_trip_exactly() {
    for m in shipped() {
        let frames: Vec<&[f32]> = m.frames.iter().map(|f| f.as_slice()).collect();
        let g = annotate(&load(m.bytes, &m.options), &frames);
        let back = reimport(&g, 17);
        assert_same_graph(&g, &back, m.name);
        for x in &frames {
            assert_same_outputs(&run(&g, &[x]), &run(&back, &[x]), m.name);
        }
        // Twice changes nothing either.
        assert_same_graph(&back, &reimport(&back, 17), m.name);
    }
}

#[test]
fn ptq_results_round_trip_exactly() {
    let configs = [
        QuantConfig::default(),
        QuantConfig { activation_signed: true, weight_bits: 4, per_channel: false, ..Default::default() },
        QuantConfig { activation_symmetric: true, activation_bits: 6, ..Default::default() },
        // TFLite's rounding: the export records it and import runs it again.
        QuantConfig { requantization: Requantization::FixedPoint, ..Default::default() },
    ];
    for m in shipped() {
        let g = load(m.bytes, &m.options);
        for (k, config) in configs.iter().enumerate() {
            let what = format!("{} config {k}", m.name);
            let mut calibrator = Calibrator::new(&g, config.clone()).unwrap();
            for f in &m.frames[..2] {
                calibrator.observe(&[f]).unwrap();
            }
            let q = calibrator.quantize().unwrap();
            let back = reimport(&q, 17);
            assert_same_graph(&q, &back, &what);
            assert_eq!(back.requantization, config.requantization, "{what}: the rounding convention");
            let x: &[f32] = &m.frames[2];
            assert_same_outputs(&run(&q, &[x]), &run(&back, &[x]), &what);
            // The int8 engine runs both the same way.
            let a = quant_playground::engine::Int8Engine::new(q.clone()).unwrap().run(&[x]).unwrap();
            let b = quant_playground::engine::Int8Engine::new(back).unwrap().run(&[x]).unwrap();
            assert_same_outputs(&a, &b, &format!("{what} (int8 engine)"));
        }
    }
}

// ---- a graph of every op ----

fn add(g: &mut Graph, name: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
    let shapes: Vec<&[usize]> = inputs.iter().map(|&i| g.values[i].shape.as_slice()).collect();
    let out = infer_shapes(&op, &shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ids: Vec<ValueId> = out.into_iter().enumerate().map(|(k, s)| g.add_value(if k == 0 { name.to_string() } else { format!("{name}:{k}") }, s)).collect();
    g.nodes.push(Node { name: format!("{name}_node"), op, inputs, outputs: ids.clone() });
    ids[0]
}

fn constant(g: &mut Graph, name: &str, shape: &[usize], seed: u32) -> ValueId {
    let n: usize = shape.iter().product();
    let mut x = seed.max(1);
    let data = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    g.add_const(name, shape.to_vec(), data)
}

fn window(k: usize, s: usize, d: usize, p: usize) -> Window2d {
    Window2d { kernel: [k, k], strides: [s, s], dilations: [d, d], pads: [p, p, p + 1, p] }
}

/// Every IR op and fused activation once, on [1, 4, 10, 10]; outputs at several places.
fn every_op_graph() -> Graph {
    use Activation as A;
    let mut g = Graph::default();
    let x = g.add_value("image", vec![1, 4, 10, 10]);
    g.inputs.push(x);
    let conv = |act| Op::Conv(Conv { window: window(3, 1, 1, 1), group: 1, activation: act });
    let mut h = x;
    let acts = [
        A::Relu,
        A::Clip { min: -0.5, max: 0.75 },
        A::LeakyRelu { alpha: 0.1 },
        A::Sigmoid,
        A::HardSigmoid { alpha: 0.3, beta: 0.4 },
        A::HardSwish,
        A::Silu,
        A::Tanh,
        A::Clip { min: 0.0, max: 6.0 },
    ];
    for (k, act) in acts.into_iter().enumerate() {
        let w = constant(&mut g, &format!("w{k}"), &[4, 4, 3, 3], 11 + k as u32);
        let b = constant(&mut g, &format!("b{k}"), &[4], 31 + k as u32);
        let y = add(&mut g, &format!("conv{k}"), conv(act), vec![h, w, b]);
        // Pads [1, 1, 2, 1] grow the height by one: crop it back.
        h = add(&mut g, &format!("crop{k}"), Op::Slice { starts: vec![0, 0, 1, 0], steps: vec![1; 4], sizes: vec![1, 4, 10, 10] }, vec![y]);
    }
    let dw = constant(&mut g, "dw", &[4, 1, 3, 3], 5);
    let d = add(&mut g, "depthwise", Op::Conv(Conv { window: window(3, 2, 2, 2), group: 4, activation: A::Identity }), vec![h, dw]);
    let tw = constant(&mut g, "tw", &[4, 2, 3, 3], 6);
    let ct = Op::ConvTranspose(ConvTranspose { window: window(3, 2, 1, 1), output_padding: [1, 0], group: 2, activation: A::Relu });
    let t = add(&mut g, "deconv", ct, vec![d, tw]);
    let mp = add(&mut g, "maxpool", Op::MaxPool { window: window(2, 2, 1, 0), ceil_mode: true }, vec![t]);
    let ap = add(&mut g, "avgpool", Op::AveragePool { window: window(3, 1, 1, 1), ceil_mode: false, count_include_pad: true }, vec![h]);
    let ap2 = add(&mut g, "avgpool2", Op::AveragePool { window: window(2, 2, 1, 0), ceil_mode: false, count_include_pad: false }, vec![ap]);
    let gap = add(&mut g, "gap", Op::GlobalAveragePool, vec![ap2]);
    let gmp = add(&mut g, "gmp", Op::GlobalMaxPool, vec![mp]);
    let sum = add(&mut g, "sum", Op::Binary(BinaryOp::Add), vec![gap, gmp]);
    let pads = [PadMode::Constant(0.25), PadMode::Reflect, PadMode::Edge];
    let mut p = h;
    for (k, mode) in pads.into_iter().enumerate() {
        p = add(&mut g, &format!("pad{k}"), Op::Pad { begin: vec![0, 0, 1, 2], end: vec![0, 0, 2, 1], mode }, vec![p]);
    }
    let up = add(
        &mut g,
        "upsample",
        Op::Resize { mode: ResizeMode::Nearest, coord: CoordTransform::Asymmetric, nearest: NearestMode::Floor, shape: vec![1, 4, 38, 38], scales: Some(vec![1.0, 1.0, 2.0, 2.0]) },
        vec![p],
    );
    let down = add(
        &mut g,
        "downsample",
        Op::Resize { mode: ResizeMode::Linear, coord: CoordTransform::HalfPixel, nearest: NearestMode::RoundPreferFloor, shape: vec![1, 4, 7, 9], scales: None },
        vec![up],
    );
    let flip = add(&mut g, "flip", Op::Slice { starts: vec![0, 3, 6, 1], steps: vec![1, -1, -2, 3], sizes: vec![1, 4, 4, 3] }, vec![down]);
    let tr = add(&mut g, "transpose", Op::Transpose { perm: vec![0, 2, 3, 1] }, vec![flip]);
    let rs = add(&mut g, "reshape", Op::Reshape { shape: vec![1, 12, 4] }, vec![tr]);
    let parts = {
        let op = Op::Split { axis: 1, sizes: vec![5, 7] };
        let shapes = infer_shapes(&op, &[&g.values[rs].shape]).unwrap();
        let outs: Vec<ValueId> = shapes.into_iter().enumerate().map(|(k, s)| g.add_value(format!("part{k}"), s)).collect();
        g.nodes.push(Node { name: "split".into(), op, inputs: vec![rs], outputs: outs.clone() });
        outs
    };
    let cat = add(&mut g, "concat", Op::Concat { axis: 1 }, vec![parts[1], parts[0]]);
    let gat = add(&mut g, "gather", Op::Gather { axis: 1, indices: vec![0, 11, 3, 3, 7, 1], indices_shape: vec![2, 3] }, vec![cat]);
    let reduce = |op, axes: Vec<usize>, keep_dims| Op::Reduce { op, axes, keep_dims };
    let r1 = add(&mut g, "reduce_mean", reduce(ReduceOp::Mean, vec![3], true), vec![gat]);
    let r2 = add(&mut g, "reduce_sum", reduce(ReduceOp::Sum, vec![1, 3], false), vec![gat]);
    let r3 = add(&mut g, "reduce_max", reduce(ReduceOp::Max, vec![2], false), vec![gat]);
    let r4 = add(&mut g, "reduce_l2", reduce(ReduceOp::L2, vec![3], false), vec![gat]);
    let r5 = add(&mut g, "reduce_min", reduce(ReduceOp::Min, vec![2], false), vec![gat]);
    let r6 = add(&mut g, "reduce_sumsq", reduce(ReduceOp::SumSquare, vec![3], false), vec![gat]);
    let r7 = add(&mut g, "reduce_prod", reduce(ReduceOp::Prod, vec![2], false), vec![gat]);
    let flat = add(&mut g, "flatten", Op::Reshape { shape: vec![1, 4] }, vec![sum]);
    let gw = constant(&mut g, "gemm_w", &[3, 4], 7);
    let gb = constant(&mut g, "gemm_b", &[3], 8);
    let gemm = add(&mut g, "gemm", Op::Gemm { trans_a: false, trans_b: true, alpha: 0.5, beta: 2.0, activation: A::Tanh }, vec![flat, gw, gb]);
    let mw = constant(&mut g, "matmul_w", &[3, 6], 9);
    let mm = add(&mut g, "matmul", Op::MatMul, vec![gemm, mw]);
    let slope = constant(&mut g, "slope", &[6], 10);
    let pr = add(&mut g, "prelu", Op::PRelu, vec![mm, slope]);
    let sm = add(&mut g, "softmax", Op::Softmax { axis: 1, log: false }, vec![pr]);
    let lsm = add(&mut g, "logsoftmax", Op::Softmax { axis: 1, log: true }, vec![r2]);
    // Elementwise ops on a positive tensor.
    let a = add(&mut g, "abs", Op::Unary(UnaryOp::Abs), vec![r1]);
    let one = g.add_const("one", vec![1], vec![1.0]);
    let pos = add(&mut g, "positive", Op::Binary(BinaryOp::Add), vec![a, one]);
    let mut e = pos;
    for (k, u) in [UnaryOp::Sqrt, UnaryOp::Log, UnaryOp::Exp, UnaryOp::Reciprocal, UnaryOp::Neg, UnaryOp::Erf, UnaryOp::Floor, UnaryOp::Ceil].into_iter().enumerate() {
        e = add(&mut g, &format!("unary{k}"), Op::Unary(u), vec![e]);
    }
    let two = g.add_const("two", vec![], vec![2.0]);
    let mut b = add(&mut g, "pow", Op::Binary(BinaryOp::Pow), vec![pos, two]);
    for (k, op) in [BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min].into_iter().enumerate() {
        b = add(&mut g, &format!("binary{k}"), Op::Binary(op), vec![b, pos]);
    }
    let mut s = r3;
    for (k, act) in [A::Relu, A::Sigmoid, A::HardSwish, A::Silu, A::LeakyRelu { alpha: 0.2 }].into_iter().enumerate() {
        s = add(&mut g, &format!("act{k}"), Op::Activation(act), vec![s]);
    }
    g.outputs = vec![sm, lsm, e, b, s, r4, r5, r6, r7, t];
    g.validate().unwrap();
    passes::optimize(&mut g).unwrap();
    g.validate().unwrap();
    g
}

fn image_input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 1.5).collect()
}

#[test]
fn every_op_round_trips_at_every_opset() {
    let g = every_op_graph();
    let x = image_input(400);
    let want = run(&g, &[&x]);
    for opset in [13, 14, 17, 18, 21] {
        let back = reimport(&g, opset);
        assert_same_graph(&g, &back, &format!("opset {opset}"));
        assert_same_outputs(&want, &run(&back, &[&x]), &format!("opset {opset}"));
    }
    let q = annotate(&g, &[&x, &image_input(400).iter().map(|v| -v * 0.5).collect::<Vec<_>>()]);
    assert!(q.values.iter().filter(|v| matches!(v.quant, Some(Quant::Tensor(_)))).count() > 50);
    let want = run(&q, &[&x]);
    for opset in [13, 17, 21] {
        let back = reimport(&q, opset);
        assert_same_graph(&q, &back, &format!("annotated, opset {opset}"));
        assert_same_outputs(&want, &run(&back, &[&x]), &format!("annotated, opset {opset}"));
    }
}

#[test]
fn bad_opsets_and_annotations_are_errors() {
    let g = every_op_graph();
    let err = onnx::export(&g, &ExportOptions { opset: 12, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("opset 12"), "{err}");
    // A weight annotated but not on its grid names the weight.
    let mut q = g.clone();
    let w = q.find_value("w0").unwrap();
    let (params, _) = quantize_weights(q.const_data(w).unwrap(), &q.values[w].shape.clone(), Some(0), 8, WeightRange::MaxAbs);
    q.values[w].quant = Some(Quant::Weight(params));
    let err = onnx::export(&q, &ExportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("'w0'") && err.contains("not scale"), "{err}");
}

// ---- the QDQ structure of an export ----

fn tensor_of<'a>(m: &'a pb::ModelProto, name: &str) -> &'a pb::TensorProto {
    m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer '{name}'"))
}

fn producer<'a>(m: &'a pb::ModelProto, tensor: &str) -> &'a pb::NodeProto {
    m.graph.as_ref().unwrap().node.iter().find(|n| n.output.iter().any(|o| o == tensor)).unwrap_or_else(|| panic!("nothing writes '{tensor}'"))
}

fn f32s(t: &pb::TensorProto) -> Vec<f32> {
    t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn qdq_export_writes_what_onnxruntime_reads() {
    // x -> Conv(w, b) + Relu -> y (graph output, uint8) ; y + c (constant operand) -> z (4-bit, symmetric)
    let mut g = Graph::default();
    let x = g.add_value("x", vec![1, 2, 4, 4]);
    g.inputs.push(x);
    let w = constant(&mut g, "w", &[3, 2, 1, 1], 1);
    let b = constant(&mut g, "b", &[3], 2);
    let y = add(&mut g, "y", Op::Conv(Conv { window: window(1, 1, 1, 0), group: 1, activation: Activation::Relu }), vec![x, w, b]);
    let c = constant(&mut g, "c", &[3, 1, 1], 3);
    let z = add(&mut g, "z", Op::Binary(BinaryOp::Add), vec![y, c]);
    g.outputs = vec![y, z];
    let xp = from_range(-1.0, 1.0, 8, false);
    let yp = from_range(0.0, 3.0, 8, false).with_storage(false);
    let zp = from_range(-2.0, 4.0, 4, true);
    let (wp, wq) = quantize_weights(g.const_data(w).unwrap(), &[3, 2, 1, 1], Some(0), 8, WeightRange::MaxAbs);
    g.values[w].data = Some(wp.dequantize(&wq, &[3, 2, 1, 1]).into());
    let bias = snap_bias(g.const_data(b).unwrap(), xp.scale, &wp);
    g.values[b].data = Some(bias.clone().into());
    let cp = from_range(-1.0, 1.0, 8, false).with_storage(false);
    let cdata: Vec<f32> = g.const_data(c).unwrap().iter().map(|&v| cp.fake_quantize(v)).collect();
    g.values[c].data = Some(cdata.into());
    g.values[x].quant = Some(Quant::Tensor(xp));
    g.values[y].quant = Some(Quant::Tensor(yp));
    g.values[z].quant = Some(Quant::Tensor(zp));
    g.values[w].quant = Some(Quant::Weight(wp.clone()));
    g.values[c].quant = Some(Quant::Tensor(cp));
    g.validate().unwrap();

    let m = export_model(&g, &ExportOptions::default()).unwrap();
    assert_eq!(m.producer_name, "quant-playground");
    assert_eq!(m.opset_import[0].version, 17);
    let graph = m.graph.as_ref().unwrap();
    let names = |vi: &[pb::ValueInfoProto]| vi.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&graph.input), ["x"]);
    assert_eq!(names(&graph.output), ["y", "z"]);
    // The weight: int8 per channel along axis 0, zero points 0.
    let dq = producer(&m, "w");
    assert_eq!(dq.op_type, "DequantizeLinear");
    assert_eq!(dq.attribute.iter().find(|a| a.name == "axis").map(|a| a.i), Some(0));
    let wt = tensor_of(&m, &dq.input[0]);
    assert_eq!(wt.data_type, pb::tensor_proto::DataType::Int8 as i32);
    assert_eq!(wt.raw_data.iter().map(|&v| v as i8 as i32).collect::<Vec<_>>(), wq.iter().map(|&v| v as i32).collect::<Vec<_>>());
    assert_eq!(f32s(tensor_of(&m, &dq.input[1])), wp.scales);
    assert!(tensor_of(&m, &dq.input[2]).raw_data.iter().all(|&v| v == 0));
    // The bias: int32 at s_x · s_w[c].
    let dq = producer(&m, "b");
    let bt = tensor_of(&m, &dq.input[0]);
    assert_eq!(bt.data_type, pb::tensor_proto::DataType::Int32 as i32);
    let scales = f32s(tensor_of(&m, &dq.input[1]));
    assert_eq!(scales, wp.scales.iter().map(|s| xp.scale * s).collect::<Vec<_>>());
    let ints: Vec<i32> = bt.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    for ((q, s), b) in ints.iter().zip(&scales).zip(&bias) {
        assert_eq!(*q as f32 * s, *b);
    }
    // The graph output y: Conv -> Relu -> Q -> DQ named y, uint8 zero point.
    let dq = producer(&m, "y");
    assert_eq!(dq.op_type, "DequantizeLinear");
    let q = producer(&m, &dq.input[0]);
    assert_eq!(q.op_type, "QuantizeLinear");
    assert_eq!(tensor_of(&m, &q.input[2]).data_type, pb::tensor_proto::DataType::Uint8 as i32);
    assert_eq!(tensor_of(&m, &q.input[2]).raw_data, [yp.zero_point as u8]);
    assert_eq!(producer(&m, &q.input[0]).op_type, "Relu");
    assert_eq!(producer(&m, &producer(&m, &q.input[0]).input[0]).op_type, "Conv");
    // z is 4-bit symmetric: a Clip to [-7 s, 7 s] before its QuantizeLinear.
    let q = producer(&m, &producer(&m, "z").input[0]);
    let clip = producer(&m, &q.input[0]);
    assert_eq!(clip.op_type, "Clip");
    assert_eq!((f32s(tensor_of(&m, &clip.input[1]))[0], f32s(tensor_of(&m, &clip.input[2]))[0]), zp.real_range());
    // The constant operand: uint8 data with its zero point.
    let dq = producer(&m, "c");
    assert_eq!(tensor_of(&m, &dq.input[0]).data_type, pb::tensor_proto::DataType::Uint8 as i32);
    // Widths of constants in the metadata.
    let meta = m.metadata_props.iter().find(|p| p.key == RANGES_KEY).unwrap();
    assert!(meta.value.contains("\"w\":{\"bits\":8"), "{}", meta.value);

    // And back.
    let back = onnx::import(&m.encode_to_vec(), &ImportOptions::default()).unwrap().graph;
    assert_same_graph(&g, &back, "small QDQ graph");

    // The rounding convention is recorded; an unknown one is an error that names it.
    let key = quant_playground::onnx::export::REQUANTIZATION_KEY;
    let mut m = m;
    let meta = m.metadata_props.iter_mut().find(|p| p.key == key).expect("recorded");
    assert_eq!(meta.value, "fp32");
    meta.value = "banana".into();
    let err = onnx::import(&m.encode_to_vec(), &ImportOptions::default()).err().expect("unknown convention").to_string();
    assert!(err.contains("quant-playground.requantization is 'banana', not 'fp32' or 'fixed-point'"), "{err}");

    // So is the fusion: our graphs run every node in integers; without the keys (a foreign
    // file), as onnxruntime fuses it; an unknown value is an error that names it.
    m.metadata_props.iter_mut().find(|p| p.key == key).expect("recorded").value = "fp32".into();
    let key = quant_playground::onnx::export::FUSION_KEY;
    let meta = m.metadata_props.iter_mut().find(|p| p.key == key).expect("recorded");
    assert_eq!(meta.value, "integer");
    meta.value = "all".into();
    let err = onnx::import(&m.encode_to_vec(), &ImportOptions::default()).err().expect("unknown fusion").to_string();
    assert!(err.contains("quant-playground.fusion is 'all', not 'integer' or 'onnxruntime'"), "{err}");
    m.metadata_props.retain(|p| !p.key.starts_with("quant-playground.") || p.key == RANGES_KEY);
    assert_eq!(onnx::import(&m.encode_to_vec(), &ImportOptions::default()).unwrap().graph.fusion, Fusion::Onnxruntime);
    // The caller can choose (`--fusion`), whatever the file says.
    let integer = ImportOptions { fusion: Some(Fusion::Integer), ..ImportOptions::default() };
    assert_eq!(onnx::import(&m.encode_to_vec(), &integer).unwrap().graph.fusion, Fusion::Integer);
}

// ---- foreign QDQ files ----

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{FIXTURES}/{name}: {e}"))
}

#[test]
fn onnxruntime_qdq_files_import_as_quantized_models() {
    for m in shipped() {
        let float = Model::load(m.bytes, &m.options).unwrap();
        assert!(!float.is_quantized());
        for storage in ["u8", "s8"] {
            let file = format!("{}.{storage}.onnx", m.name);
            let model = Model::load(&fixture(&file), &m.options).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(model.is_quantized(), "{file}");
            assert!(model.summary().quantized);
            let g = model.engine.graph();
            // Every weight per channel along its output axis, every Conv input quantized.
            for node in &g.nodes {
                if let Some(axis) = weight_axis(g, node) {
                    match &g.values[node.inputs[1]].quant {
                        Some(Quant::Weight(p)) => {
                            assert_eq!(p.bits, 8);
                            if p.scales.len() > 1 {
                                assert_eq!(p.axis, axis, "{file}: {}", node.name);
                            }
                        }
                        other => panic!("{file}: weight of {} is {other:?}", node.name),
                    }
                    assert!(matches!(&g.values[node.inputs[0]].quant, Some(Quant::Tensor(p)) if p.signed == (storage == "s8")), "{file}: {}", node.name);
                }
            }
            // Its simulation classifies like the float model, and not bit for bit like it.
            for x in &m.frames {
                let (a, b) = (float.run(&[x]).unwrap(), model.engine.run(&[x]).unwrap());
                if m.name != "blazeface_front_128" {
                    assert_eq!(argmax(&a[0].data), argmax(&b[0]), "{file}");
                }
                assert_ne!(a[0].data, b[0]);
            }
            // It runs as onnxruntime fuses it: with uint8 activations every node unit is fused;
            // with int8 ones, the Convs, Adds and Muls around int8 values read by two nodes run
            // in float (EfficientNet-Lite0's 14 Convs and 9 Adds are what onnxruntime's profiler
            // lists; tests/ort checks the outputs against onnxruntime on every model).
            assert_eq!(g.fusion, Fusion::Onnxruntime, "{file}");
            let mut unfused = std::collections::BTreeMap::new();
            for f in model.summary().int8_float.iter().filter(|f| f.reason.starts_with("onnxruntime runs it in float")) {
                *unfused.entry(f.op.split(' ').next().unwrap().to_string()).or_insert(0) += 1;
            }
            let expected: &[(&str, usize)] = match (m.name, storage) {
                (_, "u8") => &[],
                ("efficientnet_lite0", _) => &[("Add", 9), ("Conv", 14)],
                ("blazeface_front_128", _) => &[("Add", 16), ("Conv", 21)],
                _ => &[("Add", 25), ("Conv", 23), ("Mul", 27)],
            };
            assert_eq!(unfused, expected.iter().map(|&(op, n)| (op.to_string(), n)).collect(), "{file}");
            // The int8 engine computes the simulation's values there too (both add in MLAS's
            // order), bit for bit.
            let int8 = quant_playground::engine::Int8Engine::new(g.clone()).unwrap();
            for x in &m.frames[..1] {
                assert_same_outputs(&int8.run(&[x]).unwrap(), &model.engine.run(&[x]).unwrap(), &format!("{file}: int8 engine and simulation"));
            }
            // Our export of it reads back the same, and runs as onnxruntime fuses the original.
            let back = reimport(g, 17);
            assert_same_graph(g, &back, &file);
            assert_eq!(back.fusion, Fusion::Onnxruntime, "{file}");
        }
    }
}

/// A tiny ONNX writer for hand-made QDQ graphs (node names given).
#[derive(Default)]
struct B {
    graph: pb::GraphProto,
}

fn a_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Int as i32, i, ..Default::default() }
}

fn tensor_f32(shape: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto { dims: shape.iter().map(|&d| d as i64).collect(), data_type: 1, float_data: data.to_vec(), ..Default::default() }
}

impl B {
    fn vi(name: &str, shape: Option<&[usize]>) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let shape = shape.map(|s| pb::TensorShapeProto { dim: s.iter().map(|&d| Dimension { value: Some(Value::DimValue(d as i64)), ..Default::default() }).collect() });
        let t = pb::type_proto::Tensor { elem_type: 1, shape };
        pb::ValueInfoProto { name: name.into(), r#type: Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(t)), ..Default::default() }), ..Default::default() }
    }
    fn input(&mut self, name: &str, shape: &[usize]) -> &mut Self {
        self.graph.input.push(B::vi(name, Some(shape)));
        self
    }
    fn output(&mut self, name: &str) -> &mut Self {
        self.graph.output.push(B::vi(name, None));
        self
    }
    fn init(&mut self, name: &str, mut t: pb::TensorProto) -> &mut Self {
        t.name = name.into();
        self.graph.initializer.push(t);
        self
    }
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<pb::AttributeProto>) -> &mut Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.graph.node.push(pb::NodeProto { op_type: op.into(), name: name.into(), input: strings(inputs), output: strings(outputs), attribute, ..Default::default() });
        self
    }
    fn build(&self) -> Vec<u8> {
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(self.graph.clone()),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

#[test]
fn qdq_import_errors_name_the_node() {
    let scale = tensor_f32(&[], &[0.1]);
    let zp = pb::TensorProto { dims: vec![], data_type: 3, raw_data: vec![0], ..Default::default() };
    // A QuantizeLinear output read by something else than DequantizeLinear.
    let mut b = B::default();
    b.input("x", &[1, 4]).init("s", scale.clone()).init("z", zp.clone());
    b.node("QuantizeLinear", "q", &["x", "s", "z"], &["xq"], vec![]);
    b.node("Relu", "r", &["xq"], &["y"], vec![]);
    b.output("y");
    let err = onnx::import(&b.build(), &ImportOptions::default()).err().unwrap().to_string();
    assert!(err.contains("'r'") && err.contains("QuantizeLinear"), "{err}");
    // Per-axis dequantization of a constant that is no weight.
    let mut b = B::default();
    let data = pb::TensorProto { dims: vec![1, 4], data_type: 3, raw_data: vec![1, 2, 3, 4], ..Default::default() };
    b.input("x", &[1, 4]).init("c", data).init("s", tensor_f32(&[4], &[0.1, 0.2, 0.3, 0.4]));
    b.node("DequantizeLinear", "dq", &["c", "s"], &["cf"], vec![a_int("axis", 1)]);
    b.node("Add", "add", &["x", "cf"], &["y"], vec![]);
    b.output("y");
    let err = onnx::import(&b.build(), &ImportOptions::default()).err().unwrap().to_string();
    assert!(err.contains("'dq'") && err.contains("per-axis"), "{err}");
    // DequantizeLinear of a tensor computed at run time.
    let mut b = B::default();
    b.input("x", &[1, 4]).init("s", scale);
    b.node("Relu", "r", &["x"], &["h"], vec![]);
    b.node("DequantizeLinear", "dq", &["h", "s"], &["y"], vec![]);
    b.output("y");
    let err = onnx::import(&b.build(), &ImportOptions::default()).err().unwrap().to_string();
    assert!(err.contains("'dq'"), "{err}");
}

#[test]
fn qdq_pairs_become_annotations_and_passes_keep_them() {
    // x -> Q/DQ -> Conv(DQ(w int8 per channel), DQ(b int32)) -> Q/DQ -> Relu -> Q/DQ -> y,
    // and a raw reader of the conv output (a graph output), opset 13, no zero point on x
    // (uint8 0).
    let mut b = B::default();
    b.input("x", &[1, 2, 3, 3]);
    b.init("sx", tensor_f32(&[], &[0.02]));
    b.init("sc", tensor_f32(&[], &[0.05]));
    b.init("zc", pb::TensorProto { dims: vec![], data_type: 3, raw_data: vec![0xf6], ..Default::default() }); // int8 -10
    b.init("w", pb::TensorProto { dims: vec![2, 2, 1, 1], data_type: 3, raw_data: vec![1, 0x81, 127, 5], ..Default::default() });
    b.init("sw", tensor_f32(&[2], &[0.01, 0.03]));
    b.init("zw", pb::TensorProto { dims: vec![2], data_type: 3, raw_data: vec![0, 0], ..Default::default() });
    b.init("bias", pb::TensorProto { dims: vec![2], data_type: 6, int32_data: vec![100, -7], ..Default::default() });
    b.init("sb", tensor_f32(&[2], &[0.02 * 0.01, 0.02 * 0.03]));
    b.node("QuantizeLinear", "qx", &["x", "sx"], &["xq"], vec![]);
    b.node("DequantizeLinear", "dqx", &["xq", "sx"], &["xd"], vec![]);
    b.node("DequantizeLinear", "dqw", &["w", "sw", "zw"], &["wd"], vec![a_int("axis", 0)]);
    b.node("DequantizeLinear", "dqb", &["bias", "sb"], &["bd"], vec![a_int("axis", 0)]);
    b.node("Conv", "conv", &["xd", "wd", "bd"], &["c"], vec![]);
    b.node("QuantizeLinear", "qc", &["c", "sc", "zc"], &["cq"], vec![]);
    b.node("DequantizeLinear", "dqc", &["cq", "sc", "zc"], &["cd"], vec![]);
    b.node("Relu", "relu", &["cd"], &["r"], vec![]);
    b.node("QuantizeLinear", "qr", &["r", "sc", "zc"], &["rq"], vec![]);
    b.node("DequantizeLinear", "dqr", &["rq", "sc", "zc"], &["y"], vec![]);
    b.output("y").output("c");
    let g = onnx::import(&b.build(), &ImportOptions::default()).unwrap().graph;
    let v = |name: &str| &g.values[g.find_value(name).unwrap_or_else(|| panic!("no value '{name}'\n{}", describe(&g)))];
    assert!(matches!(&v("x").quant, Some(Quant::Tensor(p)) if !p.signed && p.zero_point == 0 && p.scale == 0.02 && p.bits == 8 && !p.symmetric));
    assert!(matches!(&v("wd").quant, Some(Quant::Weight(p)) if p.scales == [0.01, 0.03] && p.axis == 0 && p.bits == 8));
    assert_eq!(g.const_data(g.find_value("wd").unwrap()).unwrap(), [0.01, 0.01 * -127.0, 0.03 * 127.0, 0.03 * 5.0]);
    assert!(v("bd").quant.is_none());
    assert_eq!(g.const_data(g.find_value("bd").unwrap()).unwrap(), [0.02 * 0.01 * 100.0, 0.02 * 0.03 * -7.0]);
    // The Conv output is read raw (a graph output) and through Q/DQ: a copy carries the
    // annotation; Relu is not fused into the Conv across it.
    assert!(v("c").quant.is_none());
    assert!(matches!(&v("cd").quant, Some(Quant::Tensor(p)) if p.signed && p.zero_point == -10));
    assert!(g.nodes.iter().any(|n| matches!(n.op, Op::Activation(Activation::Relu))), "{}", describe(&g));
    assert!(matches!(&v("y").quant, Some(Quant::Tensor(_))));
    assert_eq!(g.nodes.len(), 3, "{}", describe(&g)); // Conv, the copy, Relu
    let model = Model::load(&b.build(), &ImportOptions::default()).unwrap();
    assert!(model.is_quantized());
    assert!(model.summary().outputs[0].quant.is_some());
}
