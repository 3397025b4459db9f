//! [`Session`] methods for QAT, kept out of `session.rs`: a trainer made from the session's
//! calibration and PTQ variant, the batches it trains on, and its result installed as the QAT
//! variant.
//!
//! ```text
//! session.quantize_ptq()
//! let mut t = session.qat_trainer(QatConfig::default())?   // float graph = teacher, PTQ = start
//! let mut views = session.qat_views(.., t.views(), ..)?     // the run's random views
//! let (frames, labels) = session.qat_batch(.., &mut views, ..)?  // or any (augmented) frames
//! t.step_labelled(&frames, &labels) x N
//! session.finish_qat(&t)?                                   // best graph -> Variant::Qat + report
//! ```

use std::ops::Range;

use super::qat::{QatConfig, Trainer};
use crate::augment::{Augment, ViewPool};
use crate::rng::Rng;
use crate::session::{QuantReport, Session, Variant};
use crate::{Error, Result};

/// Frames of one QAT step, and the class of each (`None`: unlabelled).
pub type Batch = (Vec<Vec<Vec<f32>>>, Vec<Option<usize>>);

impl Session {
    /// A QAT trainer starting from the PTQ variant, distilling from the float model. With
    /// labelled images kept ([`Session::add_labelled_image`]) the model must take labels and
    /// the calibration must give them a preprocessing: refused here, with the reason, rather
    /// than at the first batch that happens to draw one.
    pub fn qat_trainer(&self, config: QatConfig) -> Result<Trainer> {
        let cal = self.calibrator().ok_or_else(|| Error::Invalid("calibration has not started: begin calibration first".into()))?;
        let ptq = self.variant(Variant::Ptq)?.expect("the PTQ variant is Some or an error");
        let trainer = Trainer::new(cal.graph(), &ptq.graph, config)?;
        if !self.labelled().is_empty() {
            trainer.label_classes()?;
            self.labelled_preprocess()?;
        }
        Ok(trainer)
    }

    /// The views a QAT run draws its frames from: `size` random views (`augment`) of the kept
    /// frames `train` and the labelled images together, each source in turn (`ViewPool`), as
    /// the CLI's `quantize --qat-labels` draws them, so labelled and unlabelled frames mix in
    /// proportion to their numbers. [`Trainer::views`] is the recipe's size.
    pub fn qat_views(&self, train: Range<usize>, size: usize, augment: &Augment) -> Result<ViewPool> {
        self.check_training_frames(&train)?;
        Ok(ViewPool::new(train.len() + self.labelled().len(), size, augment))
    }

    /// A batch of `size` frames from `pool` (made by [`qat_views`](Self::qat_views) with the
    /// same `train`): each the view of its kept frame or labelled image, preprocessed as the
    /// calibration frames were; labelled images carry their class. Every frame is distilled
    /// from the float model, and the labelled ones add the cross-entropy to their class
    /// ([`Trainer::step_labelled`]).
    pub fn qat_batch(&self, train: Range<usize>, pool: &mut ViewPool, size: usize, rng: &mut Rng) -> Result<Batch> {
        self.check_training_frames(&train)?;
        let labelled = self.labelled();
        let mut frames = Vec::with_capacity(size);
        let mut labels = Vec::with_capacity(size);
        for _ in 0..size {
            let (j, view) = pool.draw(rng).ok_or_else(|| Error::Invalid("the QAT view pool is empty".into()))?;
            if *j < train.len() {
                frames.push(self.view_of_kept(train.start + j, view)?);
                labels.push(None);
            } else {
                let i = j - train.len();
                frames.push(self.view_of_labelled(i, view)?);
                let class = labelled[i].class; // view_of_labelled checked that it exists
                labels.push(Some(class));
            }
        }
        Ok((frames, labels))
    }

    fn check_training_frames(&self, train: &Range<usize>) -> Result<()> {
        let kept = self.kept_frames().len();
        if train.is_empty() {
            return Err(Error::Invalid("QAT needs calibration frames: calibrate first".into()));
        }
        if train.end > kept {
            return Err(Error::Invalid(format!("QAT was asked to train on kept frames {}..{}, and {kept} are kept", train.start, train.end)));
        }
        Ok(())
    }

    /// Installs the trainer's best graph as the QAT variant, measured like PTQ (fidelity on
    /// the kept calibration frames, per-layer SQNR), and returns its report.
    pub fn finish_qat(&mut self, trainer: &Trainer) -> Result<&QuantReport> {
        let q = self.make_variant(trainer.best_graph()?)?;
        self.set_qat(q);
        Ok(&self.variant(Variant::Qat)?.expect("just set").report)
    }
}
