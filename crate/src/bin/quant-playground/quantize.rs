//! `quant-playground quantize`: calibrate on a folder, quantize, measure, export.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use quant_playground::augment::{Augment, View, ViewPool};
use quant_playground::model::Model;
use quant_playground::onnx::export::{export, ExportOptions};
use quant_playground::preprocess::{preprocess, Preprocess};
use quant_playground::quant::metrics::Fidelity;
use quant_playground::quant::observer::CalibrationMethod;
use quant_playground::ir::Requantization;
use quant_playground::quant::ptq::QuantConfig;
use quant_playground::quant::sensitivity::Sensitivity;
use quant_playground::rng::Rng;
use quant_playground::session::{evaluate, QuantReport, Session, Variant};
use quant_playground::train::labels::ClassMap;
use quant_playground::train::qat::{FrozenStem, QatConfig, QatMode, StepStats};
use quant_playground::{npy, Error, Result};
use serde::Serialize;

use crate::args::{PreArgs, ImportArgs};
use crate::commands::{import_options, load_rgba, preprocessing, read};

#[derive(Clone, Copy, ValueEnum)]
pub enum CalibrationArg {
    Minmax,
    MovingAverage,
    Percentile,
    Entropy,
    Mse,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum QatModeArg {
    /// Step sizes and biases.
    Scales,
    /// All weights too.
    Full,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RequantizationArg {
    /// `round_half_even(f32(acc) · f32 scale)`, as onnxruntime.
    Fp32,
    /// A Q31 multiplier and a shift, as TFLite.
    FixedPoint,
}

#[derive(Args)]
pub struct QuantizeArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub import: ImportArgs,
    /// Calibration data: a folder of images (PNG/JPEG, preprocessed as the flags say) or of
    /// .npy tensors (one input per file, already preprocessed).
    #[arg(long, value_name = "DIR")]
    pub calib: PathBuf,
    /// Calibrate on this many random views (crops, flips, brightness) of the images instead of
    /// each image once.
    #[arg(long, default_value_t = 0)]
    pub calib_views: usize,
    #[command(flatten)]
    pub pre: PreArgs,
    /// Weight width, 2..=8.
    #[arg(long, default_value_t = 8)]
    pub weight_bits: u32,
    /// One weight scale per output channel (the default).
    #[arg(long, conflicts_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per tensor.
    #[arg(long)]
    pub per_tensor: bool,
    /// How activation ranges are chosen.
    #[arg(long, value_enum, default_value = "mse")]
    pub calibration: CalibrationArg,
    /// The percentile of `--calibration percentile`.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f32,
    /// Export activations as int8 instead of uint8 (the same reals; onnxruntime fuses fewer
    /// int8 QDQ groups into its integer kernels).
    #[arg(long)]
    pub int8_activations: bool,
    /// Symmetric activation ranges.
    #[arg(long)]
    pub symmetric_activations: bool,
    /// Leave these nodes in float: NODE,NODE,...
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub keep_float: Vec<String>,
    /// Leave the model's outputs, and the last layer computing each, in float.
    #[arg(long)]
    pub float_outputs: bool,
    /// Skip bias correction.
    #[arg(long)]
    pub no_bias_correction: bool,
    /// Cross-layer equalization of consecutive convolutions (no activation or a ReLU between)
    /// before calibration.
    #[arg(long)]
    pub equalize: bool,
    /// How the int8 model rounds: as onnxruntime (`fp32`, the default: the exported file then
    /// gives the same integers in onnxruntime) or as TFLite's integer-only kernels.
    #[arg(long, value_enum, default_value = "fp32")]
    pub requantization: RequantizationArg,
    /// Rank the quantized layers by sensitivity (the output noise each adds when quantized
    /// alone, against FP32 on the kept calibration frames) and put the ranking in the report.
    #[arg(long)]
    pub sensitivity: bool,
    /// Keep the N most sensitive layers in float (among those adding at least 5% of the
    /// noise); implies --sensitivity.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub auto_float: usize,
    /// Quantization-aware fine-tuning steps after PTQ (0: none), distilled from the FP32 model
    /// on random views of the calibration images (see --qat-views).
    #[arg(long, default_value_t = 0)]
    pub qat_steps: usize,
    /// QAT learning rate of the weights (default: the recipe's).
    #[arg(long)]
    pub qat_lr: Option<f32>,
    /// What QAT trains (default: scales at 8-bit weights, full below).
    #[arg(long, value_enum)]
    pub qat_mode: Option<QatModeArg>,
    /// Frames per QAT step (default: the recipe's, 4 in scales mode and 8 in full mode).
    #[arg(long)]
    pub qat_batch: Option<usize>,
    /// QAT freezes the first layers, as many as make up at most this fraction of the
    /// multiply-adds (0 to 1), at --qat-freeze-stem-at: the steps after it are faster (nothing
    /// below them needs a gradient). 0: every layer trains to the end. Default: 0.3 in full
    /// mode, 0 in scales mode.
    #[arg(long, value_name = "FRACTION")]
    pub qat_freeze_stem: Option<f32>,
    /// When the stem freezes, as a fraction of the QAT steps (0 to below 1): every layer trains
    /// until then, and the stem keeps what it learned. 0: from the start, as PTQ made it.
    #[arg(long, value_name = "FRACTION", default_value_t = 1.0 / 3.0)]
    pub qat_freeze_stem_at: f32,
    /// Random views QAT draws its frames from, each met about steps x batch / N times (its
    /// FP32 targets computed once). Default: the recipe's, steps x batch / 4.
    #[arg(long, value_name = "N")]
    pub qat_views: Option<usize>,
    /// QAT: also match intermediate features to the FP32 model's, with this weight relative
    /// to the output distillation (normalised MSE; default values: the narrowest quantized
    /// cut point at each resolution). Default 0 (off), or 1 with --qat-feature-layers.
    #[arg(long, value_name = "W")]
    pub qat_features: Option<f32>,
    /// QAT: the values (or nodes) whose features are matched: NAME,NAME,...
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub qat_feature_layers: Vec<String>,
    /// QAT with labels: a folder holding one subfolder per class, named by the class (see
    /// --labels) or by its output index, with images or .npy tensors inside. A classifier
    /// only. Labelled frames add the cross-entropy to their class and are trained on too,
    /// augmented like the calibration images.
    #[arg(long, value_name = "DIR")]
    pub qat_labels: Option<PathBuf>,
    /// Class names, one per line (line i names output index i), matched to the --qat-labels
    /// folder names ignoring case, '_' as a space.
    #[arg(long, value_name = "FILE", requires = "qat_labels")]
    pub labels: Option<PathBuf>,
    /// Weight of the cross-entropy to labels, relative to the distillation.
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    pub qat_label_weight: f32,
    /// Held-out evaluation data (images or .npy) for the report's fidelity.
    #[arg(long, value_name = "DIR")]
    pub eval: Option<PathBuf>,
    /// Evaluate on this many random views of the evaluation images.
    #[arg(long, default_value_t = 0)]
    pub eval_views: usize,
    /// Seed of the random views.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The quantized model, ONNX QDQ.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report: config, per-layer SQNR, fidelity on the calibration (and evaluation) frames.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Where the frames of a folder come from.
enum Source {
    Images(Vec<(Vec<u8>, usize, usize)>),
    Tensors(Vec<Vec<f32>>),
}

fn load_folder(dir: &Path, model: &Model) -> Result<Source> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| Error::Io { path: dir.display().to_string(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let ext = |p: &Path| p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
    let npys: Vec<&PathBuf> = paths.iter().filter(|p| ext(p) == "npy").collect();
    if !npys.is_empty() {
        if model.meta.inputs.len() != 1 {
            return Err(Error::Invalid(format!("{}: .npy calibration needs a single-input model; this one has {}", dir.display(), model.meta.inputs.len())));
        }
        let want: usize = model.meta.inputs[0].shape.iter().product();
        let mut tensors = Vec::new();
        for p in npys {
            let array = npy::read(&read(p)?, &p.display().to_string())?;
            if array.data.len() != want {
                return Err(Error::Input {
                    name: model.meta.inputs[0].name.clone(),
                    msg: format!("{} holds shape {:?}, the model takes {:?}", p.display(), array.shape, model.meta.inputs[0].shape),
                });
            }
            tensors.push(array.data);
        }
        return Ok(Source::Tensors(tensors));
    }
    let images: Vec<&PathBuf> = paths.iter().filter(|p| matches!(ext(p).as_str(), "png" | "jpg" | "jpeg")).collect();
    if images.is_empty() {
        return Err(Error::Invalid(format!("{} holds no images (.png, .jpg) and no .npy tensors", dir.display())));
    }
    Ok(Source::Images(images.into_iter().map(|p| load_rgba(p)).collect::<Result<_>>()?))
}

/// One image or tensor of a source.
enum Item<'a> {
    Image(&'a (Vec<u8>, usize, usize)),
    Tensor(&'a [f32]),
}

fn items(source: &Source) -> Vec<Item<'_>> {
    match source {
        Source::Images(i) => i.iter().map(Item::Image).collect(),
        Source::Tensors(t) => t.iter().map(|t| Item::Tensor(t)).collect(),
    }
}

/// The frames of a source: each image or tensor once, or `views` random views of the images.
fn frames(source: &Source, views: usize, seed: u64, p: &Preprocess) -> Result<Vec<Vec<f32>>> {
    match source {
        Source::Tensors(t) if views > 0 => Err(Error::Invalid(format!("random views need images; the folder holds {} tensors", t.len()))),
        Source::Tensors(t) => Ok(t.clone()),
        Source::Images(images) if views == 0 => images.iter().map(|(px, w, h)| preprocess(px, *w, *h, p)).collect(),
        Source::Images(images) => {
            let mut rng = Rng::seeded(seed);
            (0..views)
                .map(|i| {
                    let (px, w, h) = &images[i % images.len()];
                    let (v, vw, vh) = View::random(&mut rng, &Augment::default()).apply(px, *w, *h);
                    preprocess(&v, vw, vh, p)
                })
                .collect()
        }
    }
}

/// A progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise).
struct Progress {
    what: &'static str,
    total: usize,
    start: Instant,
    tty: bool,
    last_decile: usize,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Progress {
        Progress { what, total, start: Instant::now(), tty: std::io::stderr().is_terminal(), last_decile: 0 }
    }

    fn update(&mut self, done: usize) {
        let frac = done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { elapsed / done as f64 * (self.total - done) as f64 } else { 0.0 };
        let line = format!("{:<11} [{}{}] {done}/{} {:.1}s, ETA {:.1}s", self.what, "#".repeat(filled), " ".repeat(width - filled), self.total, elapsed, eta);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if done == self.total {
                let _ = writeln!(err);
            }
        } else if done == self.total || (frac * 10.0) as usize > self.last_decile {
            self.last_decile = (frac * 10.0) as usize;
            let _ = writeln!(err, "{line}");
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    model: String,
    preprocess: &'a Preprocess,
    ptq: &'a QuantReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    sensitivity: Option<Sensitivity>,
    evaluation: Option<Evaluation>,
    qat: Option<QatSummary<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QatSummary<'a> {
    /// The recipe as given (`None` fields: chosen by the trainer; see `mode`, `batchSize`).
    config: &'a QatConfig,
    mode: QatMode,
    batch_size: usize,
    /// The stem: the first layers, kept as they are from `frozenStem.fromStep` on (0: as PTQ made them).
    frozen_stem: FrozenStem,
    /// The loss terms used: per output `kl`, `anchor-kl` or `mse`, then `feature-mse`,
    /// `cross-entropy`.
    losses: Vec<&'static str>,
    /// The values whose features were matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    feature_values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a LabelSummary>,
    report: &'a QuantReport,
    /// Per step: the loss and its terms (and the held-out distillation where measured).
    loss_curve: &'a [StepStats],
    seconds: f64,
    evaluation: Option<&'a Evaluation>,
}

/// The labelled frames QAT trained with.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LabelSummary {
    dir: String,
    frames: usize,
    classes: Vec<ClassFolder>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClassFolder {
    folder: String,
    class: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    frames: usize,
}

/// What a QAT run leaves for the report.
struct QatRun {
    config: QatConfig,
    mode: QatMode,
    batch_size: usize,
    frozen_stem: FrozenStem,
    losses: Vec<&'static str>,
    feature_values: Vec<String>,
    labels: Option<LabelSummary>,
    report: QuantReport,
    curve: Vec<StepStats>,
    seconds: f64,
    evaluation: Option<Evaluation>,
}

/// The class folders of `dir` (see `--qat-labels`): each folder's frames with its class.
fn load_labelled(dir: &Path, model: &Model, map: &ClassMap) -> Result<(Vec<(Source, usize)>, LabelSummary)> {
    let mut folders: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| Error::Io { path: dir.display().to_string(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(Error::Invalid(format!("{}: --qat-labels needs one subfolder per class (named by the class), and it holds none", dir.display())));
    }
    let mut sets = Vec::new();
    let mut classes = Vec::new();
    for folder in folders {
        let name = folder.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::Invalid(format!("{}: a class folder name must be UTF-8", folder.display())))?;
        let class = map.class_of(name).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        let source = load_folder(&folder, model)?;
        let frames = match &source {
            Source::Images(i) => i.len(),
            Source::Tensors(t) => t.len(),
        };
        classes.push(ClassFolder { folder: name.to_string(), class, name: map.name(class).map(String::from), frames });
        sets.push((source, class));
    }
    let frames = classes.iter().map(|c| c.frames).sum();
    Ok((sets, LabelSummary { dir: dir.display().to_string(), frames, classes }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Evaluation {
    frames: usize,
    fidelity: Fidelity,
}

pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let model = Model::load(&read(&a.model)?, &import_options(&a.import)?)?;
    let p = preprocessing(&model, &a.pre)?;
    let calibration = match a.calibration {
        CalibrationArg::Minmax => CalibrationMethod::MinMax,
        CalibrationArg::MovingAverage => CalibrationMethod::MovingAverageMinMax { momentum: 0.01 },
        CalibrationArg::Percentile => CalibrationMethod::Percentile { percentile: a.percentile },
        CalibrationArg::Entropy => CalibrationMethod::Entropy,
        CalibrationArg::Mse => CalibrationMethod::Mse,
    };
    let config = QuantConfig {
        weight_bits: a.weight_bits,
        per_channel: !a.per_tensor,
        activation_signed: a.int8_activations,
        activation_symmetric: a.symmetric_activations,
        calibration,
        keep_float: a.keep_float.clone(),
        bias_correction: !a.no_bias_correction,
        equalize: a.equalize,
        float_outputs: a.float_outputs,
        requantization: match a.requantization {
            RequantizationArg::Fp32 => Requantization::Fp32,
            RequantizationArg::FixedPoint => Requantization::FixedPoint,
        },
        ..QuantConfig::default()
    };
    let feature_weight = a.qat_features.unwrap_or(if a.qat_feature_layers.is_empty() { 0.0 } else { 1.0 });
    if a.qat_steps == 0 && (a.qat_labels.is_some() || feature_weight > 0.0) {
        return Err(Error::Invalid("--qat-labels and --qat-features shape QAT: give --qat-steps N too".into()));
    }
    // Labels first: a model that cannot take them fails before calibration.
    let labelled = match &a.qat_labels {
        None => None,
        Some(dir) => {
            let names = a.labels.as_ref().map(|f| read(f).map(|b| String::from_utf8_lossy(&b).into_owned())).transpose()?;
            let map = ClassMap::new(model.engine.graph(), names.as_deref()).map_err(|e| Error::Invalid(format!("{}: {e}", a.model.display())))?;
            Some(load_labelled(dir, &model, &map)?)
        }
    };
    let calib = frames(&load_folder(&a.calib, &model)?, a.calib_views, a.seed, &p)?;
    let mut session = Session::new(model);
    session.begin_calibration(config)?;
    let mut bar = Progress::new("calibrating", calib.len());
    for (i, x) in calib.iter().enumerate() {
        session.calibrate(&[x])?;
        bar.update(i + 1);
    }
    eprintln!("quantizing and measuring on {} kept calibration frames", session.kept_frames().len());
    let mut report = session.quantize_ptq()?.clone();
    let mut analysis = None;
    if a.sensitivity || a.auto_float > 0 {
        let mut bar = Progress::new("sensitivity", 1);
        let s = session.sensitivity(&mut |done, total| {
            bar.total = total.max(1);
            bar.update(done);
            true
        })?;
        eprintln!(
            "output SQNR {:.1} dB quantized ({:.1} dB with only the inputs quantized); the layers adding most output noise:",
            s.output_sqnr_db, s.inputs_only_sqnr_db
        );
        for l in s.layers.iter().take(8) {
            eprintln!("  {:5.1}%  {:6.1} dB alone  {} ({})", 100.0 * l.noise_share, l.output_sqnr_db, l.node, l.op);
        }
        if a.auto_float > 0 {
            let keep = s.most_sensitive(a.auto_float, 0.05);
            eprintln!("keeping in float: {}", if keep.is_empty() { "none (no layer adds 5% of the noise)".to_string() } else { keep.join(", ") });
            report = session.quantize_ptq_keeping_float(&keep)?.clone();
        }
        analysis = Some(s);
    }
    let eval_frames: Option<Vec<Vec<Vec<f32>>>> = match &a.eval {
        None => None,
        // Other views than calibration's: another seed.
        Some(dir) => Some(frames(&load_folder(dir, &session.model)?, a.eval_views, a.seed.wrapping_add(0x9e37), &p)?.into_iter().map(|x| vec![x]).collect()),
    };
    let evaluation = match &eval_frames {
        None => None,
        Some(f) => Some(evaluate_variant(&session, Variant::Ptq, f)?),
    };
    let mut qat = None;
    if a.qat_steps > 0 {
        let mut config = QatConfig { steps: Some(a.qat_steps), ..QatConfig::default() };
        if let Some(lr) = a.qat_lr {
            config.lr = lr;
        }
        if let Some(b) = a.qat_batch {
            config.batch_size = Some(b);
        }
        if let Some(v) = a.qat_views {
            config.views = Some(v);
        }
        config.freeze_stem = a.qat_freeze_stem;
        config.freeze_stem_at = a.qat_freeze_stem_at;
        config.mode = a.qat_mode.map(|m| match m {
            QatModeArg::Scales => QatMode::Scales,
            QatModeArg::Full => QatMode::Full,
        });
        config.feature_weight = feature_weight;
        config.feature_values = a.qat_feature_layers.clone();
        config.label_weight = a.qat_label_weight;
        let mut trainer = session.qat_trainer(config.clone())?;
        trainer.set_holdout(session.kept_frames())?;
        eprintln!("QAT: {} steps, mode {:?}, batch {}, {} random views", trainer.steps(), trainer.mode(), trainer.batch_size(), trainer.views());
        let stem = trainer.frozen_stem();
        if !stem.layers.is_empty() {
            eprintln!(
                "QAT: the stem freezes {}: {} layers, {:.0}% of the multiply-adds, {} of {} weights ({})",
                if stem.from_step == 0 { "from the start".to_string() } else { format!("after step {}", stem.from_step) },
                stem.layers.len(),
                stem.macs_share * 100.0,
                stem.weights,
                stem.total_weights,
                stem.layers.join(", ")
            );
        }
        let features = trainer.feature_values();
        if !features.is_empty() {
            eprintln!("QAT: matching the features of {} (teacher cache: {} frames)", features.join(", "), trainer.teacher_cache_frames());
        }
        // The steps draw their frames from a pool of random views of the calibration images and
        // the labelled ones together (each image as often as the others); labelled frames carry
        // their class.
        let calib_source = load_folder(&a.calib, &session.model)?;
        let mut pool: Vec<(Item, Option<usize>)> = items(&calib_source).into_iter().map(|i| (i, None)).collect();
        if let Some((sets, summary)) = &labelled {
            eprintln!("QAT: {} labelled frames in {} classes from {}", summary.frames, summary.classes.len(), summary.dir);
            for (source, class) in sets {
                pool.extend(items(source).into_iter().map(|i| (i, Some(*class))));
            }
        }
        let mut rng = Rng::seeded(a.seed.wrapping_add(0x7a7));
        let mut views = ViewPool::new(pool.len(), trainer.views(), &Augment::default());
        let batch = trainer.batch_size();
        let start = Instant::now();
        let mut bar = Progress::new("training", a.qat_steps);
        let mut curve = Vec::new();
        for _ in 0..a.qat_steps {
            let mut frames = Vec::with_capacity(batch);
            let mut labels = Vec::with_capacity(batch);
            for _ in 0..batch {
                let (source, view) = views.draw(&mut rng).expect("the pool has the calibration images");
                let (item, label) = &pool[*source];
                frames.push(vec![match item {
                    Item::Image((px, w, h)) => {
                        let (v, vw, vh) = view.apply(px, *w, *h);
                        preprocess(&v, vw, vh, &p)?
                    }
                    Item::Tensor(t) => t.to_vec(),
                }]);
                labels.push(*label);
            }
            let stats = trainer.step_labelled(&frames, &labels)?;
            bar.update(stats.step);
            curve.push(stats);
        }
        let seconds = start.elapsed().as_secs_f64();
        let report = session.finish_qat(&trainer)?.clone();
        let evaluation = match &eval_frames {
            None => None,
            Some(f) => Some(evaluate_variant(&session, Variant::Qat, f)?),
        };
        qat = Some(QatRun {
            config,
            mode: trainer.mode(),
            batch_size: trainer.batch_size(),
            frozen_stem: trainer.frozen_stem().clone(),
            losses: trainer.losses(),
            feature_values: features,
            labels: labelled.map(|(_, summary)| summary),
            report,
            curve,
            seconds,
            evaluation,
        });
    }
    print_report(&report, evaluation.as_ref());
    if let Some(q) = &qat {
        println!("QAT ({:.1} s; losses: {}):", q.seconds, q.losses.join(", "));
        print_report(&q.report, q.evaluation.as_ref());
    }
    if let Some(out) = &a.out {
        // The QAT result when there is one.
        let variant = if qat.is_some() { Variant::Qat } else { Variant::Ptq };
        let q = session.variant(variant)?.expect("just built");
        let bytes = export(&q.graph, &ExportOptions::default())?;
        fs::write(out, &bytes).map_err(|source| Error::Io { path: out.display().to_string(), source })?;
        eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
    }
    if let Some(path) = &a.report {
        let qat = qat.as_ref().map(|q| QatSummary {
            config: &q.config,
            mode: q.mode,
            batch_size: q.batch_size,
            frozen_stem: q.frozen_stem.clone(),
            losses: q.losses.clone(),
            feature_values: q.feature_values.clone(),
            labels: q.labels.as_ref(),
            report: &q.report,
            loss_curve: &q.curve,
            seconds: q.seconds,
            evaluation: q.evaluation.as_ref(),
        });
        let r = Report { model: a.model.display().to_string(), preprocess: &p, ptq: &report, sensitivity: analysis, evaluation, qat };
        let json = serde_json::to_string_pretty(&r).expect("reports serialize");
        fs::write(path, json).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_fidelity(label: &str, f: &Fidelity) {
    for o in &f.outputs {
        print!("{label:<12} {:<24} cosine {:.4}  SQNR {:>6.2} dB", o.name, o.cosine, o.sqnr_db);
        if let Some(c) = &o.classifier {
            print!("  top-1 {:.1}%  top-5 {:.1}%  KL {:.4}  confident top-1 {:.1}% ({} frames)", c.top1 * 100.0, c.top5 * 100.0, c.mean_kl, c.confident_top1 * 100.0, c.confident_frames);
        }
        println!();
    }
    if let Some(p) = &f.presence {
        println!("{label:<12} detection present (score >= {}): agreement {:.1}%, recall {:.1}% ({} of {} frames present)", p.threshold, p.agreement * 100.0, p.recall * 100.0, p.reference_present, f.frames);
    }
}

fn print_report(r: &QuantReport, evaluation: Option<&Evaluation>) {
    println!(
        "quantized    {} activations, {} weights; weights {:.2} MB -> {:.2} MB; {} nodes in float",
        r.quantized_tensors,
        r.quantized_weights,
        r.float_weight_bytes as f64 / 1e6,
        r.weight_bytes as f64 / 1e6,
        r.float_nodes.len()
    );
    print_fidelity("calibration", &r.fidelity);
    if let Some(e) = evaluation {
        print_fidelity("evaluation", &e.fidelity);
    }
    let mut worst: Vec<_> = r.layers.iter().collect();
    worst.sort_by(|a, b| a.sqnr_db.partial_cmp(&b.sqnr_db).unwrap_or(std::cmp::Ordering::Equal));
    println!("least faithful tensors (SQNR vs FP32):");
    for l in worst.iter().take(5) {
        println!("  {:>7.2} dB  {} ({})", l.sqnr_db, if l.node.is_empty() { &l.value } else { &l.node }, l.op);
    }
}


/// Fidelity of a variant (its int8 engine) against the FP32 model on frames, with a progress bar.
fn evaluate_variant(session: &Session, variant: Variant, frames: &[Vec<Vec<f32>>]) -> Result<Evaluation> {
    let q = session.variant(variant)?.expect("variant built");
    let cal = session.calibrator().expect("calibrated");
    let mut bar = Progress::new("evaluating", frames.len());
    let run = |x: &[&[f32]], o: &mut dyn FnMut(usize, &[f32])| q.run_observed(x, o);
    let (fidelity, _) = evaluate(cal.engine(), &run, &q.graph, frames, &mut |done| bar.update(done))?;
    bar.update(frames.len());
    Ok(Evaluation { frames: frames.len(), fidelity })
}
