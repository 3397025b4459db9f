use std::collections::HashMap;
use std::fs;
use std::path::Path;

use quant_playground::model::{onnx_op_histogram, Model, ModelSummary};
use quant_playground::onnx::{ImportOptions, SUPPORTED_OPS};
use quant_playground::preprocess::{preprocess, Fit, Layout, Preprocess};
use quant_playground::{npy, Error, Result};

use crate::args::{Cli, Command, FitArg, LayoutArg, PreArgs, ShapeArgs};

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, shapes, json } => inspect(&model, &shapes, json),
        Command::Run { model, shapes, inputs, image, pre, out } => run(&model, &shapes, &inputs, image.as_deref(), &pre, &out),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

fn parse_list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>> {
    text.split(',').map(|s| s.trim().parse().map_err(|_| Error::Invalid(format!("{what}: cannot read '{s}' in '{text}'")))).collect()
}

fn split_assignment<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    text.rsplit_once('=').ok_or_else(|| Error::Invalid(format!("{what} '{text}' must be NAME=VALUE")))
}

fn import_options(shapes: &ShapeArgs) -> Result<ImportOptions> {
    let mut input_shapes = HashMap::new();
    for s in &shapes.input_shapes {
        let (name, dims) = split_assignment(s, "--input-shape")?;
        input_shapes.insert(name.to_string(), parse_list(dims, "--input-shape")?);
    }
    Ok(ImportOptions { input_shapes, ..ImportOptions::default() })
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
    if !s.ignored_domains.is_empty() {
        println!("ignored    unused opset domains: {}", s.ignored_domains.join(", "));
    }
    if let Some(p) = &s.preprocess {
        println!("guess      {}x{} {:?}, ImageNet normalisation (override with --preset)", p.width, p.height, p.layout);
    }
}

fn inspect(path: &Path, shapes: &ShapeArgs, json: bool) -> Result<()> {
    let bytes = read(path)?;
    let options = import_options(shapes)?;
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

fn preprocessing(model: &Model, pre: &PreArgs) -> Result<Preprocess> {
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

fn run(path: &Path, shapes: &ShapeArgs, inputs: &[String], image: Option<&Path>, pre: &PreArgs, out: &Path) -> Result<()> {
    let bytes = read(path)?;
    let options = import_options(shapes)?;
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
    let outputs = model.run_named(&named)?;
    fs::create_dir_all(out).map_err(|source| Error::Io { path: out.display().to_string(), source })?;
    for o in &outputs {
        let file = out.join(format!("{}.npy", file_name_for(&o.name)));
        fs::write(&file, npy::write(&o.shape, &o.data)).map_err(|source| Error::Io { path: file.display().to_string(), source })?;
        let (argmax, max) = o.data.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        println!("{} {:?} -> {} (argmax {argmax}, max {max:.4})", o.name, o.shape, file.display());
    }
    Ok(())
}
