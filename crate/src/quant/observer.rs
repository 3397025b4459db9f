//! Calibration observers: one per activation, fed one frame at a time in fixed memory, each
//! choosing a clip range for [`from_range`](super::params::from_range).
//!
//! # What an observer keeps
//! - the exact extremes of the finite values, and for [`CalibrationMethod::MovingAverageMinMax`]
//!   the moving averages of each frame's extremes (`avg += momentum · (frame - avg)`, started
//!   at the first frame's extremes);
//! - a histogram of the nonzero finite values with [`HISTOGRAM_BINS`] bins of equal width `w`
//!   whose edges are integer multiples of `w`: bin `i` covers
//!   `[(offset + i) · w, (offset + i + 1) · w)`. 0 is always an edge, so negative and positive
//!   values never share a bin and the histogram of `|x|` is exact (bin `k` of `|x|` is bin `k`
//!   plus bin `-k-1`). The range always contains 0, like every quantization range;
//! - the count of exact zeros, kept apart: zeros are exact at every range (the zero point is an
//!   integer), so they carry no information about where to clip, and in post-ReLU tensors they
//!   are often half the values. Percentiles count them as a point mass at 0; Entropy and MSE
//!   leave them out;
//! - the count of NaN and infinite values, which are otherwise ignored.
//!
//! The first nonzero frame sets `w = (hi - lo) / (HISTOGRAM_BINS - 2)` over its range (0
//! included). When later data falls outside the bins, the width grows by the smallest integer
//! factor `f` whose grid covers the old and new data, and old bin `j` (absolute index) merges
//! into new bin `floor(j / f)`. New edges are old edges, so merging is exact: the histogram
//! equals the one the final grid would have counted directly, totals are preserved, and (since
//! `f - 1` did not fit) the data still spans at least about half of the bins. Memory is
//! [`HISTOGRAM_BINS`] counters however many frames come; this is PyTorch's HistogramObserver
//! and TensorRT's calibrator idea, without their interpolation when the range changes.
//!
//! # Range selection ([`Observer::range`])
//! Every range contains 0 and lies within the observed extremes. With `symmetric`, the methods
//! work on `|x|` and return `(-t, t)`.
//! - **MinMax**: the observed extremes.
//! - **MovingAverageMinMax**: the averaged extremes, which forget rare outlier frames.
//! - **Percentile `p`**: the `(100 - p)`% and `p`% quantiles of the histogram's CDF (linear
//!   within a bin, so within one bin width of the exact sample quantiles); symmetric: the `p`%
//!   quantile of `|x|`.
//! - **Entropy**: TensorRT's KL-divergence calibration (Migacz, "8-bit Inference with
//!   TensorRT", GTC 2017) on the histogram of `|x|`. For each candidate threshold of `i` bins
//!   (`i` from the number of levels `n` to all of them), the reference `P` is the first `i` bins
//!   with every value beyond added to bin `i - 1` (clipping saturates there), and the candidate
//!   `Q` merges the first `i` bins into `n` groups (what quantization to `n` steps keeps) and
//!   spreads each group's count evenly over its bins where `P` is nonzero. The threshold with
//!   the least `KL(P ‖ Q)` wins (ties: the wider one). `Q` is mixed with `1e-4` of uniform mass
//!   over `P`'s support, so the divergence stays finite where `P` has values `Q` lacks (the
//!   outliers of a clipped, otherwise empty last group). Prefix sums make each candidate cost O(n) (within a group `Q` is constant).
//!   `n` is the number of steps between 0 and the threshold `t` on the final grid:
//!   `2^(b-1) - 1` when symmetric; for asymmetric ranges `(2^b - 1) · t / (min(max, t) +
//!   min(-min, t))`, which is `2^b - 1` for one-sided data (post-ReLU) and shrinks as the other
//!   side takes steps. Both sides are then clipped at `t`: asymmetric data use one threshold
//!   for `|x|` and keep their observed extremes below it.
//! - **MSE**: the range minimizing the expected squared quantization error under the usual
//!   model: values inside `[lo, hi]` get uniform rounding noise `step² / 12` with `step = (hi -
//!   lo) / (2^b - 1)` (symmetric: `t / (2^(b-1) - 1)`), values outside the clipping error
//!   `(x - hi)²` or `(x - lo)²`, computed from each bin's count, mean and variance assuming
//!   values spread evenly in a bin. Candidates are every bin edge of each side plus the exact
//!   extremes, searched exhaustively (at most about 1024 × 1024 pairs, each O(1) with suffix
//!   sums); ties keep the wider range.
//!
//! # Tests
//! Each method on uniform, Gaussian, Laplace, Laplace with gross outliers, post-ReLU,
//! constant, empty and non-finite data (ranges always finite, containing 0, within the
//! extremes); fixed memory across 10k frames; growth merging preserves totals and equals direct
//! counting on the final grid; percentiles within a bin width of sorted-sample quantiles;
//! Entropy and MSE clip a Laplace tail tighter than MinMax with a lower quantization error; the
//! MSE optimum of a Gaussian near the analytic one (ACIQ); the prefix-sum KL equal to the
//! bin-by-bin definition; the moving average converging. `tests/calibration.rs` compares the
//! methods on EfficientNet-Lite0 activations of real images.

use serde::{Deserialize, Serialize};

use super::params::assert_bits;

/// Bins of an observer's histogram: 16 KiB of counters per observed tensor.
pub const HISTOGRAM_BINS: usize = 2048;

/// Mass of the uniform distribution mixed into the Entropy method's candidate `Q`.
const KL_SMOOTHING: f64 = 1e-4;

/// How an observer chooses the clip range of a tensor.
///
/// Serialized with a `method` tag: `{"method": "percentile", "percentile": 99.99}`,
/// `{"method": "movingAverageMinMax", "momentum": 0.01}`, `{"method": "entropy"}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "camelCase")]
pub enum CalibrationMethod {
    /// The observed extremes.
    MinMax,
    /// Moving averages of each frame's extremes; `momentum` (in `[0, 1]`) is the weight of the
    /// new frame, as in PyTorch's `MovingAverageMinMaxObserver` (which uses 0.01).
    MovingAverageMinMax { momentum: f32 },
    /// The `percentile` and `100 - percentile` quantiles, `percentile` in `[50, 100]`.
    Percentile { percentile: f32 },
    /// TensorRT's KL-divergence threshold.
    Entropy,
    /// The range with the least expected squared quantization error.
    Mse,
}

impl Default for CalibrationMethod {
    /// MSE: measured best on real activations. On EfficientNet-Lite0 (61 tensors, calibrated
    /// on 10 of the shipped images, evaluated on the 9 others; `tests/calibration.rs`,
    /// `--ignored`), 8-bit asymmetric, mean squared error over all values / mean per-tensor
    /// SQNR / worst tensor SQNR: MSE 9.7e-4 / 42.3 dB / 32.9 dB, MinMax 1.03e-3 / 42.1 / 32.1,
    /// Percentile 99.99 1.24e-3 / 42.0 / 30.8, Entropy 1.52e-3 / 40.6 / 23.5 (KL clips some
    /// tensors too hard: 0.3% of their values), Percentile 99.9 5.6e-3 / 34.9 / 23.0. MSE also
    /// leads at 8 bits symmetric and at 6 bits, where clipping matters more (held out: 8.8e-3
    /// against MinMax's 1.6e-2).
    fn default() -> Self {
        CalibrationMethod::Mse
    }
}

/// A histogram for display: `counts[i]` values in `[start + i · bin_width, start + (i + 1) ·
/// bin_width)`, exact zeros included in the bin whose left edge is 0 (or whose right edge is 0
/// when the data has no positive values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// The left edge of the first bin.
    pub start: f32,
    /// 0 when every value seen is 0 (a single bin at 0) or none was seen (no bins).
    pub bin_width: f32,
    pub counts: Vec<u64>,
    /// The observed extremes (0 when nothing was seen).
    pub min: f32,
    pub max: f32,
}

impl Histogram {
    /// The `counts.len() + 1` bin edges.
    pub fn edges(&self) -> Vec<f32> {
        (0..=self.counts.len())
            .map(|i| (self.start as f64 + i as f64 * self.bin_width as f64) as f32)
            .collect()
    }

    /// The number of values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// At most `n` bins (at least 1), merging the same number `ceil(len / n)` of neighbours
    /// into each, so edges stay edges of this histogram (the last bin may reach past the data).
    pub fn downsample(&self, n: usize) -> Histogram {
        let factor = self.counts.len().div_ceil(n.max(1)).max(1);
        Histogram {
            start: self.start,
            bin_width: (self.bin_width as f64 * factor as f64) as f32,
            counts: self.counts.chunks(factor).map(|c| c.iter().sum()).collect(),
            min: self.min,
            max: self.max,
        }
    }
}

/// The histogram of nonzero finite values on a grid whose edges are multiples of `width`.
#[derive(Clone, Debug)]
struct Bins {
    /// 0 until the first nonzero finite value.
    width: f64,
    /// The absolute index of bin 0: bin `i` covers `[(offset + i) · width, (offset + i + 1) ·
    /// width)`. The grid contains 0, so `offset` is in `[-HISTOGRAM_BINS, 0]`.
    offset: i64,
    counts: Vec<u64>,
}

impl Bins {
    fn new() -> Bins {
        Bins {
            width: 0.0,
            offset: 0,
            counts: vec![0; HISTOGRAM_BINS],
        }
    }

    /// Whether the grid of `width` starting at absolute index `first` covers `[lo, hi]`.
    fn grid_covers(width: f64, first: f64, lo: f64, hi: f64) -> bool {
        let n = HISTOGRAM_BINS as f64;
        (lo / width).floor() >= first && (hi / width).ceil() <= first + n
    }

    /// Makes the grid cover `[lo, hi]` (`lo <= 0 <= hi`, `lo < hi`, finite), which must also
    /// contain every value counted so far; see the module docs.
    fn cover(&mut self, lo: f64, hi: f64) {
        let n = HISTOGRAM_BINS as f64;
        if self.width == 0.0 {
            let mut width = (hi - lo) / (n - 2.0);
            // floor/ceil add at most two bins, so this fits; the loop guards rounding.
            while !Self::grid_covers(width, (lo / width).floor(), lo, hi) {
                width *= 1.0 + 1e-9;
            }
            self.width = width;
            self.offset = (lo / width).floor() as i64;
            return;
        }
        if Self::grid_covers(self.width, self.offset as f64, lo, hi) {
            return;
        }
        // In units of the old width (integers as f64, possibly huge).
        let (a, b) = ((lo / self.width).floor(), (hi / self.width).ceil());
        let fits = |f: f64| (b / f).ceil() - (a / f).floor() <= n;
        // span / f bins plus at most two for the ends: the smallest integer factor is at most
        // a couple above span / n, and span / (n - 2) always fits.
        let mut f = ((b - a) / n).floor().max(1.0);
        let mut tries = 0;
        while !fits(f) && tries < 8 {
            f += 1.0;
            tries += 1;
        }
        if !fits(f) {
            f = ((b - a) / (n - 2.0)).ceil();
            while !fits(f) {
                f *= 2.0;
            }
        }
        let offset = (a / f).floor();
        let mut counts = vec![0u64; HISTOGRAM_BINS];
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                let j = ((self.offset + i as i64) as f64 / f).floor() - offset;
                counts[j.clamp(0.0, n - 1.0) as usize] += c;
            }
        }
        self.counts = counts;
        self.offset = offset as i64;
        self.width *= f;
    }

    /// Counts the nonzero finite values of `data`, which the grid covers.
    fn add(&mut self, data: &[f32]) {
        let inv = 1.0 / self.width;
        let offset = self.offset as f64;
        let last = (HISTOGRAM_BINS - 1) as f64;
        for &x in data {
            if x == 0.0 || !x.is_finite() {
                continue;
            }
            let mut a = (x as f64 * inv).floor();
            if x < 0.0 {
                // A tiny negative value over a huge width rounds to -0.0: keep it negative.
                a = a.min(-1.0);
            }
            self.counts[(a - offset).clamp(0.0, last) as usize] += 1;
        }
    }

    /// The magnitude histograms of each side: `pos[k]` and `neg[k]` count the values with
    /// `|x|` in `[k · width, (k + 1) · width)`, trimmed after the last nonzero bin.
    fn sides(&self) -> (Vec<u64>, Vec<u64>) {
        let mut pos = Vec::new();
        let mut neg = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            let j = self.offset + i as i64;
            let (side, k) = if j >= 0 {
                (&mut pos, j as usize)
            } else {
                (&mut neg, (-j - 1) as usize)
            };
            if c > 0 {
                if side.len() <= k {
                    side.resize(k + 1, 0);
                }
                side[k] += c;
            }
        }
        (pos, neg)
    }
}

/// Watches one tensor over frames and chooses its clip range; see the module docs.
#[derive(Clone, Debug)]
pub struct Observer {
    method: CalibrationMethod,
    frames: u64,
    /// Extremes of the finite values, `(inf, -inf)` before any.
    min: f32,
    max: f32,
    /// Moving averages of each frame's extremes (only MovingAverageMinMax moves them after the
    /// first frame).
    average: Option<(f32, f32)>,
    bins: Bins,
    zeros: u64,
    non_finite: u64,
}

impl Observer {
    pub fn new(method: CalibrationMethod) -> Observer {
        Observer {
            method,
            frames: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            average: None,
            bins: Bins::new(),
            zeros: 0,
            non_finite: 0,
        }
    }

    pub fn method(&self) -> CalibrationMethod {
        self.method
    }

    /// Adds one frame of the tensor (any layout: only values matter). NaN and infinities are
    /// counted apart and otherwise ignored; an empty frame still counts as a frame.
    pub fn observe(&mut self, data: &[f32]) {
        self.frames += 1;
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut nonzero = false;
        for &x in data {
            if !x.is_finite() {
                self.non_finite += 1;
            } else {
                lo = lo.min(x);
                hi = hi.max(x);
                if x == 0.0 {
                    self.zeros += 1;
                } else {
                    nonzero = true;
                }
            }
        }
        if lo > hi {
            return;
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.average = Some(match (self.average, self.method) {
            (Some((a, b)), CalibrationMethod::MovingAverageMinMax { momentum }) => {
                // NaN momentum acts as 1: the latest frame.
                let m = if momentum.is_nan() {
                    1.0
                } else {
                    momentum.clamp(0.0, 1.0)
                };
                (a + m * (lo - a), b + m * (hi - b))
            }
            (Some(avg), _) => avg,
            (None, _) => (lo, hi),
        });
        if nonzero {
            self.bins
                .cover(self.min.min(0.0) as f64, self.max.max(0.0) as f64);
            self.bins.add(data);
        }
    }

    /// The number of frames observed.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The number of finite values observed.
    pub fn values(&self) -> u64 {
        self.zeros + self.bins.counts.iter().sum::<u64>()
    }

    /// The number of NaN and infinite values ignored.
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// The observed extremes of the finite values; `(0, 0)` before any.
    pub fn min_max(&self) -> (f32, f32) {
        if self.min > self.max {
            (0.0, 0.0)
        } else {
            (self.min, self.max)
        }
    }

    /// The histogram over the occupied bins (at most [`HISTOGRAM_BINS`]), exact zeros
    /// included; see [`Histogram`].
    pub fn histogram(&self) -> Histogram {
        let (min, max) = self.min_max();
        let empty = Histogram {
            start: 0.0,
            bin_width: 0.0,
            counts: Vec::new(),
            min,
            max,
        };
        if self.bins.width == 0.0 {
            return if self.zeros > 0 {
                Histogram {
                    counts: vec![self.zeros],
                    ..empty
                }
            } else {
                empty
            };
        }
        let mut counts = self.bins.counts.clone();
        // Zeros go to the bin starting at 0, or ending at 0 if the grid stops there.
        let zero_bin = if self.bins.offset + (HISTOGRAM_BINS as i64) > 0 {
            -self.bins.offset
        } else {
            -self.bins.offset - 1
        };
        counts[zero_bin as usize] += self.zeros;
        let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        Histogram {
            start: ((self.bins.offset + first as i64) as f64 * self.bins.width) as f32,
            bin_width: self.bins.width as f32,
            counts: counts[first..=last].to_vec(),
            min,
            max,
        }
    }

    /// The clip range the method chooses for a `bits`-wide grid: `lo <= 0 <= hi`, within the
    /// observed extremes (extended to 0), `(-t, t)` when `symmetric`, `(0, 0)` before any
    /// value. Feed it to [`from_range`](super::params::from_range).
    ///
    /// Panics if `bits` is outside `2..=8`.
    pub fn range(&self, bits: u32, symmetric: bool) -> (f32, f32) {
        assert_bits(bits);
        let (min, max) = self.min_max();
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let (lo, hi) = match self.method {
            CalibrationMethod::MinMax => (lo, hi),
            CalibrationMethod::MovingAverageMinMax { .. } => self.average.unwrap_or((0.0, 0.0)),
            CalibrationMethod::Percentile { percentile } => {
                self.percentile_range(percentile, symmetric)
            }
            CalibrationMethod::Entropy => self.entropy_range(bits, symmetric),
            CalibrationMethod::Mse => self.mse_range(bits, symmetric),
        };
        let (lo, hi) = (lo.clamp(min.min(0.0), 0.0), hi.clamp(0.0, max.max(0.0)));
        if symmetric {
            let t = (-lo).max(hi);
            (-t, t)
        } else {
            (lo, hi)
        }
    }

    /// The largest magnitude of each side, `(negative, positive)`; 0 for an empty side.
    fn extremes(&self) -> (f64, f64) {
        let (min, max) = self.min_max();
        ((-min).max(0.0) as f64, max.max(0.0) as f64)
    }

    fn percentile_range(&self, percentile: f32, symmetric: bool) -> (f32, f32) {
        // NaN reads as 100 (MinMax).
        let p = if percentile.is_nan() {
            100.0
        } else {
            percentile.clamp(50.0, 100.0)
        };
        let p = p as f64 / 100.0;
        let total = self.values() as f64;
        if self.bins.width == 0.0 || total == 0.0 {
            return (0.0, 0.0);
        }
        let w = self.bins.width;
        let (pos, neg) = self.bins.sides();
        if symmetric {
            let folded = add_sides(&pos, &neg);
            let t = quantile(&[], self.zeros, &folded, w, p * total);
            return (-t as f32, t as f32);
        }
        let lo = quantile(&neg, self.zeros, &pos, w, (1.0 - p) * total);
        let hi = quantile(&neg, self.zeros, &pos, w, p * total);
        (lo as f32, hi as f32)
    }

    fn entropy_range(&self, bits: u32, symmetric: bool) -> (f32, f32) {
        if self.bins.width == 0.0 {
            return (0.0, 0.0);
        }
        let (pos, neg) = self.bins.sides();
        let folded = add_sides(&pos, &neg);
        let (neg_max, pos_max) = self.extremes();
        let steps = |t: f64| -> usize {
            if symmetric {
                (1usize << (bits - 1)) - 1
            } else {
                let width = pos_max.min(t) + neg_max.min(t);
                let all = ((1usize << bits) - 1) as f64;
                ((all * t / width).round() as usize).max(1)
            }
        };
        let t = kl_threshold(&folded, self.bins.width, steps) as f32;
        (-t, t)
    }

    fn mse_range(&self, bits: u32, symmetric: bool) -> (f32, f32) {
        if self.bins.width == 0.0 {
            return (0.0, 0.0);
        }
        let w = self.bins.width;
        let (pos, neg) = self.bins.sides();
        let (neg_max, pos_max) = self.extremes();
        if symmetric {
            let folded = Tail::new(&add_sides(&pos, &neg), w, neg_max.max(pos_max));
            let steps = ((1u64 << (bits - 1)) - 1) as f64;
            let inside = folded.total();
            let mut best = (f64::INFINITY, 0.0);
            for k in (0..folded.candidates()).rev() {
                let (t, clip, out) = folded.clip(k);
                let step = t / steps;
                let err = (inside - out) * step * step / 12.0 + clip;
                if err < best.0 {
                    best = (err, t);
                }
            }
            return (-best.1 as f32, best.1 as f32);
        }
        let pos = Tail::new(&pos, w, pos_max);
        let neg = Tail::new(&neg, w, neg_max);
        let steps = ((1u64 << bits) - 1) as f64;
        let total = pos.total() + neg.total();
        let neg_clips: Vec<(f64, f64, f64)> =
            (0..neg.candidates()).rev().map(|k| neg.clip(k)).collect();
        // From the widest pair down, replacing only on a strict improvement.
        let mut best = (f64::INFINITY, 0.0, 0.0);
        for k in (0..pos.candidates()).rev() {
            let (hi, clip_hi, out_hi) = pos.clip(k);
            for &(lo, clip_lo, out_lo) in &neg_clips {
                let step = (hi + lo) / steps;
                let err = (total - out_hi - out_lo) * step * step / 12.0 + clip_hi + clip_lo;
                if err < best.0 {
                    best = (err, -lo, hi);
                }
            }
        }
        (best.1 as f32, best.2 as f32)
    }
}

/// `a + b` elementwise, as long as the longer.
fn add_sides(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; a.len().max(b.len())];
    for (i, &c) in a.iter().enumerate() {
        out[i] += c;
    }
    for (i, &c) in b.iter().enumerate() {
        out[i] += c;
    }
    out
}

/// The value below which `target` of the values lie, for values ordered as: `neg` (magnitude
/// bins of width `w`, so from the largest magnitude down), `zeros` at 0, then `pos`. Linear
/// within a bin.
fn quantile(neg: &[u64], zeros: u64, pos: &[u64], w: f64, target: f64) -> f64 {
    let mut below = 0.0;
    for (k, &c) in neg.iter().enumerate().rev() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            // Bin [-(k + 1) w, -k w), filled from its left edge.
            return -((k + 1) as f64) * w + w * ((target - below) / c).clamp(0.0, 1.0);
        }
        below += c;
    }
    if zeros > 0 && below + zeros as f64 >= target {
        return 0.0;
    }
    below += zeros as f64;
    for (k, &c) in pos.iter().enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            return k as f64 * w + w * ((target - below) / c).clamp(0.0, 1.0);
        }
        below += c;
    }
    pos.len() as f64 * w
}

/// TensorRT's KL threshold over the magnitude histogram `bins` of width `w`, with
/// `steps(t)` quantization steps between 0 and a threshold `t`; see the module docs.
fn kl_threshold(bins: &[u64], w: f64, steps: impl Fn(f64) -> usize) -> f64 {
    let prefix = KlPrefix::new(bins);
    if prefix.total() == 0.0 {
        return 0.0;
    }
    let m = bins.len();
    let mut best = (f64::INFINITY, m);
    // From all bins (no clipping) down, replacing only on a strict improvement.
    for i in (1..=m).rev() {
        let n = steps(i as f64 * w);
        if i < n {
            // The grid is finer than the histogram: no candidate below can be told apart.
            break;
        }
        let kl = prefix.divergence(i, n);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f64 * w
}

/// Prefix sums that make each KL candidate cost O(steps) instead of O(bins): within a group
/// `Q` is one constant on the bins where `P` is nonzero, so `KL(P ‖ Q) = Σ P ln P - Σ_groups
/// P(group) ln Q(group)`, and `Σ P ln P` is a prefix sum of `c ln c` up to the last bin,
/// which also holds the outliers.
struct KlPrefix {
    /// Over bins `..k`: count, nonzero bins, `Σ c ln c`.
    count: Vec<f64>,
    nonzero: Vec<usize>,
    c_ln_c: Vec<f64>,
}

impl KlPrefix {
    fn new(bins: &[u64]) -> KlPrefix {
        let mut p = KlPrefix {
            count: vec![0.0; bins.len() + 1],
            nonzero: vec![0; bins.len() + 1],
            c_ln_c: vec![0.0; bins.len() + 1],
        };
        for (k, &c) in bins.iter().enumerate() {
            let c = c as f64;
            p.count[k + 1] = p.count[k] + c;
            p.nonzero[k + 1] = p.nonzero[k] + (c > 0.0) as usize;
            p.c_ln_c[k + 1] = p.c_ln_c[k] + if c > 0.0 { c * c.ln() } else { 0.0 };
        }
        p
    }

    fn total(&self) -> f64 {
        *self.count.last().expect("one more prefix than bins")
    }

    /// `KL(P ‖ Q)` for a threshold after `i` bins and `n <= i` steps (see the module docs).
    fn divergence(&self, i: usize, n: usize) -> f64 {
        let total = self.total();
        let inside = self.count[i];
        let outliers = total - inside;
        let last = self.count[i] - self.count[i - 1];
        // P: the first i bins, with the outliers added to the last one.
        let p_last = last + outliers;
        let last_fix = (p_last > 0.0) as usize - (last > 0.0) as usize;
        let support = (self.nonzero[i] + last_fix) as f64;
        let sum_c_ln_c = self.c_ln_c[i - 1]
            + if p_last > 0.0 {
                p_last * p_last.ln()
            } else {
                0.0
            };
        // Σ P ln P with P = c / total.
        let mut kl = sum_c_ln_c / total - total.ln();
        for g in 0..n {
            let (start, end) = (g * i / n, (g + 1) * i / n);
            let mass = self.count[end] - self.count[start];
            let (p_mass, nonzero) = if end == i {
                (
                    mass + outliers,
                    self.nonzero[end] - self.nonzero[start] + last_fix,
                )
            } else {
                (mass, self.nonzero[end] - self.nonzero[start])
            };
            if p_mass == 0.0 {
                continue;
            }
            let q = if inside > 0.0 {
                mass / nonzero as f64 / inside
            } else {
                0.0
            };
            let q = (1.0 - KL_SMOOTHING) * q + KL_SMOOTHING / support;
            kl -= p_mass / total * q.ln();
        }
        kl
    }
}

/// Suffix sums over one side's magnitude bins for the MSE search: the clipping error and the
/// number of values beyond each candidate threshold.
struct Tail {
    w: f64,
    /// The exact largest magnitude of the side.
    extreme: f64,
    /// Over bins `k..`: count, `Σ c · m`, `Σ c · (m² + w² / 12)` with `m` the bin's centre
    /// (the second moment of values spread evenly in the bin).
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
}

impl Tail {
    fn new(bins: &[u64], w: f64, extreme: f64) -> Tail {
        let m = bins.len();
        let (mut s0, mut s1, mut s2) = (vec![0.0; m + 1], vec![0.0; m + 1], vec![0.0; m + 1]);
        for k in (0..m).rev() {
            let c = bins[k] as f64;
            let centre = (k as f64 + 0.5) * w;
            s0[k] = s0[k + 1] + c;
            s1[k] = s1[k + 1] + c * centre;
            s2[k] = s2[k + 1] + c * (centre * centre + w * w / 12.0);
        }
        Tail {
            w,
            extreme,
            s0,
            s1,
            s2,
        }
    }

    fn total(&self) -> f64 {
        self.s0[0]
    }

    /// Thresholds `k · w` for `k` in `0..candidates()`, the last one being the extreme.
    fn candidates(&self) -> usize {
        self.s0.len()
    }

    /// Threshold `k`: `(t, clipping error, values beyond)`, where the threshold is the edge
    /// `k · w` capped at the extreme (the last candidate clips nothing).
    fn clip(&self, k: usize) -> (f64, f64, f64) {
        let t = (k as f64 * self.w).min(self.extreme);
        if k + 1 == self.s0.len() {
            return (self.extreme, 0.0, 0.0);
        }
        let clip = (self.s2[k] - 2.0 * t * self.s1[k] + t * t * self.s0[k]).max(0.0);
        (t, clip, self.s0[k])
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::params::from_range;
    use crate::test_rng::Rng;
    use super::*;

    const ALL: [CalibrationMethod; 5] = [
        CalibrationMethod::MinMax,
        CalibrationMethod::MovingAverageMinMax { momentum: 0.1 },
        CalibrationMethod::Percentile { percentile: 99.99 },
        CalibrationMethod::Entropy,
        CalibrationMethod::Mse,
    ];

    fn observe_frames(method: CalibrationMethod, frames: &[Vec<f32>]) -> Observer {
        let mut o = Observer::new(method);
        for f in frames {
            o.observe(f);
        }
        o
    }

    fn frames_of(
        rng: &mut Rng,
        frames: usize,
        len: usize,
        mut f: impl FnMut(&mut Rng) -> f64,
    ) -> Vec<Vec<f32>> {
        (0..frames)
            .map(|_| (0..len).map(|_| f(rng) as f32).collect())
            .collect()
    }

    /// Mean squared error of fake-quantizing `data` with the range an observer chose.
    fn quant_mse(range: (f32, f32), bits: u32, symmetric: bool, data: &[Vec<f32>]) -> f64 {
        let p = from_range(range.0, range.1, bits, symmetric);
        let (mut sum, mut n) = (0.0, 0usize);
        for x in data.iter().flatten() {
            sum += ((p.fake_quantize(*x) - x) as f64).powi(2);
            n += 1;
        }
        sum / n as f64
    }

    /// The exact sample quantile (nearest rank) of sorted values.
    fn sorted_quantile(sorted: &[f32], q: f64) -> f32 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// Every method's range is finite, contains 0 and lies within the observed extremes, and
    /// symmetric ranges are symmetric.
    fn check_ranges(o: &Observer) {
        let (min, max) = o.min_max();
        for bits in [2, 4, 8] {
            for symmetric in [false, true] {
                let (lo, hi) = o.range(bits, symmetric);
                assert!(
                    lo.is_finite() && hi.is_finite(),
                    "{:?}: ({lo}, {hi})",
                    o.method()
                );
                assert!(lo <= 0.0 && hi >= 0.0, "{:?}: ({lo}, {hi})", o.method());
                let limit = (-min).max(max).max(0.0);
                if symmetric {
                    assert_eq!(lo, -hi);
                    assert!(hi <= limit);
                } else {
                    assert!(lo >= min.min(0.0) && hi <= max.max(0.0), "{:?}", o.method());
                }
                from_range(lo, hi, bits, symmetric).validate().unwrap();
            }
        }
    }

    #[test]
    fn uniform_data_keeps_nearly_the_full_range() {
        let mut rng = Rng(0x0f1);
        let frames = frames_of(&mut rng, 20, 5000, |r| r.uniform(-1.0, 3.0));
        for method in ALL {
            let o = observe_frames(method, &frames);
            check_ranges(&o);
            let (lo, hi) = o.range(8, false);
            let (min, max) = o.min_max();
            // No tail to clip: every method stays within 2% of the extremes (the moving
            // average of per-frame extremes sits a hair inside them).
            assert!(
                lo <= 0.98 * min && hi >= 0.98 * max,
                "{method:?}: ({lo}, {hi}) vs ({min}, {max})"
            );
        }
    }

    #[test]
    fn mse_matches_the_analytic_gaussian_clip() {
        // The MSE-optimal symmetric clip of a unit Gaussian on a grid of 2^M levels is about
        // 2.55 sigma for M = 4 and 3.92 sigma for M = 8 (Banner et al., ACIQ, 2019); our
        // symmetric grids have one level fewer.
        let mut rng = Rng(0x6a55);
        let frames = frames_of(&mut rng, 40, 25_000, |r| r.gaussian());
        let o = observe_frames(CalibrationMethod::Mse, &frames);
        let t4 = o.range(4, true).1;
        let t8 = o.range(8, true).1;
        assert!((2.3..=2.9).contains(&t4), "4 bits: {t4}");
        assert!((3.5..=4.4).contains(&t8), "8 bits: {t8}");
        // And it is the best of the methods on this data.
        let best = quant_mse(o.range(4, true), 4, true, &frames);
        for method in ALL {
            let other = observe_frames(method, &frames);
            let e = quant_mse(other.range(4, true), 4, true, &frames);
            assert!(best <= e * 1.02, "{method:?}: {e} < mse's {best}");
        }
    }

    #[test]
    fn entropy_and_mse_beat_minmax_on_laplace() {
        // Laplace(1) on 200k values reaches about ±12; the MSE-optimal symmetric 8-bit clip is
        // about 9.9 (ACIQ) and 6 bits want less.
        let mut rng = Rng(0x1a91);
        let frames = frames_of(&mut rng, 20, 10_000, |r| r.laplace());
        let minmax = observe_frames(CalibrationMethod::MinMax, &frames);
        let (mlo, mhi) = minmax.range(8, false);
        for bits in [6, 8] {
            for symmetric in [false, true] {
                let base = quant_mse(minmax.range(bits, symmetric), bits, symmetric, &frames);
                for method in [CalibrationMethod::Entropy, CalibrationMethod::Mse] {
                    let o = observe_frames(method, &frames);
                    check_ranges(&o);
                    let (lo, hi) = o.range(bits, symmetric);
                    assert!(
                        hi < 0.95 * mhi && lo > 0.95 * mlo,
                        "{method:?}: ({lo}, {hi})"
                    );
                    // |x| > 6 has probability e^-6 = 0.25%: the bulk stays inside.
                    assert!(hi > 6.0 && lo < -6.0, "{method:?}: ({lo}, {hi})");
                    let e = quant_mse((lo, hi), bits, symmetric, &frames);
                    let bound = if bits == 8 { 0.9 } else { 0.6 };
                    assert!(
                        e < bound * base,
                        "{method:?} {bits} bits symmetric={symmetric}: {e} vs minmax {base}"
                    );
                }
            }
        }
    }

    #[test]
    fn outliers_are_clipped_by_entropy_and_percentile() {
        let mut rng = Rng(0x0e71);
        let mut frames = frames_of(&mut rng, 20, 10_000, |r| r.laplace());
        // Two gross outliers, as single frames of real activations have.
        frames[3][17] = 60.0;
        frames[11][5] = -45.0;
        let minmax = observe_frames(CalibrationMethod::MinMax, &frames);
        assert_eq!(minmax.range(8, false), (-45.0, 60.0));
        for method in [
            CalibrationMethod::Entropy,
            CalibrationMethod::Percentile { percentile: 99.99 },
        ] {
            let o = observe_frames(method, &frames);
            check_ranges(&o);
            for symmetric in [false, true] {
                let (lo, hi) = o.range(8, symmetric);
                assert!(hi < 15.0 && lo > -15.0, "{method:?}: ({lo}, {hi})");
                assert!(hi > 6.0 && lo < -6.0, "{method:?}: ({lo}, {hi})");
            }
        }
        // Squared error weighs the two outliers (their clipping error alone is 0.018 per value
        // at ±11): MSE keeps much of them, but clips and still has the least error of all.
        let mse = observe_frames(CalibrationMethod::Mse, &frames);
        for symmetric in [false, true] {
            let (lo, hi) = mse.range(8, symmetric);
            assert!(hi < 60.0 && lo > -60.0, "({lo}, {hi})");
            let best = quant_mse((lo, hi), 8, symmetric, &frames);
            for method in ALL {
                let o = observe_frames(method, &frames);
                let e = quant_mse(o.range(8, symmetric), 8, symmetric, &frames);
                assert!(best <= e * 1.02, "{method:?}: {e} below mse's {best}");
            }
        }
    }

    /// `KL(P ‖ Q)` computed bin by bin, as the module docs describe it.
    fn kl_reference(bins: &[u64], i: usize, n: usize) -> f64 {
        let total: f64 = bins.iter().map(|&c| c as f64).sum();
        let outliers: f64 = bins[i..].iter().map(|&c| c as f64).sum();
        let mut p: Vec<f64> = bins[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += outliers;
        let inside = total - outliers;
        let support = p.iter().filter(|&&x| x > 0.0).count() as f64;
        let mut q = vec![0.0; i];
        for g in 0..n {
            let (start, end) = (g * i / n, (g + 1) * i / n);
            let mass: f64 = bins[start..end].iter().map(|&c| c as f64).sum();
            let nonzero = p[start..end].iter().filter(|&&x| x > 0.0).count() as f64;
            for k in start..end {
                if p[k] > 0.0 && inside > 0.0 {
                    q[k] = mass / nonzero / inside;
                }
            }
        }
        (0..i)
            .filter(|&k| p[k] > 0.0)
            .map(|k| {
                let (pk, qk) = (
                    p[k] / total,
                    (1.0 - KL_SMOOTHING) * q[k] + KL_SMOOTHING / support,
                );
                pk * (pk / qk).ln()
            })
            .sum()
    }

    #[test]
    fn kl_prefix_sums_match_the_direct_divergence() {
        let mut rng = Rng(0x7e1);
        for case in 0..300 {
            let m = rng.int(8, 600) as usize;
            // Sparse, spiky histograms with empty stretches and a tail.
            let bins: Vec<u64> = (0..m)
                .map(|k| match rng.int(0, 3) {
                    0 => 0,
                    1 => rng.int(0, 3) as u64,
                    _ => (rng.int(0, 1000) as f64 * (-(k as f64) / m as f64 * 4.0).exp()) as u64,
                })
                .collect();
            let prefix = KlPrefix::new(&bins);
            if prefix.total() == 0.0 {
                continue;
            }
            let i = rng.int(1, m as i64) as usize;
            let n = rng.int(1, i as i64) as usize;
            let (got, want) = (prefix.divergence(i, n), kl_reference(&bins, i, n));
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "case {case}: m={m} i={i} n={n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn post_relu_data_gives_one_sided_ranges() {
        let mut rng = Rng(0x4e1);
        // Half exact zeros, half |Gaussian| times 2: a ReLU output.
        let frames = frames_of(&mut rng, 10, 10_000, |r| (2.0 * r.gaussian()).max(0.0));
        for method in ALL {
            let o = observe_frames(method, &frames);
            check_ranges(&o);
            let (lo, hi) = o.range(8, false);
            assert_eq!(lo, 0.0, "{method:?}");
            assert!(hi > 4.0 && hi <= o.min_max().1, "{method:?}: {hi}");
        }
        // The zeros are exact in the histogram's first bin.
        let h = observe_frames(CalibrationMethod::MinMax, &frames).histogram();
        assert_eq!(h.start, 0.0);
        assert!(h.counts[0] >= 45_000, "{}", h.counts[0]);
    }

    #[test]
    fn constant_tensors() {
        for value in [3.0f32, -2.0, 1e-20, 0.0] {
            for method in ALL {
                let o = observe_frames(method, &[vec![value; 1000], vec![value; 10]]);
                check_ranges(&o);
                assert_eq!(o.min_max(), (value, value));
                assert_eq!(o.values(), 1010);
                for symmetric in [false, true] {
                    let (lo, hi) = o.range(8, symmetric);
                    // The constant stays within the range, up to a bin width (1/2046 of it) for
                    // the histogram methods: MSE's uniform-noise model cannot tell that a
                    // constant at the end of the grid is exact, and percentiles interpolate.
                    let bin = value.abs() / 2000.0;
                    assert!(
                        lo <= value.min(0.0) + bin && hi >= value.max(0.0) - bin,
                        "{method:?} {value}: ({lo}, {hi})"
                    );
                    let p = from_range(lo, hi, 8, symmetric);
                    assert!((p.fake_quantize(value) - value).abs() <= p.scale * 0.5001);
                }
                let h = o.histogram();
                assert_eq!(h.total(), 1010);
            }
        }
    }

    #[test]
    fn empty_and_non_finite_frames() {
        for method in ALL {
            let mut o = Observer::new(method);
            assert_eq!(o.range(8, false), (0.0, 0.0));
            o.observe(&[]);
            o.observe(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            assert_eq!(o.frames(), 2);
            assert_eq!((o.values(), o.non_finite()), (0, 3));
            assert_eq!(o.min_max(), (0.0, 0.0));
            assert_eq!(o.range(8, false), (0.0, 0.0));
            assert!(o.histogram().counts.is_empty());
            from_range(0.0, 0.0, 8, false).validate().unwrap();
            // Non-finite values never reach the ranges.
            o.observe(&[1.0, f32::NAN, -0.5, f32::INFINITY, 0.25]);
            assert_eq!((o.values(), o.non_finite()), (3, 5));
            assert_eq!(o.min_max(), (-0.5, 1.0));
            check_ranges(&o);
            assert_eq!(o.histogram().total(), 3);
        }
    }

    #[test]
    fn memory_is_fixed_across_10k_frames() {
        let mut rng = Rng(0x10_000);
        let mut o = Observer::new(CalibrationMethod::Mse);
        let mut total = 0;
        for frame in 0..10_000 {
            // Slowly widening, shifting data: the range grows many times.
            let scale = 1.0 + frame as f64 * 0.01;
            let data: Vec<f32> = (0..64)
                .map(|_| (rng.gaussian() * scale + 0.001 * frame as f64) as f32)
                .collect();
            o.observe(&data);
            total += 64;
            assert_eq!(o.bins.counts.len(), HISTOGRAM_BINS);
            assert!(o.histogram().counts.len() <= HISTOGRAM_BINS);
        }
        assert_eq!(o.frames(), 10_000);
        assert_eq!(o.values(), total);
        assert_eq!(o.histogram().total(), total);
        check_ranges(&o);
    }

    #[test]
    fn growth_merges_exactly() {
        let mut rng = Rng(0x3e6);
        for case in 0..50 {
            let mut o = Observer::new(CalibrationMethod::MinMax);
            let mut all = Vec::new();
            for frame in 0..6 {
                // Ranges growing by odd factors on either side, sometimes one-sided.
                let spread = 10f64.powf(rng.uniform(-2.0, 2.0)) * (1 + frame) as f64;
                let shift = if case % 3 == 0 {
                    spread
                } else {
                    rng.uniform(-1.0, 1.0) * spread
                };
                let data: Vec<f32> = (0..500)
                    .map(|_| (shift + spread * rng.uniform(-1.0, 1.0)) as f32)
                    .collect();
                o.observe(&data);
                all.extend(data);
            }
            let h = o.histogram();
            assert_eq!(h.total(), all.len() as u64, "case {case}");
            // Merged bins equal direct counting on the final grid.
            let (w, off) = (o.bins.width, o.bins.offset);
            let mut direct = vec![0u64; HISTOGRAM_BINS];
            for &x in &all {
                let a = (x as f64 / w).floor().max(off as f64) as i64;
                direct[(a - off).min(HISTOGRAM_BINS as i64 - 1) as usize] += 1;
            }
            assert_eq!(direct, o.bins.counts, "case {case}");
            // Growth by the smallest factor keeps at least about half the bins in use.
            let (min, max) = o.min_max();
            let used = (max.max(0.0) - min.min(0.0)) as f64 / w;
            assert!(
                used >= (HISTOGRAM_BINS / 2 - 4) as f64,
                "case {case}: {used} bins"
            );
        }
    }

    #[test]
    fn percentiles_are_within_a_bin_of_the_sample() {
        let mut rng = Rng(0x9e7);
        let mut frames = frames_of(&mut rng, 8, 20_000, |r| r.laplace() * 0.5 + 0.3);
        // Zeros and a skewed tail, as in real activations.
        for f in frames.iter_mut() {
            for x in f.iter_mut().step_by(7) {
                *x = 0.0;
            }
            f[0] = 30.0;
        }
        let mut sorted: Vec<f32> = frames.iter().flatten().copied().collect();
        sorted.sort_by(f32::total_cmp);
        let mut abs: Vec<f32> = sorted.iter().map(|x| x.abs()).collect();
        abs.sort_by(f32::total_cmp);
        for p in [50.0f32, 90.0, 99.0, 99.9, 99.99, 100.0] {
            let o = observe_frames(CalibrationMethod::Percentile { percentile: p }, &frames);
            let w = o.bins.width as f32;
            let q = p as f64 / 100.0;
            let (lo, hi) = o.range(8, false);
            let (want_lo, want_hi) = (
                sorted_quantile(&sorted, 1.0 - q).min(0.0),
                sorted_quantile(&sorted, q).max(0.0),
            );
            assert!(
                (lo - want_lo).abs() <= w,
                "p{p}: lo {lo} vs {want_lo} (bin {w})"
            );
            assert!(
                (hi - want_hi).abs() <= w,
                "p{p}: hi {hi} vs {want_hi} (bin {w})"
            );
            let t = o.range(8, true).1;
            let want = sorted_quantile(&abs, q);
            assert!((t - want).abs() <= w, "p{p}: |x| {t} vs {want} (bin {w})");
        }
        let o = observe_frames(CalibrationMethod::Percentile { percentile: 100.0 }, &frames);
        assert_eq!(o.range(8, false), o.min_max());
    }

    #[test]
    fn moving_average_converges() {
        let mut rng = Rng(0xa7e);
        let method = CalibrationMethod::MovingAverageMinMax { momentum: 0.05 };
        let mut o = Observer::new(method);
        o.observe(&[-4.0, 0.5, 8.0]);
        assert_eq!(o.range(8, false), (-4.0, 8.0));
        for _ in 0..400 {
            // Per-frame extremes around -1 and 2, one outlier frame in fifty.
            let spike = if rng.int(0, 49) == 0 { 10.0 } else { 1.0 };
            let lo = -1.0 + 0.1 * rng.uniform(-1.0, 1.0);
            let hi = (2.0 + 0.1 * rng.uniform(-1.0, 1.0)) * spike;
            o.observe(&[lo as f32, 0.3, hi as f32]);
        }
        let (lo, hi) = o.range(8, false);
        assert!((lo + 1.0).abs() < 0.1, "{lo}");
        // The outliers leave a trace of at most a few tenths; MinMax keeps them whole.
        assert!(hi > 1.9 && hi < 4.0, "{hi}");
        assert_eq!(o.min_max().0, -4.0);
        // momentum 1: the latest frame; 0: the first one.
        let mut last = Observer::new(CalibrationMethod::MovingAverageMinMax { momentum: 1.0 });
        let mut first = Observer::new(CalibrationMethod::MovingAverageMinMax { momentum: 0.0 });
        for f in [[-1.0, 1.0], [-3.0, 5.0], [-0.5, 0.5]] {
            last.observe(&f);
            first.observe(&f);
        }
        assert_eq!(last.range(8, false), (-0.5, 0.5));
        assert_eq!(first.range(8, false), (-1.0, 1.0));
    }

    #[test]
    fn histogram_downsamples_exactly() {
        let mut rng = Rng(0xd05);
        let frames = frames_of(&mut rng, 5, 10_000, |r| r.gaussian());
        let h = observe_frames(CalibrationMethod::Entropy, &frames).histogram();
        assert!(h.counts.len() > 1000 && h.counts.len() <= HISTOGRAM_BINS);
        assert!(h.start <= h.min && *h.edges().last().unwrap() >= h.max);
        for n in [1, 7, 128, 5000] {
            let d = h.downsample(n);
            assert!(d.counts.len() <= n.max(1) && !d.counts.is_empty());
            assert_eq!(d.total(), h.total());
            assert_eq!(d.start, h.start);
            assert!(*d.edges().last().unwrap() >= h.max);
        }
        let d = h.downsample(128);
        let factor = (d.bin_width / h.bin_width).round() as usize;
        assert_eq!(d.counts[0], h.counts[..factor].iter().sum::<u64>());
        assert_eq!(h.downsample(0).counts.len(), 1);
    }

    #[test]
    fn methods_serialize_with_a_tag() {
        let json = |m: CalibrationMethod| serde_json::to_string(&m).unwrap();
        assert_eq!(CalibrationMethod::default(), CalibrationMethod::Mse);
        assert_eq!(json(CalibrationMethod::MinMax), r#"{"method":"minMax"}"#);
        assert_eq!(json(CalibrationMethod::Entropy), r#"{"method":"entropy"}"#);
        assert_eq!(json(CalibrationMethod::Mse), r#"{"method":"mse"}"#);
        assert_eq!(
            json(CalibrationMethod::Percentile { percentile: 99.5 }),
            r#"{"method":"percentile","percentile":99.5}"#
        );
        assert_eq!(
            json(CalibrationMethod::MovingAverageMinMax { momentum: 0.25 }),
            r#"{"method":"movingAverageMinMax","momentum":0.25}"#
        );
        for m in ALL {
            assert_eq!(
                serde_json::from_str::<CalibrationMethod>(&json(m)).unwrap(),
                m
            );
        }
        let h = Histogram {
            start: -1.0,
            bin_width: 0.5,
            counts: vec![1, 2],
            min: -1.0,
            max: 0.0,
        };
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.contains("\"binWidth\":0.5"), "{text}");
    }

    #[test]
    fn out_of_range_settings_are_clamped() {
        let frames = vec![vec![-1.0, 0.5, 2.0, 1.0]];
        for p in [f32::NAN, 120.0, 10.0] {
            let o = observe_frames(CalibrationMethod::Percentile { percentile: p }, &frames);
            check_ranges(&o);
        }
        let o = observe_frames(
            CalibrationMethod::MovingAverageMinMax { momentum: f32::NAN },
            &frames,
        );
        assert_eq!(o.range(8, false), (-1.0, 2.0));
    }
}
