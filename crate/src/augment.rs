//! Views of an image: random crops, flips, scales and colour changes of an RGBA frame, made
//! before preprocessing. Fidelity is measured on many such views of a few images, and QAT
//! distills on them, so that neither sees the same pixels twice.
//!
//! A view is made on the image, before preprocessing, so that it is right for every fit,
//! layout and normalisation: the page keeps the images of its kept calibration frames for
//! this (`Session::training_frame`). A frame that only exists as a tensor (a .npy) can only be
//! mirrored ([`mirror_width`]).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// One view: a crop (relative to the image), a horizontal flip, brightness and contrast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    /// Left, top, width, height as fractions of the image, inside `[0, 1]`.
    pub crop: [f32; 4],
    pub flip: bool,
    /// Added to every channel, on the 0..255 scale.
    pub brightness: f32,
    /// Multiplies the distance of each channel from 128.
    pub contrast: f32,
}

/// How strongly [`View::random`] varies an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Augment {
    /// Smallest crop area as a fraction of the image (largest is 1).
    pub min_area: f32,
    /// Aspect ratios of the crop box, as a `[low, high]` range of width / height.
    pub aspect: [f32; 2],
    pub flip: bool,
    /// Brightness offsets up to this, either way (0..255 scale).
    pub brightness: f32,
    /// Contrast factors in `[1 - contrast, 1 + contrast]`.
    pub contrast: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { min_area: 0.25, aspect: [0.75, 1.333], flip: true, brightness: 32.0, contrast: 0.25 }
    }
}

impl View {
    /// The whole image, unchanged.
    pub fn identity() -> View {
        View { crop: [0.0, 0.0, 1.0, 1.0], flip: false, brightness: 0.0, contrast: 1.0 }
    }

    pub fn random(rng: &mut Rng, a: &Augment) -> View {
        let area = rng.uniform(a.min_area.clamp(0.01, 1.0) as f64, 1.0);
        let (lo, hi) = (a.aspect[0].max(0.05).ln() as f64, a.aspect[1].max(a.aspect[0]).max(0.05).ln() as f64);
        let aspect = rng.uniform(lo, hi + 1e-9).exp();
        let w = (area * aspect).sqrt().min(1.0);
        let h = (area / aspect).sqrt().min(1.0);
        let (x, y) = (rng.uniform(0.0, 1.0 - w + 1e-9), rng.uniform(0.0, 1.0 - h + 1e-9));
        View {
            crop: [x as f32, y as f32, w as f32, h as f32],
            flip: a.flip && rng.unit() < 0.5,
            brightness: rng.uniform(-a.brightness as f64, a.brightness as f64 + 1e-9) as f32,
            contrast: rng.uniform(1.0 - a.contrast as f64, 1.0 + a.contrast as f64 + 1e-9) as f32,
        }
    }

    /// The view of an RGBA image as a new RGBA image (the crop at the image's resolution;
    /// preprocessing then resizes it). Never empty: a crop is at least one pixel.
    pub fn apply(&self, rgba: &[u8], width: usize, height: usize) -> (Vec<u8>, usize, usize) {
        let x0 = ((self.crop[0].clamp(0.0, 1.0) * width as f32) as usize).min(width.saturating_sub(1));
        let y0 = ((self.crop[1].clamp(0.0, 1.0) * height as f32) as usize).min(height.saturating_sub(1));
        let w = ((self.crop[2].clamp(0.0, 1.0) * width as f32).round() as usize).clamp(1, width - x0);
        let h = ((self.crop[3].clamp(0.0, 1.0) * height as f32).round() as usize).clamp(1, height - y0);
        // The colour change of a channel value, once for each of the 256: a lookup per byte.
        // Evaluated per byte, the float expression (with `round`, a library call in wasm) cost
        // about 4 ms a 410x410 crop in V8; the table took BlazeFace's QAT step from 22.5 to
        // 19.4 ms a frame (`node bench/run.mjs qat`).
        let tone: [u8; 256] = core::array::from_fn(|c| self.tone(c as u8));
        let mut out = vec![0u8; w * h * 4];
        for (row, y) in out.chunks_exact_mut(w * 4).zip(y0..) {
            let src = &rgba[(y * width + x0) * 4..][..w * 4];
            for (i, o) in row.chunks_exact_mut(4).enumerate() {
                let x = if self.flip { w - 1 - i } else { i };
                let p = &src[x * 4..][..4];
                o.copy_from_slice(&[tone[p[0] as usize], tone[p[1] as usize], tone[p[2] as usize], p[3]]);
            }
        }
        (out, w, h)
    }

    /// One channel value after the brightness and contrast change, on the 0..255 scale.
    fn tone(&self, c: u8) -> u8 {
        let v = (c as f32 - 128.0) * self.contrast + 128.0 + self.brightness;
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// The views a training run draws from: up to `size` pairs (source, view), a random view of
/// each source of `0..sources` in turn (every source once, in a random order, before any
/// twice), made as they are first drawn, then served again in epochs (every view once per
/// epoch, in a new random order). A run of N frames on a pool of P views meets each view N / P
/// times, so the float teacher's targets of a view, which the trainer caches, are paid for
/// once rather than N / P times (`train::qat`, the teacher cache). A pool larger than the run
/// holds only the views it drew, each of them new; one smaller than `sources` (a run of a
/// few steps) leaves some sources out.
#[derive(Clone, Debug)]
pub struct ViewPool {
    sources: usize,
    size: usize,
    augment: Augment,
    entries: Vec<(usize, View)>,
    /// Sources of the current turn, in their order.
    turn: Vec<usize>,
    /// The current epoch's order of `entries`, once all of them exist.
    order: Vec<usize>,
    next: usize,
}

/// `0..n` in a random order (Fisher-Yates).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

impl ViewPool {
    /// A pool of `size` views (at least 1) of `sources` sources (none when 0:
    /// [`draw`](Self::draw) then has nothing to give, and callers refuse that first).
    pub fn new(sources: usize, size: usize, augment: &Augment) -> ViewPool {
        ViewPool { sources, size: size.max(1), augment: augment.clone(), entries: Vec::new(), turn: Vec::new(), order: Vec::new(), next: 0 }
    }

    /// The views the pool holds at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The next (source, view): a new view while the pool is not full, else the next of the
    /// epoch (a new epoch in a new order). `None` only without sources.
    pub fn draw(&mut self, rng: &mut Rng) -> Option<&(usize, View)> {
        if self.sources == 0 {
            return None;
        }
        let k = self.entries.len();
        if k < self.size {
            if k % self.sources == 0 {
                self.turn = shuffled(self.sources, rng);
            }
            self.entries.push((self.turn[k % self.sources], View::random(rng, &self.augment)));
            return self.entries.last();
        }
        if self.next == self.order.len() {
            self.order = shuffled(self.entries.len(), rng);
            self.next = 0;
        }
        self.next += 1;
        Some(&self.entries[self.order[self.next - 1]])
    }
}

/// An image tensor mirrored left-right (NCHW: width last; NHWC: width before the channels);
/// tensors of other shapes are returned unchanged.
pub fn mirror_width(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (w, inner) = match shape {
        [_, 3, _, w] => (*w, 1),
        [_, _, w, 3] => (*w, 3),
        _ => return x.to_vec(),
    };
    let mut out = vec![0f32; x.len()];
    for (row_in, row_out) in x.chunks(w * inner).zip(out.chunks_mut(w * inner)) {
        for i in 0..w {
            row_out[i * inner..(i + 1) * inner].copy_from_slice(&row_in[(w - 1 - i) * inner..(w - i) * inner]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_view_is_the_image_and_flip_mirrors_rows() {
        let rgba: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let (same, w, h) = View::identity().apply(&rgba, 3, 2);
        assert_eq!((same.as_slice(), w, h), (rgba.as_slice(), 3, 2));
        let flipped = View { flip: true, ..View::identity() }.apply(&rgba, 3, 2).0;
        assert_eq!(&flipped[..4], &rgba[8..12]);
        assert_eq!(&flipped[12..16], &rgba[20..24]);
    }

    /// The view pixel by pixel, as its definition reads: the crop, mirrored when flipped, each
    /// colour channel through the brightness and contrast change, alpha kept.
    fn reference(v: &View, rgba: &[u8], width: usize, height: usize) -> Vec<u8> {
        let (_, w, h) = v.apply(rgba, width, height);
        let x0 = ((v.crop[0].clamp(0.0, 1.0) * width as f32) as usize).min(width - 1);
        let y0 = ((v.crop[1].clamp(0.0, 1.0) * height as f32) as usize).min(height - 1);
        let mut out = Vec::new();
        for y in y0..y0 + h {
            for i in 0..w {
                let x = if v.flip { x0 + w - 1 - i } else { x0 + i };
                let p = &rgba[(y * width + x) * 4..][..4];
                for &c in &p[..3] {
                    let t = (c as f32 - 128.0) * v.contrast + 128.0 + v.brightness;
                    out.push(t.round().clamp(0.0, 255.0) as u8);
                }
                out.push(p[3]);
            }
        }
        out
    }

    #[test]
    fn views_equal_their_pixel_by_pixel_definition() {
        let mut rng = Rng::seeded(11);
        let (width, height) = (41, 29);
        let rgba: Vec<u8> = (0..width * height * 4).map(|_| rng.int(0, 255) as u8).collect();
        let (strong, usual) = (Augment { brightness: 200.0, contrast: 0.9, ..Augment::default() }, Augment::default());
        for k in 0..300 {
            let v = View::random(&mut rng, if k % 2 == 0 { &strong } else { &usual });
            assert_eq!(v.apply(&rgba, width, height).0, reference(&v, &rgba, width, height), "{v:?}");
        }
        // Ties of the rounding (half steps) and both ends of the clamp.
        for (brightness, contrast) in [(0.5, 1.0), (-0.5, 1.0), (300.0, 1.0), (-300.0, 1.0), (0.0, 1.5), (0.25, 0.5)] {
            let v = View { brightness, contrast, ..View::identity() };
            assert_eq!(v.apply(&rgba, width, height).0, reference(&v, &rgba, width, height), "{v:?}");
        }
    }

    #[test]
    fn a_pool_serves_each_view_once_per_epoch() {
        let mut rng = Rng::seeded(11);
        let mut pool = ViewPool::new(5, 7, &Augment::default());
        let draw = |pool: &mut ViewPool, rng: &mut Rng| pool.draw(rng).unwrap().clone();
        // The first epoch makes the views: every source once before any twice.
        let entries: Vec<(usize, View)> = (0..7).map(|_| draw(&mut pool, &mut rng)).collect();
        assert_eq!(entries, pool.entries);
        let mut first: Vec<usize> = entries[..5].iter().map(|(s, _)| *s).collect();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert!(entries[5..].iter().all(|(s, _)| *s < 5) && entries[5].0 != entries[6].0);
        assert!(entries.windows(2).all(|w| w[0].1 != w[1].1), "the views differ");
        // Then every view once per epoch, each epoch in a new order.
        let mut orders = Vec::new();
        for _ in 0..3 {
            let mut epoch: Vec<usize> = (0..7).map(|_| {
                let e = draw(&mut pool, &mut rng);
                entries.iter().position(|x| *x == e).unwrap()
            }).collect();
            orders.push(epoch.clone());
            epoch.sort();
            assert_eq!(epoch, (0..7).collect::<Vec<_>>(), "every view once per epoch");
        }
        assert!(orders[0] != orders[1] || orders[1] != orders[2], "epochs are reshuffled");
        assert_eq!(pool.entries.len(), 7);
        assert!(ViewPool::new(0, 4, &Augment::default()).draw(&mut rng).is_none());
    }

    #[test]
    fn random_views_stay_inside_the_image() {
        let mut rng = Rng::seeded(7);
        let rgba = vec![100u8; 37 * 23 * 4];
        for _ in 0..200 {
            let v = View::random(&mut rng, &Augment::default());
            let (px, w, h) = v.apply(&rgba, 37, 23);
            assert!(w >= 1 && h >= 1 && w <= 37 && h <= 23);
            assert_eq!(px.len(), w * h * 4);
            assert!(v.crop[0] + v.crop[2] <= 1.0 + 1e-6 && v.crop[1] + v.crop[3] <= 1.0 + 1e-6);
        }
    }
}
