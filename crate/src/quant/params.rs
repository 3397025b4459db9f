//! Quantization parameters: the affine map between reals and integers for one tensor
//! ([`QuantParams`]) or for the output channels of a weight ([`ChannelParams`]).
//!
//! # Formulas (normative)
//! A value is stored as `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`
//! ([`quantize_f32`], the rounding the int8 kernels are tested against) and read back as
//! `scale · (q - zero_point)`. For `b` bits (`2..=8`):
//!
//! | storage            | asymmetric            | symmetric                      | symmetric zero point |
//! |--------------------|-----------------------|--------------------------------|----------------------|
//! | int8 (`signed`)    | `[-2^(b-1), 2^(b-1)-1]` | `[-(2^(b-1)-1), 2^(b-1)-1]`  | 0                    |
//! | uint8              | `[0, 2^b-1]`          | `[1, 2^b-1]`                   | `2^(b-1)`            |
//!
//! uint8 is int8 shifted by `2^(b-1)` (integers and zero point alike), so both storages
//! represent the same reals ([`QuantParams::with_storage`]); the engine works in int8.
//! Symmetric ranges drop the most negative integer so that weights fit the kernels'
//! `[-(2^(b-1)-1), 2^(b-1)-1]` (8-bit weights are in `[-127, 127]`).
//!
//! [`from_range`] builds parameters from a real range `[min, max]`, first extended to contain
//! 0 (a real 0, i.e. padding and ReLU outputs, must be exact):
//! - asymmetric: `scale = (max - min) / (qmax - qmin)` and
//!   `zero_point = clamp(round_half_even(qmin - min / scale), qmin, qmax)`. Rounding the zero
//!   point to an integer ("nudging") makes 0.0 exact and shifts the representable range
//!   `[scale · (qmin - zero_point), scale · (qmax - zero_point)]` by less than half a step.
//! - symmetric: `scale = max(|min|, |max|) / (2^(b-1) - 1)`, zero point 0 (int8 storage).
//! - scales are clamped into `[MIN_SCALE, MAX_SCALE]`: an empty range (`min == max == 0`),
//!   NaN bounds (read as 0) and infinite bounds (read as `±f32::MAX`) still give a finite,
//!   positive scale, and a tiny scale never turns a requantization multiplier
//!   `sx · sw / sy` into something huge.
//!
//! Weights are symmetric, zero point 0, with one scale per output channel (or one for the
//! tensor): `scale[c] = r[c] · max_abs(w[c]) / (2^(b-1) - 1)`. [`WeightRange::MaxAbs`] uses
//! `r = 1`; [`WeightRange::Mse`] searches `r` in `0.50, 0.51, ..., 1.00` for the least squared
//! error `Σ (scale · q - w)²` of each channel (rounding inside plus clipping outside), which
//! pays off at low widths: at 4 bits the best clip of Gaussian-like weights is well below the
//! maximum.
//!
//! # Tests
//! The integer ranges of every storage and width, worked examples of `from_range`, 0.0 exact
//! and round-trip error within half a step on random ranges, degenerate ranges, the uint8/int8
//! equivalence, per-channel layouts on every axis, and the MSE search never worse than max-abs
//! (and clearly better at 4 bits).

use serde::{Deserialize, Serialize};

use crate::kernels::int8::quantize_f32;
use crate::{Error, Result};

/// The smallest scale [`from_range`] and the weight quantizers produce (PyTorch's
/// `torch.finfo(float32).eps`): ranges narrower than about `255 · 2^-23` are treated as zero.
pub const MIN_SCALE: f32 = f32::EPSILON;

/// The largest scale: `scale · (q - zero_point)` stays finite for any 8-bit `q`.
pub const MAX_SCALE: f32 = f32::MAX / 512.0;

/// Checks a bit width from a configuration: `2..=8`.
pub fn check_bits(bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "quantization width {bits} bits is outside 2..=8"
        )))
    }
}

/// Panics unless `bits` is in `2..=8` (the message the whole module uses).
pub(crate) fn assert_bits(bits: u32) {
    assert!(
        (2..=8).contains(&bits),
        "quantization width {bits} bits is outside 2..=8"
    );
}

/// `2^(b-1) - 1`: the largest integer of a symmetric `b`-bit range.
fn symmetric_qmax(bits: u32) -> i32 {
    (1 << (bits - 1)) - 1
}

/// The quantization of one tensor: `real = scale · (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
    /// Width in `2..=8`.
    pub bits: u32,
    /// Storage as exported: int8 (`true`) or uint8 (`false`). See the module table.
    pub signed: bool,
    /// Symmetric range around the zero point, which is then 0 (int8) or `2^(b-1)` (uint8).
    pub symmetric: bool,
}

impl QuantParams {
    /// `2^(b-1)` for uint8 storage, 0 for int8: uint8 integers are int8 ones plus this.
    fn storage_offset(&self) -> i32 {
        if self.signed {
            0
        } else {
            1 << (self.bits - 1)
        }
    }

    /// The smallest stored integer (see the module table).
    pub fn qmin(&self) -> i32 {
        assert_bits(self.bits);
        let signed_qmin = if self.symmetric {
            -symmetric_qmax(self.bits)
        } else {
            -(1 << (self.bits - 1))
        };
        signed_qmin + self.storage_offset()
    }

    /// The largest stored integer (see the module table).
    pub fn qmax(&self) -> i32 {
        assert_bits(self.bits);
        symmetric_qmax(self.bits) + self.storage_offset()
    }

    /// `clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`; NaN gives the zero point.
    pub fn quantize(&self, x: f32) -> i32 {
        quantize_f32(x, self.scale, self.zero_point, self.qmin(), self.qmax())
    }

    /// `scale · (q - zero_point)`.
    pub fn dequantize(&self, q: i32) -> f32 {
        self.scale * (q - self.zero_point) as f32
    }

    /// `dequantize(quantize(x))`: the value the simulation uses in place of `x`.
    pub fn fake_quantize(&self, x: f32) -> f32 {
        self.dequantize(self.quantize(x))
    }

    /// The real range the integers represent: `[dequantize(qmin), dequantize(qmax)]`.
    pub fn real_range(&self) -> (f32, f32) {
        (self.dequantize(self.qmin()), self.dequantize(self.qmax()))
    }

    /// The same reals in the other storage: the zero point moves by `2^(b-1)` with the
    /// integer range, so `dequantize` of corresponding integers is unchanged.
    pub fn with_storage(self, signed: bool) -> QuantParams {
        let moved = QuantParams { signed, ..self };
        QuantParams {
            zero_point: self.zero_point - self.storage_offset() + moved.storage_offset(),
            ..moved
        }
    }

    /// Checks parameters from outside (a configuration, a file): width in `2..=8`, a finite
    /// positive scale, the zero point inside `[qmin, qmax]`, and 0 (int8) or `2^(b-1)` (uint8)
    /// when symmetric.
    pub fn validate(&self) -> Result<()> {
        check_bits(self.bits)?;
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::Invalid(format!(
                "quantization scale {} is not a finite positive number",
                self.scale
            )));
        }
        let (qmin, qmax) = (self.qmin(), self.qmax());
        if self.symmetric && self.zero_point != self.storage_offset() {
            return Err(Error::Invalid(format!(
                "symmetric quantization needs zero point {}, not {}",
                self.storage_offset(),
                self.zero_point
            )));
        }
        if !(qmin..=qmax).contains(&self.zero_point) {
            return Err(Error::Invalid(format!(
                "zero point {} outside [{qmin}, {qmax}]",
                self.zero_point
            )));
        }
        Ok(())
    }
}

/// A range bound as [`from_range`] reads it: NaN is 0, infinities are `±f32::MAX`.
fn sanitize(x: f32) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f32::MAX, f32::MAX) as f64
    }
}

fn clamp_scale(scale: f64) -> f32 {
    // NaN cannot occur (bounds are sanitized), but map it to the floor rather than trust it.
    if scale.is_nan() {
        return MIN_SCALE;
    }
    scale.clamp(MIN_SCALE as f64, MAX_SCALE as f64) as f32
}

/// Parameters covering `[min, max]` extended to contain 0, int8 storage; see the module docs
/// for the formulas. Never fails: degenerate bounds give a valid (tiny or huge) scale.
///
/// Panics if `bits` is outside `2..=8` (configurations are checked by [`check_bits`]).
pub fn from_range(min: f32, max: f32, bits: u32, symmetric: bool) -> QuantParams {
    assert_bits(bits);
    let (a, b) = (sanitize(min), sanitize(max));
    let lo = a.min(b).min(0.0);
    let hi = a.max(b).max(0.0);
    let mut p = QuantParams {
        scale: 1.0,
        zero_point: 0,
        bits,
        signed: true,
        symmetric,
    };
    let (qmin, qmax) = (p.qmin(), p.qmax());
    if symmetric {
        p.scale = clamp_scale((-lo).max(hi) / qmax as f64);
    } else {
        p.scale = clamp_scale((hi - lo) / (qmax - qmin) as f64);
        // lo <= 0, so qmin - lo / scale >= qmin; the clamp only guards the upper end against
        // a scale rounded down by the f32 conversion or raised to MIN_SCALE.
        let zp = (qmin as f64 - lo / p.scale as f64).round_ties_even();
        p.zero_point = zp.clamp(qmin as f64, qmax as f64) as i32;
    }
    p
}

/// How a weight quantizer picks each channel's range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WeightRange {
    /// The largest magnitude: nothing is clipped.
    #[default]
    MaxAbs,
    /// The clip ratio in `0.50..=1.00` (steps of 0.01) with the least squared error.
    Mse,
}

/// Symmetric weight quantization: one scale per output channel along `axis` (or a single
/// scale for the tensor), zero point 0, integers in `[-(2^(b-1)-1), 2^(b-1)-1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelParams {
    /// One per channel along `axis`, or a single one for the whole tensor.
    pub scales: Vec<f32>,
    /// Width in `2..=8`.
    pub bits: u32,
    /// The channel axis of the weight's shape (0 for ONNX Conv and for per-tensor weights).
    pub axis: usize,
}

impl ChannelParams {
    /// `2^(b-1) - 1`; the range is `[-qmax, qmax]`.
    pub fn qmax(&self) -> i32 {
        assert_bits(self.bits);
        symmetric_qmax(self.bits)
    }

    /// True when one scale serves the whole tensor.
    pub fn is_per_tensor(&self) -> bool {
        self.scales.len() == 1
    }

    /// The scale of channel `c` (the single scale of a per-tensor weight for any `c`).
    pub fn scale(&self, c: usize) -> f32 {
        if self.is_per_tensor() {
            self.scales[0]
        } else {
            self.scales[c]
        }
    }

    /// Channel `c` as per-tensor parameters (symmetric, int8 storage, zero point 0).
    pub fn channel(&self, c: usize) -> QuantParams {
        QuantParams {
            scale: self.scale(c),
            zero_point: 0,
            bits: self.bits,
            signed: true,
            symmetric: true,
        }
    }

    /// The reals `scale[c] · q` of quantized weights of `shape`.
    pub fn dequantize(&self, q: &[i8], shape: &[usize]) -> Vec<f32> {
        let layout = ChannelLayout::new(q.len(), shape, self.axis, !self.is_per_tensor());
        let mut out = vec![0f32; q.len()];
        for c in 0..layout.channels {
            let s = self.scale(c);
            layout.for_each(c, |i| out[i] = s * q[i] as f32);
        }
        out
    }
}

/// Where channel `c`'s values sit in a row-major tensor: `outer · channels · inner` elements,
/// channel `c` at `(o · channels + c) · inner + i`.
struct ChannelLayout {
    outer: usize,
    channels: usize,
    inner: usize,
}

impl ChannelLayout {
    /// Per channel along `axis`, or the whole tensor as one channel.
    fn new(len: usize, shape: &[usize], axis: usize, per_channel: bool) -> ChannelLayout {
        let elements: usize = shape.iter().product();
        assert_eq!(
            len, elements,
            "weight of {len} values does not match shape {shape:?}"
        );
        if !per_channel {
            return ChannelLayout {
                outer: 1,
                channels: 1,
                inner: len,
            };
        }
        assert!(
            axis < shape.len(),
            "channel axis {axis} outside shape {shape:?}"
        );
        ChannelLayout {
            outer: shape[..axis].iter().product(),
            channels: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        }
    }

    fn for_each(&self, c: usize, mut f: impl FnMut(usize)) {
        for o in 0..self.outer {
            let base = (o * self.channels + c) * self.inner;
            (base..base + self.inner).for_each(&mut f);
        }
    }
}

/// Symmetric per-output-channel quantization along `axis` with max-abs ranges.
///
/// Panics if `w.len()` is not the product of `shape`, `axis` is outside it, or `bits` is
/// outside `2..=8`.
pub fn per_channel_weights(
    w: &[f32],
    shape: &[usize],
    axis: usize,
    bits: u32,
) -> (ChannelParams, Vec<i8>) {
    quantize_weights(w, shape, Some(axis), bits, WeightRange::MaxAbs)
}

/// Symmetric per-tensor quantization with a max-abs range: [`ChannelParams`] with one scale.
pub fn per_tensor_weights(w: &[f32], bits: u32) -> (ChannelParams, Vec<i8>) {
    quantize_weights(w, &[w.len()], None, bits, WeightRange::MaxAbs)
}

/// Symmetric weight quantization per channel along `axis` (or per tensor for `None`), each
/// range chosen by `range`. Non-finite weights are ignored by the range and quantize as
/// [`quantize_f32`] does (NaN to 0, infinities to `±qmax`).
///
/// Panics if `w.len()` is not the product of `shape`, `axis` is outside it, or `bits` is
/// outside `2..=8`.
pub fn quantize_weights(
    w: &[f32],
    shape: &[usize],
    axis: Option<usize>,
    bits: u32,
    range: WeightRange,
) -> (ChannelParams, Vec<i8>) {
    assert_bits(bits);
    let qmax = symmetric_qmax(bits);
    let layout = ChannelLayout::new(w.len(), shape, axis.unwrap_or(0), axis.is_some());
    let mut scales = Vec::with_capacity(layout.channels);
    let mut q = vec![0i8; w.len()];
    let mut values = Vec::new();
    for c in 0..layout.channels {
        values.clear();
        layout.for_each(c, |i| values.push(w[i]));
        let scale = channel_scale(&values, qmax, range);
        layout.for_each(c, |i| {
            q[i] = quantize_f32(w[i], scale, 0, -qmax, qmax) as i8;
        });
        scales.push(scale);
    }
    let params = ChannelParams {
        scales,
        bits,
        axis: axis.unwrap_or(0),
    };
    (params, q)
}

/// The scale of one channel's values for a symmetric `[-qmax, qmax]` grid.
fn channel_scale(values: &[f32], qmax: i32, range: WeightRange) -> f32 {
    let max_abs = values
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    let scale_for = |ratio: f64| clamp_scale(ratio * max_abs as f64 / qmax as f64);
    match range {
        WeightRange::MaxAbs => scale_for(1.0),
        WeightRange::Mse => {
            // From the widest ratio down, replacing only on a strict improvement: ties keep
            // the wider range, which clips nothing more.
            let mut best = (f64::INFINITY, scale_for(1.0));
            for percent in (50..=100).rev() {
                let scale = scale_for(percent as f64 / 100.0);
                let err = squared_error(values, scale, qmax);
                if err < best.0 {
                    best = (err, scale);
                }
            }
            best.1
        }
    }
}

/// `Σ (scale · q(x) - x)²` over the finite values.
fn squared_error(values: &[f32], scale: f32, qmax: i32) -> f64 {
    values
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| {
            let e = (scale * quantize_f32(x, scale, 0, -qmax, qmax) as f32 - x) as f64;
            e * e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::test_rng::Rng;
    use super::*;

    fn params(bits: u32, signed: bool, symmetric: bool) -> QuantParams {
        QuantParams {
            scale: 1.0,
            zero_point: 0,
            bits,
            signed,
            symmetric,
        }
    }

    #[test]
    fn integer_ranges_follow_the_table() {
        let range = |p: QuantParams| (p.qmin(), p.qmax());
        assert_eq!(range(params(8, true, false)), (-128, 127));
        assert_eq!(range(params(8, true, true)), (-127, 127));
        assert_eq!(range(params(8, false, false)), (0, 255));
        assert_eq!(range(params(8, false, true)), (1, 255));
        assert_eq!(range(params(4, true, false)), (-8, 7));
        assert_eq!(range(params(4, true, true)), (-7, 7));
        assert_eq!(range(params(4, false, false)), (0, 15));
        assert_eq!(range(params(2, true, true)), (-1, 1));
        assert_eq!(range(params(2, true, false)), (-2, 1));
        for bits in 2..=8 {
            for symmetric in [false, true] {
                let (lo, hi) = range(params(bits, true, symmetric));
                assert_eq!(hi, (1 << (bits - 1)) - 1);
                assert_eq!(lo, if symmetric { -hi } else { -hi - 1 });
                // Every width fits int8 storage, and uint8 is the same range shifted.
                assert!(lo >= -128 && hi <= 127);
                let (ulo, uhi) = range(params(bits, false, symmetric));
                assert_eq!((ulo - lo, uhi - hi), (1 << (bits - 1), 1 << (bits - 1)));
            }
        }
    }

    #[test]
    fn from_range_worked_examples() {
        // [-1, 3] on 8 bits: scale 4/255, zero point round(-128 + 63.75) = -64.
        let p = from_range(-1.0, 3.0, 8, false);
        assert_eq!(p.scale, 4.0 / 255.0);
        assert_eq!(p.zero_point, -64);
        assert_eq!((p.signed, p.symmetric, p.bits), (true, false, 8));
        assert_eq!(p.quantize(0.0), -64);
        assert_eq!(p.dequantize(-64), 0.0);
        // Post-ReLU [0, 6]: the zero point sits at qmin.
        let p = from_range(0.0, 6.0, 8, false);
        assert_eq!((p.scale, p.zero_point), (6.0 / 255.0, -128));
        // A range without 0 is extended to it.
        assert_eq!(from_range(2.0, 6.0, 8, false), p);
        assert_eq!(from_range(-6.0, -2.0, 8, false).zero_point, 127);
        // Symmetric: the larger magnitude over 2^(b-1) - 1.
        let p = from_range(-0.5, 2.0, 8, true);
        assert_eq!((p.scale, p.zero_point), (2.0 / 127.0, 0));
        assert_eq!((p.qmin(), p.qmax()), (-127, 127));
        let p = from_range(-3.5, 2.0, 4, true);
        assert_eq!((p.scale, p.zero_point), (0.5, 0));
        assert_eq!(p.quantize(-100.0), -7);
        // Inverted bounds are read as the range they span.
        assert_eq!(
            from_range(3.0, -1.0, 8, false),
            from_range(-1.0, 3.0, 8, false)
        );
    }

    #[test]
    fn zero_is_exact_and_error_is_half_a_step_inside_the_range() {
        let mut rng = Rng(0x9a3a);
        for case in 0..2000 {
            let bits = rng.int(2, 8) as u32;
            let symmetric = case % 3 == 0;
            let a = (rng.unit() * 2.0 - 1.0) as f32 * 10f32.powi(rng.int(-3, 3) as i32);
            let b = (rng.unit() * 2.0 - 1.0) as f32 * 10f32.powi(rng.int(-3, 3) as i32);
            let p = from_range(a, b, bits, symmetric);
            p.validate().unwrap();
            assert_eq!(p.fake_quantize(0.0), 0.0, "case {case}: {p:?}");
            let (lo, hi) = p.real_range();
            assert!(lo <= 0.0 && hi >= 0.0);
            // Nudging the zero point moves each end by less than half a step.
            let (want_lo, want_hi) = (a.min(b).min(0.0), a.max(b).max(0.0));
            if !symmetric {
                assert!(
                    lo <= want_lo + p.scale * 0.5001,
                    "case {case}: {p:?} {a} {b}"
                );
                assert!(
                    hi >= want_hi - p.scale * 0.5001,
                    "case {case}: {p:?} {a} {b}"
                );
            } else {
                assert!(lo <= want_lo + want_lo.abs() * 1e-6, "case {case}: {p:?}");
                assert!(hi >= want_hi - want_hi.abs() * 1e-6, "case {case}: {p:?}");
            }
            for _ in 0..20 {
                let x = lo + (hi - lo) * rng.unit() as f32;
                let err = (p.fake_quantize(x) - x).abs();
                assert!(
                    err <= p.scale * 0.5001,
                    "case {case}: {p:?} x={x} err={err}"
                );
            }
        }
    }

    #[test]
    fn degenerate_ranges_give_valid_scales() {
        for (a, b) in [
            (0.0, 0.0),
            (f32::NAN, f32::NAN),
            (f32::NAN, 1.0),
            (f32::NEG_INFINITY, f32::INFINITY),
            (0.0, f32::INFINITY),
            (-f32::MAX, f32::MAX),
            (1e-30, 1e-30),
            (-1e-42, 0.0),
        ] {
            for bits in [2, 4, 8] {
                for symmetric in [false, true] {
                    let p = from_range(a, b, bits, symmetric);
                    p.validate()
                        .unwrap_or_else(|e| panic!("[{a}, {b}] {bits} bits: {e}"));
                    assert!(p.scale >= MIN_SCALE && p.scale <= MAX_SCALE);
                    let (lo, hi) = p.real_range();
                    assert!(lo.is_finite() && hi.is_finite(), "{p:?}");
                    assert_eq!(p.fake_quantize(0.0), 0.0);
                    assert!(p.fake_quantize(f32::NAN).is_finite());
                }
            }
        }
        assert_eq!(from_range(0.0, 0.0, 8, false).scale, MIN_SCALE);
    }

    #[test]
    fn uint8_storage_represents_the_same_reals() {
        for (a, b, symmetric) in [(-1.0, 3.0, false), (0.0, 6.0, false), (-2.0, 0.5, true)] {
            for bits in [4, 8] {
                let p = from_range(a, b, bits, symmetric);
                let u = p.with_storage(false);
                u.validate().unwrap();
                assert_eq!(u.with_storage(true), p);
                let shift = 1 << (bits - 1);
                assert_eq!((u.qmin(), u.qmax()), (p.qmin() + shift, p.qmax() + shift));
                for x in [-3.0, -1.0, -0.01, 0.0, 0.3, 2.9, 7.0] {
                    assert_eq!(u.quantize(x), p.quantize(x) + shift);
                    assert_eq!(u.fake_quantize(x), p.fake_quantize(x));
                }
            }
        }
        // 8-bit uint8 asymmetric is the classic [0, 255] with a zero point in it.
        let u = from_range(-1.0, 3.0, 8, false).with_storage(false);
        assert_eq!((u.qmin(), u.qmax(), u.zero_point), (0, 255, 64));
    }

    #[test]
    fn validate_rejects_bad_parameters() {
        let ok = from_range(-1.0, 1.0, 8, false);
        assert!(ok.validate().is_ok());
        for bad in [
            QuantParams { bits: 9, ..ok },
            QuantParams { bits: 1, ..ok },
            QuantParams { scale: 0.0, ..ok },
            QuantParams {
                scale: f32::NAN,
                ..ok
            },
            QuantParams {
                scale: f32::INFINITY,
                ..ok
            },
            QuantParams {
                zero_point: 128,
                ..ok
            },
            QuantParams {
                symmetric: true,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(check_bits(4).is_ok() && check_bits(0).is_err() && check_bits(16).is_err());
    }

    #[test]
    fn serde_uses_camel_case() {
        let p = from_range(-1.0, 3.0, 8, false);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"zeroPoint\":-64"), "{json}");
        assert_eq!(serde_json::from_str::<QuantParams>(&json).unwrap(), p);
        let (c, _) = per_channel_weights(&[1.0, -2.0], &[2, 1], 0, 8);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ChannelParams>(&json).unwrap(), c);
        assert_eq!(serde_json::to_string(&WeightRange::Mse).unwrap(), "\"mse\"");
        assert_eq!(
            serde_json::to_string(&WeightRange::MaxAbs).unwrap(),
            "\"maxAbs\""
        );
    }

    #[test]
    fn per_channel_weights_on_every_axis() {
        // Shape [2, 3]: along axis 0 the channels are rows, along axis 1 columns.
        // (No value lands near a rounding tie.)
        let w = [0.75, -1.0, 0.25, 3.0, 0.0, -4.0];
        let (p, q) = per_channel_weights(&w, &[2, 3], 0, 8);
        assert_eq!(p.scales, vec![1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(p.axis, 0);
        assert_eq!(q, vec![95, -127, 32, 95, 0, -127]);
        let (p, q) = per_channel_weights(&w, &[2, 3], 1, 8);
        assert_eq!(p.scales, vec![3.0 / 127.0, 1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q, vec![32, -127, 8, 127, 0, -127]);
        // A zero channel gets the floor scale and zeros.
        let (p, q) = per_channel_weights(&[0.0, 0.0, 1.0, -1.0], &[2, 2], 0, 4);
        assert_eq!(p.scales, vec![MIN_SCALE, 1.0 / 7.0]);
        assert_eq!(q, vec![0, 0, 7, -7]);

        // Random 4-d conv weights, channel axis in the middle: reconstruction within half a
        // step of each channel's scale, integers in the symmetric range.
        let mut rng = Rng(0x51de);
        let shape = [3, 5, 2, 7];
        let w: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.gaussian() as f32)
            .collect();
        for bits in [2, 4, 8] {
            let (p, q) = per_channel_weights(&w, &shape, 1, bits);
            assert_eq!(p.scales.len(), 5);
            let qmax = p.qmax() as i8;
            assert!(q.iter().all(|&v| (-qmax..=qmax).contains(&v)));
            let back = p.dequantize(&q, &shape);
            for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
                let c = (i / 14) % 5;
                assert!((x - y).abs() <= p.scales[c] * 0.5001, "bits {bits} at {i}");
            }
            // Each channel's largest magnitude maps to ±qmax.
            for c in 0..5 {
                let peak = (0..w.len())
                    .filter(|i| (i / 14) % 5 == c)
                    .map(|i| q[i].unsigned_abs())
                    .max();
                assert_eq!(peak, Some(qmax as u8));
            }
        }
    }

    #[test]
    fn per_tensor_weights_use_one_scale() {
        let w = [0.5, -1.5, 0.25, 2.0];
        let (p, q) = per_tensor_weights(&w, 8);
        assert!(p.is_per_tensor());
        assert_eq!(p.scales, vec![2.0 / 127.0]);
        assert_eq!(q, vec![32, -95, 16, 127]);
        assert_eq!(p.dequantize(&q, &[4])[3], 2.0);
        assert_eq!(p.channel(3).scale, p.scales[0]);
    }

    #[test]
    fn mse_weight_ranges_clip_at_low_widths() {
        let mut rng = Rng(0x4b17);
        let shape = [8, 288];
        let w: Vec<f32> = (0..8 * 288)
            .map(|i| (rng.gaussian() * (1.0 + (i / 288) as f64)) as f32)
            .collect();
        let error = |p: &ChannelParams, q: &[i8]| -> f64 {
            let back = p.dequantize(q, &shape);
            w.iter()
                .zip(&back)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        for bits in [2, 3, 4, 8] {
            let (pm, qm) = quantize_weights(&w, &shape, Some(0), bits, WeightRange::MaxAbs);
            let (pe, qe) = quantize_weights(&w, &shape, Some(0), bits, WeightRange::Mse);
            let (em, ee) = (error(&pm, &qm), error(&pe, &qe));
            // The search includes ratio 1, so it is never worse.
            assert!(
                ee <= em * (1.0 + 1e-9),
                "{bits} bits: mse {ee} > max-abs {em}"
            );
            for c in 0..8 {
                let ratio = pe.scales[c] / pm.scales[c];
                assert!(
                    (0.499..=1.0001).contains(&ratio),
                    "{bits} bits ch {c}: {ratio}"
                );
            }
            if bits <= 4 {
                // At 4 bits and below clipping Gaussian tails pays clearly.
                assert!(ee < 0.8 * em, "{bits} bits: mse {ee} vs max-abs {em}");
                assert!(pe.scales.iter().zip(&pm.scales).all(|(e, m)| e < m));
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not match shape")]
    fn mismatched_shape_panics() {
        per_channel_weights(&[1.0, 2.0, 3.0], &[2, 2], 0, 8);
    }
}
