use std::collections::HashMap;
use std::fs;
use std::path::Path;

use quant_playground::ir::Fusion;
use quant_playground::model::{onnx_op_histogram, Model, ModelSummary};
use quant_playground::onnx::{ImportOptions, SUPPORTED_OPS};
use quant_playground::preprocess::{preprocess, Fit, Layout, Preprocess};
use quant_playground::{npy, Error, Result};

use crate::args::{BenchArgs, Cli, Command, EngineArg, ExportArgs, FitArg, FusionArg, ImportArgs, LayoutArg, PreArgs};

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, import, json } => inspect(&model, &import, json),
        Command::Run { model, import, inputs, image, pre, out, save_inputs, engine } => {
            run(&model, &import, &inputs, image.as_deref(), &pre, &out, save_inputs, engine)
        }
        Command::Export(args) => export(&args),
        Command::Bench(args) => bench(&args),
        Command::Quantize(args) => crate::quantize::quantize(&args),
    }
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

fn parse_list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>> {
    text.split(',').map(|s| s.trim().parse().map_err(|_| Error::Invalid(format!("{what}: cannot read '{s}' in '{text}'")))).collect()
}

fn split_assignment<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    text.rsplit_once('=').ok_or_else(|| Error::Invalid(format!("{what} '{text}' must be NAME=VALUE")))
}

pub fn import_options(import: &ImportArgs) -> Result<ImportOptions> {
    let mut input_shapes = HashMap::new();
    for s in &import.input_shapes {
        let (name, dims) = split_assignment(s, "--input-shape")?;
        input_shapes.insert(name.to_string(), parse_list(dims, "--input-shape")?);
    }
    let fusion = import.fusion.map(|f| match f {
        FusionArg::Integer => Fusion::Integer,
        FusionArg::Onnxruntime => Fusion::Onnxruntime,
    });
    Ok(ImportOptions { input_shapes, fusion, ..ImportOptions::default() })
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn print_summary(s: &ModelSummary) {
    println!("producer   {}  (opset {})", if s.producer.is_empty() { "?" } else { &s.producer }, s.opset);
    println!("size       {}  parameters {}", human_bytes(s.file_bytes), s.parameters);
    for i in &s.inputs {
        let choices = if i.choices.is_empty() { String::new() } else { format!("  [{}]", i.choices.join(", ")) };
        println!("input      {} {:?}{choices}", i.name, i.shape);
    }
    for o in &s.outputs {
        println!("output     {} {:?}", o.name, o.shape);
    }
    let onnx: Vec<String> = s.onnx_ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("onnx ops   {}", onnx.join(", "));
    let ir: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("runs as    {}", ir.join(", "));
    let q: usize = s.quantizable.iter().map(|l| l.params).sum();
    println!("quantizable {} layers with weights ({} parameters)", s.quantizable.len(), q);
    println!("in float   {}", if s.float_ops.is_empty() { "-".to_string() } else { s.float_ops.join(", ") });
    if s.quantized {
        println!("quantized  yes (a QDQ file or a PTQ result), rounding {}, fusion {}", s.requantization.unwrap_or("-"), s.fusion.unwrap_or("-"));
        for f in &s.int8_float {
            println!("int8 float {} ({}): {}", f.node, f.op, f.reason);
        }
    }
    if !s.ignored_domains.is_empty() {
        println!("ignored    unused opset domains: {}", s.ignored_domains.join(", "));
    }
    if let Some(p) = &s.preprocess {
        println!("guess      {}x{} {:?}, ImageNet normalisation (override with --preset)", p.width, p.height, p.layout);
    }
}

fn inspect(path: &Path, import: &ImportArgs, json: bool) -> Result<()> {
    let bytes = read(path)?;
    let options = import_options(import)?;
    match Model::load(&bytes, &options) {
        Ok(model) => {
            let summary = model.summary();
            if json {
                println!("{}", serde_json::to_string_pretty(&summary).expect("summary serialises"));
            } else {
                print_summary(&summary);
            }
            Ok(())
        }
        Err(err) => {
            // Still show what the file holds, then the error.
            if let Ok(hist) = onnx_op_histogram(&bytes, options.max_bytes) {
                let unsupported: Vec<&String> = hist.keys().filter(|k| !SUPPORTED_OPS.contains(&k.as_str())).collect();
                if json {
                    let value = serde_json::json!({ "onnxOps": hist, "unsupported": unsupported, "error": err.to_string() });
                    println!("{}", serde_json::to_string_pretty(&value).expect("serialises"));
                } else {
                    let ops: Vec<String> = hist.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("onnx ops   {}", ops.join(", "));
                }
            }
            Err(err)
        }
    }
}

pub fn preprocessing(model: &Model, pre: &PreArgs) -> Result<Preprocess> {
    let input = &model.meta.inputs[0];
    let guess = Preprocess::guess(&input.shape);
    let layout = match pre.layout {
        Some(LayoutArg::Nchw) => Layout::Nchw,
        Some(LayoutArg::Nhwc) => Layout::Nhwc,
        None => guess.as_ref().map_or(Layout::Nchw, |g| g.layout),
    };
    let (w, h) = match &pre.size {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or_else(|| Error::Invalid(format!("--size '{s}' must be WxH")))?;
            (parse_list::<usize>(w, "--size")?[0], parse_list::<usize>(h, "--size")?[0])
        }
        None => guess.as_ref().map(|g| (g.width, g.height)).ok_or_else(|| Error::Input {
            name: input.name.clone(),
            msg: format!("shape {:?} does not look like an image; give --size and --layout", input.shape),
        })?,
    };
    let mut p = Preprocess::preset(pre.preset.as_deref().unwrap_or("imagenet"), w, h, layout)?;
    if let Some(m) = &pre.mean {
        let v: Vec<f32> = parse_list(m, "--mean")?;
        p.mean = [v[0], *v.get(1).unwrap_or(&v[0]), *v.get(2).unwrap_or(&v[0])];
    }
    if let Some(s) = &pre.std {
        let v: Vec<f32> = parse_list(s, "--std")?;
        p.std = [v[0], *v.get(1).unwrap_or(&v[0]), *v.get(2).unwrap_or(&v[0])];
    }
    p.bgr |= pre.bgr;
    if let Some(fit) = pre.fit {
        p.fit = match fit {
            FitArg::Stretch => Fit::Stretch,
            FitArg::Crop => Fit::CenterCrop { crop: 0.875 },
            FitArg::Letterbox => Fit::Letterbox { pad: 114.0 },
            FitArg::PadRight => Fit::PadRight { pad: 0.0 },
        };
    }
    Ok(p)
}

/// Decodes an image file to RGBA pixels.
pub fn load_rgba(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let bytes = read(path)?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Invalid(format!("{}: not a readable image ({e})", path.display())))?;
    let rgba = img.to_rgba8();
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    Ok((rgba.into_raw(), w, h))
}

fn file_name_for(output: &str) -> String {
    output.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

#[allow(clippy::too_many_arguments)]
fn run(path: &Path, import: &ImportArgs, inputs: &[String], image: Option<&Path>, pre: &PreArgs, out: &Path, save_inputs: bool, engine: Option<EngineArg>) -> Result<()> {
    let bytes = read(path)?;
    let options = import_options(import)?;
    let model = Model::load(&bytes, &options)?;
    let mut named: Vec<(String, Vec<f32>)> = Vec::new();
    for spec in inputs {
        let (name, file) = split_assignment(spec, "--input")?;
        let arr = npy::read(&read(Path::new(file))?, file)?;
        let expected = model.meta.inputs.iter().find(|i| i.name == name).map(|i| i.shape.clone());
        if let Some(shape) = expected {
            if shape != arr.shape {
                return Err(Error::Input { name: name.into(), msg: format!("{file} has shape {:?}, the model takes {shape:?} (see --input-shape)", arr.shape) });
            }
        }
        named.push((name.to_string(), arr.data));
    }
    if let Some(image) = image {
        if model.meta.inputs.len() != 1 {
            return Err(Error::Invalid(format!("--image needs a model with one input; this one has {}: use --input", model.meta.inputs.len())));
        }
        let p = preprocessing(&model, pre)?;
        let input = &model.meta.inputs[0];
        if p.shape() != input.shape {
            return Err(Error::Input { name: input.name.clone(), msg: format!("preprocessing gives {:?}, the model takes {:?}", p.shape(), input.shape) });
        }
        let (rgba, w, h) = load_rgba(image)?;
        named.push((input.name.clone(), preprocess(&rgba, w, h, &p)?));
    }
    let outputs = match engine {
        None => model.run_named(&named)?,
        Some(engine) => run_on(&model, &named, engine)?,
    };
    fs::create_dir_all(out).map_err(|source| Error::Io { path: out.display().to_string(), source })?;
    if save_inputs {
        for (name, data) in &named {
            let shape = model.meta.inputs.iter().find(|i| &i.name == name).map_or_else(|| vec![data.len()], |i| i.shape.clone());
            let file = out.join(format!("{}.input.npy", file_name_for(name)));
            fs::write(&file, npy::write(&shape, data)).map_err(|source| Error::Io { path: file.display().to_string(), source })?;
        }
    }
    for o in &outputs {
        let file = out.join(format!("{}.npy", file_name_for(&o.name)));
        fs::write(&file, npy::write(&o.shape, &o.data)).map_err(|source| Error::Io { path: file.display().to_string(), source })?;
        let (argmax, max) = o.data.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        println!("{} {:?} -> {} (argmax {argmax}, max {max:.4})", o.name, o.shape, file.display());
    }
    Ok(())
}

// ---- bench: FP32 latency of Model::run (used by bench/benchmarks/fp32-native.mjs) ----

/// Deterministic pseudo-random values in [-1, 1) (xorshift32), the same on every machine.
fn bench_input(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// What a node is, for the profile: convolutions by kernel and grouping, the rest by op name.
/// Also its multiply-accumulates ([`Graph::node_macs`](quant_playground::ir::Graph::node_macs)).
fn bench_kind(g: &quant_playground::ir::Graph, n: usize) -> (String, u64) {
    use quant_playground::ir::Op;
    let node = &g.nodes[n];
    let kind = match &node.op {
        Op::Conv(c) => {
            let (x, y) = (&g.values[node.inputs[0]].shape, &g.values[node.outputs[0]].shape);
            let k = &c.window.kernel;
            let stride = if c.window.strides.iter().any(|&s| s != 1) { format!(" s{}", c.window.strides[0]) } else { String::new() };
            if c.group == 1 {
                format!("Conv {}x{}{stride}", k[0], k[1])
            } else if c.group == x[1] && c.group == y[1] {
                format!("Conv depthwise {}x{}{stride}", k[0], k[1])
            } else {
                format!("Conv grouped {}x{}{stride}", k[0], k[1])
            }
        }
        other => other.name().to_string(),
    };
    (kind, g.node_macs(n))
}

fn bench(args: &BenchArgs) -> Result<()> {
    use std::time::Instant;
    let bytes = read(&args.model)?;
    let options = import_options(&args.import)?;
    let t0 = Instant::now();
    let model = Model::load(&bytes, &options)?;
    let load_ms = ms(t0.elapsed());
    let inputs: Vec<Vec<f32>> =
        model.meta.inputs.iter().enumerate().map(|(i, info)| bench_input(info.shape.iter().product(), 0x9E37_79B9 ^ i as u32)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();

    for _ in 0..args.warmup {
        std::hint::black_box(model.run(&refs)?);
    }
    let mut samples = Vec::with_capacity(args.runs as usize);
    for _ in 0..args.runs {
        let t = Instant::now();
        std::hint::black_box(model.run(&refs)?);
        samples.push(ms(t.elapsed()));
    }
    let (med, min, p90, max) = (median(&samples), percentile(&samples, 0.0), percentile(&samples, 90.0), samples.iter().copied().fold(0.0, f64::max));

    // Per node: the time from the previous value computed (or the start) to this node's first output.
    let profile = if args.profile {
        let g = model.engine.graph();
        let mut producer = vec![usize::MAX; g.values.len()];
        for (n, node) in g.nodes.iter().enumerate() {
            for &o in &node.outputs {
                producer[o] = n;
            }
        }
        let mut per_node: Vec<Vec<f64>> = vec![Vec::with_capacity(args.runs as usize); g.nodes.len()];
        for _ in 0..args.runs {
            let mut last = Instant::now();
            let mut seen = vec![false; g.nodes.len()];
            model.run_observed(&refs, &mut |v, _| {
                let now = Instant::now();
                let n = producer[v];
                if n != usize::MAX && !seen[n] {
                    seen[n] = true;
                    per_node[n].push(ms(now - last));
                }
                last = now;
            })?;
        }
        let node_ms: Vec<f64> = per_node.iter().map(|s| if s.is_empty() { 0.0 } else { median(s) }).collect();
        let total: f64 = node_ms.iter().sum();
        let mut kinds: Vec<(String, usize, f64, u64)> = Vec::new();
        for (n, &t) in node_ms.iter().enumerate() {
            let (kind, macs) = bench_kind(g, n);
            match kinds.iter_mut().find(|k| k.0 == kind) {
                Some(k) => {
                    k.1 += 1;
                    k.2 += t;
                    k.3 += macs;
                }
                None => kinds.push((kind, 1, t, macs)),
            }
        }
        kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut order: Vec<usize> = (0..g.nodes.len()).collect();
        order.sort_by(|&a, &b| node_ms[b].total_cmp(&node_ms[a]));
        let gmacs = |macs: u64, ms: f64| if macs > 0 && ms > 0.0 { Some(macs as f64 / ms / 1e6) } else { None };
        let by_kind: Vec<serde_json::Value> = kinds
            .iter()
            .map(|(kind, count, t, macs)| {
                serde_json::json!({ "kind": kind, "nodes": count, "ms": t, "share": t / total, "macs": macs, "gmacPerS": gmacs(*macs, *t) })
            })
            .collect();
        let slowest: Vec<serde_json::Value> = order
            .iter()
            .take(15)
            .map(|&n| {
                let node = &g.nodes[n];
                let (kind, macs) = bench_kind(g, n);
                serde_json::json!({
                    "node": node.name, "kind": kind, "ms": node_ms[n], "share": node_ms[n] / total,
                    "input": g.values[node.inputs[0]].shape, "output": g.values[node.outputs[0]].shape, "gmacPerS": gmacs(macs, node_ms[n]),
                })
            })
            .collect();
        Some(serde_json::json!({ "nodesMs": total, "byKind": by_kind, "slowest": slowest }))
    } else {
        None
    };

    if args.json {
        let value = serde_json::json!({
            "model": args.model.display().to_string(),
            "inputs": model.meta.inputs.iter().map(|i| serde_json::json!({ "name": i.name, "shape": i.shape })).collect::<Vec<_>>(),
            "input": "xorshift32 uniform [-1, 1)",
            "loadMs": load_ms,
            "warmup": args.warmup,
            "runs": args.runs,
            "samplesMs": samples,
            "medianMs": med,
            "minMs": min,
            "p90Ms": p90,
            "maxMs": max,
            "profile": profile,
        });
        println!("{}", serde_json::to_string_pretty(&value).expect("serialises"));
        return Ok(());
    }
    let shapes: Vec<String> = model.meta.inputs.iter().map(|i| format!("{} {:?}", i.name, i.shape)).collect();
    println!("model      {}  ({})", args.model.display(), shapes.join(", "));
    println!("load       {load_ms:.1} ms");
    println!("run        median {med:.2} ms  min {min:.2} ms  p90 {p90:.2} ms  max {max:.2} ms  ({} runs after {} warm-up)", args.runs, args.warmup);
    if let Some(p) = profile {
        println!("\nper op kind (median per node, summed; {:.2} ms in nodes)", p["nodesMs"].as_f64().unwrap_or(0.0));
        println!("{:<28} {:>5} {:>9} {:>6} {:>8}", "kind", "nodes", "ms", "share", "GMAC/s");
        for k in p["byKind"].as_array().into_iter().flatten() {
            let rate = k["gmacPerS"].as_f64().map_or(String::new(), |r| format!("{r:.2}"));
            println!(
                "{:<28} {:>5} {:>9.3} {:>5.1}% {:>8}",
                k["kind"].as_str().unwrap_or(""),
                k["nodes"],
                k["ms"].as_f64().unwrap_or(0.0),
                100.0 * k["share"].as_f64().unwrap_or(0.0),
                rate
            );
        }
        println!("\nslowest nodes");
        for s in p["slowest"].as_array().into_iter().flatten() {
            let rate = s["gmacPerS"].as_f64().map_or(String::new(), |r| format!("{r:.2} GMAC/s"));
            println!(
                "{:>8.3} ms {:>5.1}%  {:<24} {} -> {}  {}  {rate}",
                s["ms"].as_f64().unwrap_or(0.0),
                100.0 * s["share"].as_f64().unwrap_or(0.0),
                s["kind"].as_str().unwrap_or(""),
                s["input"],
                s["output"],
                s["node"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// The outputs of the engine chosen by `--engine`.
fn run_on(model: &Model, named: &[(String, Vec<f32>)], engine: EngineArg) -> Result<Vec<quant_playground::model::Output>> {
    if engine != EngineArg::Fp32 && !model.is_quantized() {
        return Err(Error::Invalid("--engine int8 and --engine fake-quant need a quantized model (a QDQ file)".into()));
    }
    let g = model.engine.graph();
    let ordered = g
        .inputs
        .iter()
        .map(|&id| {
            let name = &g.values[id].name;
            named.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice()).ok_or_else(|| Error::Input { name: name.clone(), msg: "was not given".into() })
        })
        .collect::<Result<Vec<_>>>()?;
    let results = match engine {
        EngineArg::Fp32 => model.engine.run(&ordered)?,
        EngineArg::Int8 => quant_playground::engine::Int8Engine::new(g.clone())?.run(&ordered)?,
        EngineArg::FakeQuant => quant_playground::engine::Fp32Engine::fake_quantized(g.clone()).run(&ordered)?,
    };
    Ok(g.outputs
        .iter()
        .zip(results)
        .map(|(&o, data)| quant_playground::model::Output { name: g.values[o].name.clone(), shape: g.values[o].shape.clone(), data })
        .collect())
}

// ---- export: the model as ONNX (QDQ where quantized) ----

fn export(args: &ExportArgs) -> Result<()> {
    let bytes = read(&args.model)?;
    let model = Model::load(&bytes, &import_options(&args.import)?)?;
    let options = quant_playground::onnx::ExportOptions { opset: args.opset, ..Default::default() };
    let onnx = quant_playground::onnx::export(model.engine.graph(), &options)?;
    fs::write(&args.out, &onnx).map_err(|source| Error::Io { path: args.out.display().to_string(), source })?;
    let kind = if model.is_quantized() { "QDQ" } else { "float" };
    println!("{} -> {} ({kind}, opset {}, {} bytes)", args.model.display(), args.out.display(), args.opset, onnx.len());
    Ok(())
}
