//! ONNX Resize / Upsample (modes `nearest` and `linear`) for tensors of any
//! rank and layout: every axis whose size changes is interpolated, the others
//! are copied, so NCHW and NHWC need no special casing.
//!
//! Contract:
//! - The scale of an axis is the model's `scales` value when it has one (an
//!   f32, taken as the exact fraction it is), else `out / in`. The source
//!   coordinate follows the ONNX formula of `coordinate_transformation_mode`,
//!   evaluated as one f64 division of exact integers (e.g. half_pixel with
//!   scale `n / d` is `((2o + 1) d - n) / (2 n)`), so exact ties such as 0.5
//!   stay exact and `nearest_mode` rounding is that of the real formula.
//! - Axes whose size does not change are copied, even where the formula
//!   would shift them (tf_half_pixel_for_nn with ceil rounding).
//! - Nearest: the source coordinate is rounded by `nearest_mode`, then
//!   clamped to `[0, in - 1]`. Runs of output rows that read the same source
//!   row are copied, and an integer factor along the innermost changed axis
//!   (YOLO's 2x upsampling) fills each factor-wide run with one value.
//! - Linear: the source coordinate is clamped to `[0, in - 1]` (the ONNX
//!   reference's edge padding), then `(1 - t) * x[i] + t * x[i + 1]`. Axes
//!   are interpolated one at a time (separable multilinear), shrinking axes
//!   first, so results differ from direct multilinear by rounding only.
//!
//! Tests: the worked examples of the ONNX Resize backend tests, and random
//! shapes of rank 1..4 against a direct per-output reference that uses
//! exact integer arithmetic for nearest and f64 multilinear weights.

/// ONNX Resize `mode` (cubic is not supported).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ResizeMode {
    Nearest,
    Linear,
}

/// ONNX Resize `coordinate_transformation_mode` (tf_crop_and_resize and
/// half_pixel_symmetric are not supported; with scale = out / in the latter
/// equals half_pixel anyway).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum CoordTransform {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

/// ONNX Resize `nearest_mode`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

impl CoordTransform {
    /// The source coordinate of output index `o` as an exact fraction
    /// (numerator, denominator > 0), for an axis scaled by `scale` =
    /// (numerator, denominator), both positive.
    fn source_fraction(self, o: usize, in_len: usize, out_len: usize, scale: (i64, i64)) -> (i64, i64) {
        let (o, n_in, n_out) = (o as i64, in_len as i64, out_len as i64);
        let (sn, sd) = scale;
        match self {
            CoordTransform::HalfPixel => ((2 * o + 1) * sd - sn, 2 * sn),
            CoordTransform::PytorchHalfPixel if n_out > 1 => ((2 * o + 1) * sd - sn, 2 * sn),
            CoordTransform::AlignCorners if n_out > 1 => (o * (n_in - 1), n_out - 1),
            CoordTransform::PytorchHalfPixel | CoordTransform::AlignCorners => (0, 1),
            CoordTransform::Asymmetric => (o * sd, sn),
            CoordTransform::TfHalfPixelForNn => ((2 * o + 1) * sd, 2 * sn),
        }
    }

    fn source(self, o: usize, in_len: usize, out_len: usize, scale: (i64, i64)) -> f64 {
        let (num, den) = self.source_fraction(o, in_len, out_len, scale);
        num as f64 / den as f64
    }
}

impl NearestMode {
    fn round(self, x: f64) -> f64 {
        let floor = x.floor();
        let frac = x - floor;
        let up = match self {
            NearestMode::RoundPreferFloor => frac > 0.5,
            NearestMode::RoundPreferCeil => frac >= 0.5,
            NearestMode::Floor => false,
            NearestMode::Ceil => frac > 0.0,
        };
        if up {
            floor + 1.0
        } else {
            floor
        }
    }
}

/// The exact fraction (numerator, denominator) an f32 scale stands for.
fn exact_fraction(scale: f32) -> (i64, i64) {
    assert!(scale.is_finite() && scale > 0.0, "resize scale {scale} must be positive");
    let bits = scale.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let (mut mantissa, mut exp2) =
        if exp == 0 { ((bits & 0x7f_ffff) as i64, -149) } else { (((bits & 0x7f_ffff) | 0x80_0000) as i64, exp - 150) };
    while mantissa % 2 == 0 && exp2 < 0 {
        mantissa /= 2;
        exp2 += 1;
    }
    if exp2 >= 0 {
        (mantissa << exp2, 1)
    } else {
        (mantissa, 1i64 << (-exp2).min(62))
    }
}

/// Per-axis scale fractions: the given scales, else `out / in`.
fn axis_scales(in_shape: &[usize], out_shape: &[usize], scales: Option<&[f32]>) -> Vec<(i64, i64)> {
    (0..in_shape.len())
        .map(|a| match scales {
            Some(s) => exact_fraction(s[a]),
            None => (out_shape[a] as i64, in_shape[a].max(1) as i64),
        })
        .collect()
}

/// Resizes `x` of `in_shape` to `out_shape` (same rank). `scales`, when the
/// model gave them, set the coordinate mapping (ONNX divides by the scale
/// as given, which differs from `out / in` when `in * scale` is fractional).
#[allow(clippy::too_many_arguments)]
pub fn resize(
    x: &[f32],
    in_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
    scales: Option<&[f32]>,
    mode: ResizeMode,
    coord: CoordTransform,
    nearest: NearestMode,
) {
    assert_eq!(in_shape.len(), out_shape.len(), "resize keeps the rank");
    assert_eq!(
        x.len(),
        in_shape.iter().product::<usize>(),
        "x does not match in_shape"
    );
    assert_eq!(
        out.len(),
        out_shape.iter().product::<usize>(),
        "out does not match out_shape"
    );
    if out.is_empty() {
        return;
    }
    assert!(
        !x.is_empty(),
        "cannot resize an empty tensor to a non-empty one"
    );
    if let Some(s) = scales {
        assert_eq!(s.len(), in_shape.len(), "one scale per axis");
    }
    let ratios = axis_scales(in_shape, out_shape, scales);
    match mode {
        ResizeMode::Nearest => resize_nearest(x, in_shape, out, out_shape, &ratios, coord, nearest),
        ResizeMode::Linear => resize_linear(x, in_shape, out, out_shape, &ratios, coord),
    }
}

fn resize_nearest(
    x: &[f32],
    in_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
    ratios: &[(i64, i64)],
    coord: CoordTransform,
    nearest: NearestMode,
) {
    // Trailing unchanged axes are copied as one contiguous block.
    let rank = in_shape
        .iter()
        .zip(out_shape)
        .rposition(|(i, o)| i != o)
        .map_or(0, |a| a + 1);
    let block: usize = in_shape[rank..].iter().product();
    let maps: Vec<Vec<usize>> = (0..rank)
        .map(|a| {
            let (n_in, n_out) = (in_shape[a], out_shape[a]);
            if n_in == n_out {
                return (0..n_out).collect();
            }
            (0..n_out)
                .map(|o| {
                    nearest
                        .round(coord.source(o, n_in, n_out, ratios[a]))
                        .clamp(0.0, (n_in - 1) as f64) as usize
                })
                .collect()
        })
        .collect();
    let mut in_strides = vec![block; rank];
    for a in (0..rank.saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * in_shape[a + 1];
    }
    let ctx = Nearest {
        x,
        out_shape,
        maps: &maps,
        in_strides: &in_strides,
        block,
    };
    ctx.gather(0, 0, out);
}

/// The fixed part of a nearest gather, shared by every level of recursion.
struct Nearest<'a> {
    x: &'a [f32],
    out_shape: &'a [usize],
    /// Source index per output index, for the axes before the trailing
    /// unchanged block.
    maps: &'a [Vec<usize>],
    in_strides: &'a [usize],
    block: usize,
}

impl Nearest<'_> {
    /// Fills `out`, the output block of axes `axis..`, from input offset `at`.
    fn gather(&self, axis: usize, at: usize, out: &mut [f32]) {
        if axis == self.maps.len() {
            return out.copy_from_slice(&self.x[at..at + self.block]);
        }
        let map = &self.maps[axis];
        let stride = self.in_strides[axis];
        if axis + 1 == self.maps.len() && self.block == 1 {
            return self.gather_innermost(map, &self.x[at..], out);
        }
        let chunk = out.len() / self.out_shape[axis];
        for (o, &m) in map.iter().enumerate() {
            if o > 0 && map[o - 1] == m {
                // Upsampling repeats source rows: copy the row just written.
                out.copy_within((o - 1) * chunk..o * chunk, o * chunk);
            } else {
                self.gather(
                    axis + 1,
                    at + m * stride,
                    &mut out[o * chunk..(o + 1) * chunk],
                );
            }
        }
    }

    /// `out[o] = row[map[o]]`, filling runs of equal width when the map is an
    /// integer-factor upsampling (`map[o] == o / factor`).
    fn gather_innermost(&self, map: &[usize], row: &[f32], out: &mut [f32]) {
        let in_len = map.last().map_or(0, |&m| m + 1);
        let factor = map.len() / in_len.max(1);
        if factor > 1
            && map.len() == factor * in_len
            && map.iter().enumerate().all(|(o, &m)| m == o / factor)
        {
            for (run, &v) in out.chunks_exact_mut(factor).zip(row) {
                run.fill(v);
            }
        } else {
            out.iter_mut().zip(map).for_each(|(o, &m)| *o = row[m]);
        }
    }
}

/// Two source indices and the weight of the second.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    t: f32,
}

fn resize_linear(
    x: &[f32],
    in_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
    ratios: &[(i64, i64)],
    coord: CoordTransform,
) {
    let mut axes: Vec<usize> = (0..in_shape.len())
        .filter(|&a| in_shape[a] != out_shape[a])
        .collect();
    if axes.is_empty() {
        return out.copy_from_slice(x);
    }
    // Shrinking axes first keeps the intermediate tensors small.
    axes.sort_by(|&a, &b| {
        let ratio = |a: usize| out_shape[a] as f64 / in_shape[a] as f64;
        ratio(a).total_cmp(&ratio(b))
    });
    let mut shape = in_shape.to_vec();
    let mut current: Vec<f32> = Vec::new();
    for (k, &axis) in axes.iter().enumerate() {
        let (n_in, n_out) = (in_shape[axis], out_shape[axis]);
        let taps: Vec<Tap> = (0..n_out)
            .map(|o| {
                let src = coord.source(o, n_in, n_out, ratios[axis]).clamp(0.0, (n_in - 1) as f64);
                let i0 = src.floor() as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                Tap {
                    i0,
                    i1,
                    t: if i1 == i0 {
                        0.0
                    } else {
                        (src - i0 as f64) as f32
                    },
                }
            })
            .collect();
        let inner: usize = shape[axis + 1..].iter().product();
        shape[axis] = n_out;
        let src = if k == 0 { x } else { &current };
        if k + 1 == axes.len() {
            linear_pass(src, n_in, inner, &taps, out);
        } else {
            let mut next = vec![0.0; shape.iter().product()];
            linear_pass(src, n_in, inner, &taps, &mut next);
            current = next;
        }
    }
}

/// Interpolates the middle axis of `src` viewed as `[outer, n_in, inner]`
/// into `dst` viewed as `[outer, taps.len(), inner]`.
fn linear_pass(src: &[f32], n_in: usize, inner: usize, taps: &[Tap], dst: &mut [f32]) {
    let lerp = |a: f32, b: f32, t: f32| (1.0 - t) * a + t * b;
    for (s, d) in src
        .chunks_exact(n_in * inner)
        .zip(dst.chunks_exact_mut(taps.len() * inner))
    {
        if inner == 1 {
            d.iter_mut()
                .zip(taps)
                .for_each(|(v, tap)| *v = lerp(s[tap.i0], s[tap.i1], tap.t));
            continue;
        }
        for (row, tap) in d.chunks_exact_mut(inner).zip(taps) {
            let (r0, r1) = (&s[tap.i0 * inner..][..inner], &s[tap.i1 * inner..][..inner]);
            for ((v, &a), &b) in row.iter_mut().zip(r0).zip(r1) {
                *v = lerp(a, b, tap.t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const COORDS: [CoordTransform; 5] = [
        CoordTransform::HalfPixel,
        CoordTransform::PytorchHalfPixel,
        CoordTransform::AlignCorners,
        CoordTransform::Asymmetric,
        CoordTransform::TfHalfPixelForNn,
    ];
    const NEAREST: [NearestMode; 4] = [
        NearestMode::RoundPreferFloor,
        NearestMode::RoundPreferCeil,
        NearestMode::Floor,
        NearestMode::Ceil,
    ];

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn run(
        x: &[f32],
        in_shape: &[usize],
        out_shape: &[usize],
        mode: ResizeMode,
        coord: CoordTransform,
        nearest: NearestMode,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; out_shape.iter().product()];
        resize(x, in_shape, &mut out, out_shape, None, mode, coord, nearest);
        out
    }

    fn iota(n: usize) -> Vec<f32> {
        (1..=n).map(|v| v as f32).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-5),
            "\n got {got:?}\nwant {want:?}"
        );
    }

    // Expected values below are those of the ONNX backend tests
    // (onnx/backend/test/case/node/resize.py) whose sizes make scale = out / in.

    #[test]
    fn onnx_upsample_scales_nearest() {
        let got = run(
            &iota(4),
            &[1, 1, 2, 2],
            &[1, 1, 4, 6],
            ResizeMode::Nearest,
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
        );
        #[rustfmt::skip]
        let want = [1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3., 4., 4., 4.];
        assert_eq!(got, want);
    }

    #[test]
    fn onnx_upsample_sizes_nearest() {
        let got = run(
            &iota(4),
            &[1, 1, 2, 2],
            &[1, 1, 7, 8],
            ResizeMode::Nearest,
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
        );
        let top = [1., 1., 1., 1., 2., 2., 2., 2.];
        let bottom = [3., 3., 3., 3., 4., 4., 4., 4.];
        let want: Vec<f32> = [top; 4]
            .iter()
            .chain([bottom; 3].iter())
            .flatten()
            .copied()
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn onnx_downsample_scales_nearest() {
        let got = run(
            &iota(8),
            &[1, 1, 2, 4],
            &[1, 1, 1, 2],
            ResizeMode::Nearest,
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
        );
        assert_eq!(got, [1., 3.]);
    }

    /// 4x4 to 8x8 with each nearest_mode on its own transform; each row is
    /// one row of the ONNX expected output, repeated by the same column map.
    #[test]
    fn onnx_upsample_sizes_nearest_modes() {
        let cases = [
            // test_resize_upsample_sizes_nearest_ceil_half_pixel
            (
                CoordTransform::HalfPixel,
                NearestMode::Ceil,
                [0, 1, 1, 2, 2, 3, 3, 3],
            ),
            // test_resize_upsample_sizes_nearest_floor_align_corners
            (
                CoordTransform::AlignCorners,
                NearestMode::Floor,
                [0, 0, 0, 1, 1, 2, 2, 3],
            ),
            // test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric
            (
                CoordTransform::Asymmetric,
                NearestMode::RoundPreferCeil,
                [0, 1, 1, 2, 2, 3, 3, 3],
            ),
            // Hand-computed: (o + 0.5) / 2 rounded, ties down.
            (
                CoordTransform::TfHalfPixelForNn,
                NearestMode::RoundPreferFloor,
                [0, 1, 1, 2, 2, 3, 3, 3],
            ),
        ];
        for (coord, nearest, map) in cases {
            let got = run(
                &iota(16),
                &[1, 1, 4, 4],
                &[1, 1, 8, 8],
                ResizeMode::Nearest,
                coord,
                nearest,
            );
            let want: Vec<f32> = map
                .iter()
                .flat_map(|&r| map.iter().map(move |&c| (r * 4 + c + 1) as f32))
                .collect();
            assert_eq!(got, want, "{coord:?} {nearest:?}");
        }
    }

    #[test]
    fn onnx_upsample_scales_linear() {
        let got = run(
            &iota(4),
            &[1, 1, 2, 2],
            &[1, 1, 4, 4],
            ResizeMode::Linear,
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
        );
        #[rustfmt::skip]
        let want = [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0];
        assert_close(&got, &want);
    }

    #[test]
    fn onnx_upsample_scales_linear_align_corners() {
        let got = run(
            &iota(4),
            &[1, 1, 2, 2],
            &[1, 1, 4, 4],
            ResizeMode::Linear,
            CoordTransform::AlignCorners,
            NearestMode::RoundPreferFloor,
        );
        #[rustfmt::skip]
        let want = [
            1.0, 1.333_333_3, 1.666_666_7, 2.0,
            1.666_666_7, 2.0, 2.333_333_3, 2.666_666_7,
            2.333_333_3, 2.666_666_7, 3.0, 3.333_333_3,
            3.0, 3.333_333_3, 3.666_666_7, 4.0,
        ];
        assert_close(&got, &want);
    }

    #[test]
    fn onnx_downsample_sizes_linear_pytorch_half_pixel() {
        let got = run(
            &iota(16),
            &[1, 1, 4, 4],
            &[1, 1, 3, 1],
            ResizeMode::Linear,
            CoordTransform::PytorchHalfPixel,
            NearestMode::RoundPreferFloor,
        );
        assert_close(&got, &[1.666_666_7, 7.0, 12.333_333]);
    }

    #[test]
    fn nhwc_upsamples_like_nchw() {
        let nchw = iota(2 * 3 * 4);
        let nhwc: Vec<f32> = (0..3 * 4 * 2).map(|i| nchw[(i % 2) * 12 + i / 2]).collect();
        for mode in [ResizeMode::Nearest, ResizeMode::Linear] {
            let a = run(
                &nchw,
                &[1, 2, 3, 4],
                &[1, 2, 6, 8],
                mode,
                CoordTransform::HalfPixel,
                NearestMode::RoundPreferFloor,
            );
            let b = run(
                &nhwc,
                &[1, 3, 4, 2],
                &[1, 6, 8, 2],
                mode,
                CoordTransform::HalfPixel,
                NearestMode::RoundPreferFloor,
            );
            for i in 0..b.len() {
                assert_eq!(b[i], a[(i % 2) * 48 + i / 2], "{mode:?} at {i}");
            }
        }
    }

    /// Nearest source index from the exact fraction, in integers.
    fn exact_nearest(
        coord: CoordTransform,
        nearest: NearestMode,
        o: usize,
        n_in: usize,
        n_out: usize,
    ) -> usize {
        let (num, den) = coord.source_fraction(o, n_in, n_out, (n_out as i64, n_in as i64));
        let floor = num.div_euclid(den);
        let twice_rem = 2 * num.rem_euclid(den);
        let up = match nearest {
            NearestMode::RoundPreferFloor => twice_rem > den,
            NearestMode::RoundPreferCeil => twice_rem >= den,
            NearestMode::Floor => false,
            NearestMode::Ceil => twice_rem > 0,
        };
        (floor + up as i64).clamp(0, n_in as i64 - 1) as usize
    }

    /// Direct per-output reference: nearest by exact integer rounding, linear
    /// as the 2^k-corner multilinear sum in f64.
    fn naive(
        x: &[f32],
        in_shape: &[usize],
        out_shape: &[usize],
        mode: ResizeMode,
        coord: CoordTransform,
        nearest: NearestMode,
    ) -> Vec<f64> {
        let rank = in_shape.len();
        let total: usize = out_shape.iter().product();
        (0..total)
            .map(|flat| {
                let mut index = vec![0; rank];
                let mut rest = flat;
                for a in (0..rank).rev() {
                    index[a] = rest % out_shape[a];
                    rest /= out_shape[a];
                }
                // Per axis: (i0, i1, weight of i1).
                let taps: Vec<(usize, usize, f64)> = (0..rank)
                    .map(|a| {
                        let (o, n_in, n_out) = (index[a], in_shape[a], out_shape[a]);
                        if n_in == n_out {
                            (o, o, 0.0)
                        } else if mode == ResizeMode::Nearest {
                            let i = exact_nearest(coord, nearest, o, n_in, n_out);
                            (i, i, 0.0)
                        } else {
                            let (num, den) = coord.source_fraction(o, n_in, n_out, (n_out as i64, n_in as i64));
                            let s = (num as f64 / den as f64).clamp(0.0, (n_in - 1) as f64);
                            let i0 = s.floor() as usize;
                            (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
                        }
                    })
                    .collect();
                (0..1usize << rank)
                    .map(|corner| {
                        let (mut offset, mut weight) = (0, 1.0);
                        for a in 0..rank {
                            let (i0, i1, t) = taps[a];
                            let high = corner >> a & 1 == 1;
                            offset = offset * in_shape[a] + if high { i1 } else { i0 };
                            weight *= if high { t } else { 1.0 - t };
                        }
                        if weight == 0.0 {
                            0.0
                        } else {
                            weight * x[offset] as f64
                        }
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn matches_naive_on_random_shapes() {
        let mut rng = Rng(0x5eed);
        for case in 0..600 {
            let rank = 1 + rng.below(4);
            let in_shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(5)).collect();
            let out_shape: Vec<usize> = in_shape
                .iter()
                .map(|&n| match rng.below(4) {
                    0 => n,
                    1 => n * (2 + rng.below(2)),
                    _ => 1 + rng.below(9),
                })
                .collect();
            let x: Vec<f32> = (0..in_shape.iter().product())
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 100.0)
                .collect();
            for coord in COORDS {
                for nearest in NEAREST {
                    let got = run(
                        &x,
                        &in_shape,
                        &out_shape,
                        ResizeMode::Nearest,
                        coord,
                        nearest,
                    );
                    let want = naive(
                        &x,
                        &in_shape,
                        &out_shape,
                        ResizeMode::Nearest,
                        coord,
                        nearest,
                    );
                    assert!(
                        got.iter().zip(&want).all(|(&g, &w)| g as f64 == w),
                        "case {case} nearest {coord:?} {nearest:?} {in_shape:?} -> {out_shape:?}\n got {got:?}\nwant {want:?}"
                    );
                }
                let got = run(
                    &x,
                    &in_shape,
                    &out_shape,
                    ResizeMode::Linear,
                    coord,
                    NearestMode::Floor,
                );
                let want = naive(
                    &x,
                    &in_shape,
                    &out_shape,
                    ResizeMode::Linear,
                    coord,
                    NearestMode::Floor,
                );
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() < 1e-4, "case {case} linear {coord:?} {in_shape:?} -> {out_shape:?} at {i}: {g} vs {w}");
                }
            }
        }
    }
}
