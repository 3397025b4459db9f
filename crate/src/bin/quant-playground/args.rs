use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "quant-playground", version, about = "Inspect, run and quantize ONNX vision models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Inputs, outputs, op histogram, parameters, size, quantizable and unsupported ops.
    Inspect {
        model: PathBuf,
        #[command(flatten)]
        import: ImportArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs the model and writes each output as OUT/<name>.npy (float32).
    Run {
        model: PathBuf,
        #[command(flatten)]
        import: ImportArgs,
        /// An input tensor: NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// An image for a single-image-input model (PNG or JPEG).
        #[arg(long)]
        image: Option<PathBuf>,
        #[command(flatten)]
        pre: PreArgs,
        /// Folder for the outputs.
        #[arg(long)]
        out: PathBuf,
        /// Also write each input tensor as OUT/<name>.input.npy (what the model was fed).
        #[arg(long)]
        save_inputs: bool,
        /// The engine: fp32 (on a quantized model, its simulation: the int8 engine's integers
        /// computed in float), int8, or fake-quant (each quantized tensor rounded once in
        /// float, as onnxruntime runs a QDQ graph without fusion). int8 and fake-quant need a
        /// quantized model. Default: the model's own (`Model::run`).
        #[arg(long, value_enum)]
        engine: Option<EngineArg>,
    },
    /// Writes the model as ONNX (QDQ where it is quantized), as the engine holds it after import.
    Export(ExportArgs),
    /// Calibrates on a folder, quantizes (PTQ), reports fidelity and writes ONNX QDQ.
    Quantize(Box<crate::quantize::QuantizeArgs>),
    /// Times the FP32 engine (`Model::run`) on a deterministic pseudo-random input: median, min, p90.
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub import: ImportArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Also time every node (median over the timed runs) and print where the time goes, by op kind and the slowest nodes.
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub import: ImportArgs,
    /// The ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Default-domain opset to write (13..=21).
    #[arg(long, default_value_t = quant_playground::onnx::DEFAULT_EXPORT_OPSET)]
    pub opset: i64,
}

/// How a model file is read.
#[derive(Args)]
pub struct ImportArgs {
    /// Fix an input's shape: NAME=1,3,224,224 (repeatable). Dynamic dims default to batch 1, spatial 224.
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shapes: Vec<String>,
    /// Which quantized nodes of a QDQ file the int8 engine runs with integer kernels:
    /// onnxruntime (those onnxruntime fuses, the rest in float as it runs them; the default for a
    /// file we did not write) or integer (every node with an integer form, as our own exports
    /// and integer-only runtimes).
    #[arg(long, value_enum)]
    pub fusion: Option<FusionArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FusionArg {
    Integer,
    Onnxruntime,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum EngineArg {
    Fp32,
    Int8,
    FakeQuant,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    Nchw,
    Nhwc,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FitArg {
    Stretch,
    Crop,
    Letterbox,
    PadRight,
}

#[derive(Args)]
pub struct PreArgs {
    /// Preprocessing preset: imagenet, lite, signed, yolo, ppocr, raw (default: imagenet).
    #[arg(long)]
    pub preset: Option<String>,
    /// Input size WxH (default: from the model's input shape).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Per-channel mean on the 0..255 scale: R,G,B.
    #[arg(long, value_name = "R,G,B")]
    pub mean: Option<String>,
    /// Per-channel std on the 0..255 scale: R,G,B.
    #[arg(long, value_name = "R,G,B")]
    pub std: Option<String>,
    /// Tensor layout (default: from the model's input shape).
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Feed channels in BGR order.
    #[arg(long)]
    pub bgr: bool,
    /// How the image is fitted to the input size.
    #[arg(long, value_enum)]
    pub fit: Option<FitArg>,
}
