//! Kernel microbenchmarks for the browser (`bench/benchmarks/int8-kernels.mjs`): the int8
//! (qs8) and FP32 convolution kernels on the same shapes, timed inside wasm so that only the
//! kernels are measured, and a pure SIMD128 loop that gives the peak they are compared with.
//!
//! wasm32 only, like `api.rs`; nothing here is used by the engine. Inputs, weights, biases and
//! requantizers are deterministic pseudo-random values (the kernels' speed does not depend on
//! them; the requantizers are of the default convention, what models run); every call builds (packs) its convolution once, runs it once to warm up, then times
//! `iterations` calls with `performance.now()` and returns milliseconds per call.
//!
//! Shapes use TensorFlow's "SAME" padding (the padding of EfficientNet-Lite's ONNX export):
//! `out = ceil(in / stride)`, the total pad split with the smaller half first.

use wasm_bindgen::prelude::*;

use crate::kernels::conv::{Conv2dShape, PackedConv2d};
use crate::kernels::int8::{PackedQs8Conv2d, Requantization, Requantizer};
use crate::kernels::Activation;
use crate::rng::Rng;

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`: in a page and in a worker.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// The geometry of a square convolution with "SAME" padding.
fn same_shape(
    in_c: usize,
    out_c: usize,
    in_h: usize,
    in_w: usize,
    kernel: usize,
    stride: usize,
    group: usize,
) -> Result<Conv2dShape, JsError> {
    let ok = kernel > 0
        && stride > 0
        && group > 0
        && in_c % group == 0
        && out_c % group == 0
        && in_h > 0
        && in_w > 0
        && in_c > 0
        && out_c > 0;
    if !ok {
        return Err(JsError::new(&format!(
            "impossible convolution: {in_c}->{out_c} channels, {in_h}x{in_w}, kernel {kernel}, stride {stride}, group {group}"
        )));
    }
    let (out_h, out_w) = (in_h.div_ceil(stride), in_w.div_ceil(stride));
    let pad = |o: usize, i: usize| ((o - 1) * stride + kernel).saturating_sub(i) / 2;
    Ok(Conv2dShape {
        in_c,
        in_h,
        in_w,
        out_c,
        out_h,
        out_w,
        kernel_h: kernel,
        kernel_w: kernel,
        stride_h: stride,
        stride_w: stride,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: pad(out_h, in_h),
        pad_left: pad(out_w, in_w),
        group,
    })
}

/// Milliseconds per call of `run` over `iterations` calls, after one warm-up call.
fn time(iterations: u32, mut run: impl FnMut()) -> f64 {
    run();
    let n = iterations.max(1);
    let start = performance_now();
    for _ in 0..n {
        run();
    }
    (performance_now() - start) / n as f64
}

/// Milliseconds per call of one convolution of `kind` (`"f32"` or `"qs8"`) on a
/// `[in_c][in_h][in_w]` image: kernel `kernel x kernel`, `stride`, `group` (`group == in_c`
/// is depthwise), "SAME" padding. The f32 convolution has a fused ReLU6 (a clamp, as in
/// EfficientNet-Lite), the qs8 one the matching output clamp.
#[wasm_bindgen(js_name = benchConv)]
#[allow(clippy::too_many_arguments)]
pub fn bench_conv(
    kind: &str,
    in_c: usize,
    out_c: usize,
    in_h: usize,
    in_w: usize,
    kernel: usize,
    stride: usize,
    group: usize,
    iterations: u32,
) -> Result<f64, JsError> {
    let s = same_shape(in_c, out_c, in_h, in_w, kernel, stride, group)?;
    let k = in_c / group * kernel * kernel;
    let mut rng = Rng::seeded((in_c * 31 + out_c * 7 + in_h * 3 + kernel + stride) as u64);
    match kind {
        "f32" => {
            let w: Vec<f32> = (0..out_c * k)
                .map(|_| rng.uniform(-0.5, 0.5) as f32)
                .collect();
            let b: Vec<f32> = (0..out_c).map(|_| rng.uniform(-0.5, 0.5) as f32).collect();
            let act = Activation::Clip { min: 0.0, max: 6.0 };
            let conv = PackedConv2d::new(s, &w, Some(&b), act);
            let x: Vec<f32> = (0..in_c * in_h * in_w)
                .map(|_| rng.uniform(-1.0, 3.0) as f32)
                .collect();
            let mut y = vec![0f32; out_c * s.out_h * s.out_w];
            let mut scratch = Vec::new();
            Ok(time(iterations, || conv.run(&x, &mut y, &mut scratch)))
        }
        "qs8" => {
            let w = rng.i8s(out_c * k, -127, 127);
            let b: Vec<i32> = (0..out_c)
                .map(|_| rng.int(-20_000, 20_000) as i32)
                .collect();
            // Convolution multipliers sx·sw/sy are far below 1: 2^-14 .. 2^-8.
            let rq: Vec<Requantizer> = (0..out_c)
                .map(|_| {
                    let m = 2f64.powf(rng.uniform(-14.0, -8.0));
                    Requantization::default().requantizer(m, m as f32)
                })
                .collect();
            let conv = PackedQs8Conv2d::new(s, &w, Some(&b), -100, rq, -128, -128, 99);
            let x = rng.i8s(in_c * in_h * in_w, -128, 127);
            let mut y = vec![0i8; out_c * s.out_h * s.out_w];
            let mut scratch = Vec::new();
            Ok(time(iterations, || conv.run(&x, &mut y, &mut scratch)))
        }
        other => Err(JsError::new(&format!(
            "benchConv: unknown kind {other:?} (f32 or qs8)"
        ))),
    }
}

/// Milliseconds per call of a GEMM of `kind` (`"f32"` or `"qs8"`): `m` output channels, `n`
/// columns (pixels), depth `k`, run as the 1x1 convolution that the engines use for it
/// (`[k][1][n]` in, `[m][1][n]` out: the per-call packing of X is included).
#[wasm_bindgen(js_name = benchGemm)]
pub fn bench_gemm(
    kind: &str,
    m: usize,
    n: usize,
    k: usize,
    iterations: u32,
) -> Result<f64, JsError> {
    bench_conv(kind, k, m, 1, n, 1, 1, 1, iterations)
}

/// The multiply-accumulates of one call of `benchConv` with these arguments.
#[wasm_bindgen(js_name = convMacs)]
pub fn conv_macs(
    in_c: usize,
    out_c: usize,
    in_h: usize,
    in_w: usize,
    kernel: usize,
    stride: usize,
    group: usize,
) -> Result<f64, JsError> {
    let s = same_shape(in_c, out_c, in_h, in_w, kernel, stride, group)?;
    Ok((out_c * s.out_h * s.out_w * (in_c / group) * kernel * kernel) as f64)
}

/// Milliseconds per call of one piece of a pointwise convolution's QAT step (`"forward"`,
/// `"dx"` or `"dw"`, see `train::ops::conv::pointwise_training_piece`) on `hw` pixels.
#[wasm_bindgen(js_name = benchPointwiseTraining)]
pub fn bench_pointwise_training(part: &str, in_c: usize, out_c: usize, hw: usize, iterations: u32) -> Result<f64, JsError> {
    let mut run = crate::train::ops::conv::pointwise_training_piece(part, in_c, out_c, hw)
        .ok_or_else(|| JsError::new(&format!("benchPointwiseTraining: unknown part {part:?} (forward, dx or dw)")))?;
    Ok(time(iterations, &mut *run))
}

/// GMAC/s of a loop of nothing but the kernels' multiply-accumulate instructions, in 12
/// independent chains (enough to cover their latency, few enough to stay in registers):
/// - `"dot_i16x8"`: `acc = i32x4.add(acc, i32x4.dot_i16x8_s(acc, b))`, 8 MACs per pair: the
///   peak of the int8 kernels, which widen int8 to i16 and use `dot_i16x8_s` + `add`;
/// - `"f32x4"`: `acc = f32x4.add(acc, f32x4.mul(acc, b))`, 4 MACs per pair (the f32 kernels
///   multiply then add, no FMA); a chain is a multiply then an add, so with 12 chains this is
///   bound by their latency as much as by throughput: a lower bound of the f32 peak;
/// - `"relaxed_dot"` (relaxed-SIMD build): `acc = i32x4.relaxed_dot_i8x16_i7x16_add_s(a, b,
///   acc)`, 16 MACs per instruction: the peak of the `4x8c4` GEMM tiles.
///
/// Each operation depends on its accumulator, so nothing can be hoisted out of the loop.
#[wasm_bindgen(js_name = benchPeak)]
pub fn bench_peak(kind: &str, iterations: u32) -> Result<f64, JsError> {
    #[cfg(target_feature = "simd128")]
    {
        use core::arch::wasm32::*;
        use core::hint::black_box;
        let n = iterations.max(1);
        let (ms, macs_per_op) = match kind {
            "dot_i16x8" => {
                let b = black_box(i16x8_splat(3));
                (time_chains(n, i32x4_splat(1), |v| i32x4_add(v, i32x4_dot_i16x8(v, b))), 8.0)
            }
            "f32x4" => {
                let b = black_box(f32x4_splat(0.5));
                (time_chains(n, f32x4_splat(1.0), |v| f32x4_add(v, f32x4_mul(v, b))), 4.0)
            }
            #[cfg(qp_relaxed_simd)]
            "relaxed_dot" => (relaxed_dot_loop(n), 16.0),
            other => {
                return Err(JsError::new(&format!(
                    "benchPeak: unknown kind {other:?} (dot_i16x8, f32x4, or relaxed_dot in the relaxed-SIMD build)"
                )))
            }
        };
        Ok(n as f64 * 12.0 * macs_per_op / ms / 1e6)
    }
    #[cfg(not(target_feature = "simd128"))]
    {
        let _ = (kind, iterations);
        Err(JsError::new("benchPeak needs a SIMD128 build"))
    }
}

/// The milliseconds of `n` rounds of `step` on each of 12 independent accumulators starting at
/// `init` (see `bench_peak`).
#[cfg(target_feature = "simd128")]
#[inline(always)]
fn time_chains(
    n: u32,
    init: core::arch::wasm32::v128,
    mut step: impl FnMut(core::arch::wasm32::v128) -> core::arch::wasm32::v128,
) -> f64 {
    use core::hint::black_box;
    let mut acc = black_box([init; 12]);
    let start = performance_now();
    for _ in 0..n {
        for v in acc.iter_mut() {
            *v = step(*v);
        }
    }
    let ms = performance_now() - start;
    black_box(acc);
    ms
}

/// The `"relaxed_dot"` loop of `bench_peak`, in a function of its own: the only place outside
/// the GEMM where relaxed SIMD is enabled (see `kernels::int8::relaxed`).
#[cfg(qp_relaxed_simd)]
#[target_feature(enable = "relaxed-simd")]
fn relaxed_dot_loop(n: u32) -> f64 {
    use core::arch::wasm32::*;
    let (a, b) = core::hint::black_box((i8x16_splat(3), u8x16_splat(200)));
    time_chains(n, i32x4_splat(1), |v| i32x4_relaxed_dot_i8x16_i7x16_add(a, b, v))
}

/// Per-node profile of a model (ONNX bytes, a QDQ file for `"int8"`), `runs` runs after 3
/// warm-up runs on a pseudo-random input in [-1, 1): a JSON string
/// `{totalMs, nodes: [{name, op, ms, out}]}`, `totalMs` the median of plain runs and `ms` each
/// node's median, timed through `run_observed` from the end of the previous node's callback to
/// the start of its own (the first node includes quantizing the input). The int8 engine
/// dequantizes every output for the observer before calling it: that cost, measured on a
/// buffer of the same size, is subtracted.
#[wasm_bindgen(js_name = profileModel)]
pub fn profile_model(bytes: &[u8], engine: &str, runs: u32) -> Result<String, JsError> {
    let model = crate::Model::load(bytes, &Default::default()).map_err(|e| JsError::new(&e.to_string()))?;
    let g = model.engine.graph();
    let mut rng = Rng::seeded(7);
    let inputs: Vec<Vec<f32>> = g
        .inputs
        .iter()
        .map(|&i| (0..g.values[i].len()).map(|_| rng.uniform(-1.0, 1.0) as f32).collect())
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let err = |e: crate::Error| JsError::new(&e.to_string());
    let int8 = match engine {
        "int8" => Some(model.int8.as_ref().ok_or_else(|| JsError::new("profileModel: not a QDQ model"))?),
        "fp32" => None,
        other => return Err(JsError::new(&format!("profileModel: unknown engine {other:?}"))),
    };
    let run = |observe: Option<&mut dyn FnMut(crate::ir::ValueId, &[f32])>| -> Result<(), JsError> {
        match (int8, observe) {
            (Some(e), Some(o)) => e.run_observed(&refs, o).map(drop).map_err(err),
            (Some(e), None) => e.run(&refs).map(drop).map_err(err),
            (None, Some(o)) => model.run_observed(&refs, o).map(drop).map_err(err),
            (None, None) => model.run(&refs).map(drop).map_err(err),
        }
    };
    for _ in 0..3 {
        run(None)?;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() { 0.0 } else { v[v.len() / 2] }
    };
    let mut totals = Vec::new();
    for _ in 0..runs.max(1) {
        let t = performance_now();
        run(None)?;
        totals.push(performance_now() - t);
    }
    // Dequantizing for the observer: ms per element.
    let deq_per_elem = if int8.is_some() {
        let q = Rng::seeded(3).i8s(1 << 20, -128, 127);
        let mut observed: Vec<f32> = Vec::new();
        let t = performance_now();
        for _ in 0..4 {
            observed.clear();
            observed.extend(q.iter().map(|&v| 0.02f32 * (v as i32 - 3) as f32));
            core::hint::black_box(&observed);
        }
        (performance_now() - t) / 4.0 / (1 << 20) as f64
    } else {
        0.0
    };
    let mut producer = vec![usize::MAX; g.values.len()];
    for (n, node) in g.nodes.iter().enumerate() {
        for &o in &node.outputs {
            producer[o] = n;
        }
    }
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); g.nodes.len()];
    for _ in 0..runs.max(1) {
        let mut seen = vec![false; g.nodes.len()];
        let mut last = performance_now();
        let mut observe = |v: crate::ir::ValueId, d: &[f32]| {
            let now = performance_now();
            let n = producer[v];
            if n != usize::MAX && !seen[n] {
                seen[n] = true;
                per_node[n].push((now - last - deq_per_elem * d.len() as f64).max(0.0));
            }
            last = performance_now();
        };
        run(Some(&mut observe))?;
    }
    let nodes: Vec<serde_json::Value> = g
        .nodes
        .iter()
        .zip(per_node)
        .map(|(node, t)| {
            serde_json::json!({
                "name": node.name,
                "op": node.op.name(),
                "ms": median(t),
                "out": g.values[node.outputs[0]].shape,
            })
        })
        .collect();
    Ok(serde_json::json!({ "totalMs": median(totals), "dequantizeNsPerElem": deq_per_elem * 1e6, "nodes": nodes }).to_string())
}

/// Where a QAT step's time goes, per node, in wasm (`bench/benchmarks/qat-profile.mjs`): the
/// model (ONNX bytes, one input) is calibrated with the default PTQ settings on `frames`
/// (preprocessed, concatenated), a trainer with `config` (JSON, `{}` for the default recipe)
/// steps on the first
/// `batch` of them (3 warm-up steps), then `steps` steps are timed with the tape's profile
/// (`performance.now()` around every node's forward, its outputs' fake-quant backward and its
/// backward). A JSON string `{fp32Ms, stepMs, batch, mode, nodes: [{name, op, kind, ms:
/// [forward, fqBackward, backward]}]}`, times per frame (summed over the steps' frames, divided
/// by their count); `stepMs` is the median step divided by the batch.
#[wasm_bindgen(js_name = profileQat)]
pub fn profile_qat(bytes: &[u8], frames: &[f32], steps: u32, config: &str) -> Result<String, JsError> {
    use crate::quant::ptq::Calibrator;
    use crate::train::{QatConfig, Trainer};
    let err = |e: crate::Error| JsError::new(&e.to_string());
    let model = crate::Model::load(bytes, &Default::default()).map_err(err)?;
    let g = model.engine.graph();
    let [input] = g.inputs[..] else {
        return Err(JsError::new("profileQat: a model with one input"));
    };
    let len = g.values[input].len();
    if len == 0 || frames.is_empty() || frames.len() % len != 0 {
        return Err(JsError::new(&format!("profileQat: {} values are not whole frames of {len}", frames.len())));
    }
    let frames: Vec<Vec<Vec<f32>>> = frames.chunks_exact(len).map(|f| vec![f.to_vec()]).collect();
    let mut cal = Calibrator::new(g, Default::default()).map_err(err)?;
    for f in &frames {
        cal.observe(&[&f[0]]).map_err(err)?;
    }
    let ptq = cal.quantize().map_err(err)?;
    let config: QatConfig = serde_json::from_str(config).map_err(|e| JsError::new(&format!("profileQat: bad QAT config: {e}")))?;
    let mut trainer = Trainer::new(cal.graph(), &ptq, config).map_err(err)?;
    let batch = frames[..trainer.batch_size().min(frames.len())].to_vec();
    let mut fp32 = Vec::new();
    for f in &frames {
        let t = performance_now();
        model.run(&[&f[0]]).map_err(err)?;
        fp32.push(performance_now() - t);
    }
    for _ in 0..3 {
        trainer.step(&batch).map_err(err)?;
    }
    trainer.tape_mut().set_profiling(true);
    trainer.set_step_profiling(true);
    let mut step_ms = Vec::new();
    for _ in 0..steps.max(1) {
        let t = performance_now();
        trainer.step(&batch).map_err(err)?;
        step_ms.push((performance_now() - t) / batch.len() as f64);
    }
    let profile = trainer.tape_mut().profile().map(<[_]>::to_vec).unwrap_or_default();
    let phases = trainer.step_profile().unwrap_or_default();
    trainer.set_step_profiling(false);
    let per_step = |s: f64| s * 1e3 / phases.steps.max(1) as f64;
    // The same forwards back to back, without a backward between them.
    trainer.tape_mut().set_profiling(true);
    for _ in 0..steps.max(1) {
        for f in &batch {
            trainer.forward(f).map_err(err)?;
        }
    }
    let alone = trainer.tape_mut().profile().map(<[_]>::to_vec).unwrap_or_default();
    trainer.tape_mut().set_profiling(false);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let frames_timed = (steps.max(1) as usize * batch.len()) as f64;
    let nodes: Vec<serde_json::Value> = ptq
        .nodes
        .iter()
        .zip(profile.iter().zip(&alone))
        .map(|(node, (t, alone))| {
            let kind = match &node.op {
                crate::ir::Op::Conv(c) => {
                    let (k, s) = (c.window.kernel[0], c.window.strides[0]);
                    format!("Conv{} {k}x{} s{s}", if c.group > 1 { " dw" } else { "" }, c.window.kernel[1])
                }
                op => op.name().to_string(),
            };
            let ms: Vec<f64> = t.iter().map(|s| s * 1e3 / frames_timed).collect();
            serde_json::json!({ "name": node.name, "op": node.op.name(), "kind": kind, "ms": ms, "forwardAloneMs": alone[0] * 1e3 / frames_timed })
        })
        .collect();
    Ok(serde_json::json!({
        "fp32Ms": median(fp32),
        "stepMs": median(step_ms),
        "batch": batch.len(),
        "mode": format!("{:?}", trainer.mode()),
        "nodes": nodes,
        "phasesMs": {
            "frames": per_step(phases.frames),
            "update": per_step(phases.update),
            "constants": per_step(phases.constants),
            "prepare": per_step(phases.prepare),
            "export": per_step(phases.export),
            "simulate": per_step(phases.simulate),
        },
    })
    .to_string())
}
