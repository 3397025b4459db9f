//! [`Session`] methods for QAT, kept out of `session.rs`: a trainer made from the session's
//! calibration and PTQ variant, and its result installed as the QAT variant.
//!
//! ```text
//! session.quantize_ptq()
//! let mut t = session.qat_trainer(QatConfig::default())?   // float graph = teacher, PTQ = start
//! t.step(batch) x N                                         // the caller supplies (augmented) frames
//! session.finish_qat(&t)?                                   // best graph -> Variant::Qat + report
//! ```

use super::qat::{QatConfig, Trainer};
use crate::session::{QuantReport, Session, Variant};
use crate::{Error, Result};

impl Session {
    /// A QAT trainer starting from the PTQ variant, distilling from the float model.
    pub fn qat_trainer(&self, config: QatConfig) -> Result<Trainer> {
        let cal = self.calibrator().ok_or_else(|| Error::Invalid("calibration has not started: begin calibration first".into()))?;
        let ptq = self.variant(Variant::Ptq)?.expect("the PTQ variant is Some or an error");
        Trainer::new(cal.graph(), &ptq.graph, config)
    }

    /// Installs the trainer's best graph as the QAT variant, measured like PTQ (fidelity on
    /// the kept calibration frames, per-layer SQNR), and returns its report.
    pub fn finish_qat(&mut self, trainer: &Trainer) -> Result<&QuantReport> {
        let q = self.make_variant(trainer.best_graph()?)?;
        self.set_qat(q);
        Ok(&self.variant(Variant::Qat)?.expect("just set").report)
    }
}
