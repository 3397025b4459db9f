//! Image preprocessing: an RGBA frame (webcam, decoded image) to the model's
//! input tensor. One implementation for the page and the CLI, so both feed
//! the model identical numbers.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// How the frame is fitted to the input size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Fit {
    /// Resize to the input size, ignoring the aspect ratio.
    Stretch,
    /// Resize so the short side is `short_side / crop` times the input side, then crop the centre
    /// (ImageNet style: resize to 256, crop 224 is `crop = 0.875`).
    CenterCrop { crop: f32 },
    /// Keep the aspect ratio, fit inside, pad the rest with `pad` (YOLO letterbox).
    Letterbox { pad: f32 },
    /// Keep the aspect ratio at full height, pad on the right with `pad` (text-line crops).
    PadRight { pad: f32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preprocess {
    pub width: usize,
    pub height: usize,
    pub layout: Layout,
    pub bgr: bool,
    /// Per channel, on the 0..255 pixel scale: value = (pixel - mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub fit: Fit,
}

impl Preprocess {
    /// A named preset at the given input size.
    pub fn preset(name: &str, width: usize, height: usize, layout: Layout) -> Result<Preprocess> {
        let base = Preprocess { width, height, layout, bgr: false, mean: [0.0; 3], std: [1.0; 3], fit: Fit::Stretch };
        Ok(match name {
            // torchvision's ImageNet normalisation, resize 256 / crop 224.
            "imagenet" => Preprocess {
                mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
                std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
                fit: Fit::CenterCrop { crop: 0.875 },
                ..base
            },
            // The original EfficientNet-Lite / TF-Lite classifiers: (x - 127) / 128.
            "lite" => Preprocess { mean: [127.0; 3], std: [128.0; 3], fit: Fit::CenterCrop { crop: 0.875 }, ..base },
            // Inputs in [-1, 1] (MediaPipe models such as BlazeFace).
            "signed" => Preprocess { mean: [127.5; 3], std: [127.5; 3], ..base },
            // Inputs in [0, 1], letterboxed (YOLO family).
            "yolo" => Preprocess { std: [255.0; 3], fit: Fit::Letterbox { pad: 114.0 }, ..base },
            // PaddleOCR text-line classifier: BGR, [-1, 1], height fit, padded right.
            "ppocr" => Preprocess { mean: [127.5; 3], std: [127.5; 3], bgr: true, fit: Fit::PadRight { pad: 127.5 }, ..base },
            // Raw 0..255 values.
            "raw" => base,
            other => return Err(Error::Invalid(format!("unknown preset '{other}' (imagenet, lite, signed, yolo, ppocr, raw)"))),
        })
    }

    /// The preset names, for help texts and the page.
    pub const PRESETS: &'static [&'static str] = &["imagenet", "lite", "signed", "yolo", "ppocr", "raw"];

    /// A guess from an input shape: layout from where the 3 channels are.
    pub fn guess(shape: &[usize]) -> Option<Preprocess> {
        if shape.len() != 4 {
            return None;
        }
        let (layout, h, w) = if shape[1] == 3 {
            (Layout::Nchw, shape[2], shape[3])
        } else if shape[3] == 3 {
            (Layout::Nhwc, shape[1], shape[2])
        } else {
            return None;
        };
        Preprocess::preset("imagenet", w, h, layout).ok()
    }

    /// The tensor shape this produces (batch 1).
    pub fn shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::Nchw => vec![1, 3, self.height, self.width],
            Layout::Nhwc => vec![1, self.height, self.width, 3],
        }
    }
}

/// Bilinear sample of channel `c` at pixel-centre coordinates (x, y).
fn sample(rgba: &[u8], w: usize, h: usize, x: f32, y: f32, c: usize) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx: usize, yy: usize| rgba[(yy * w + xx) * 4 + c] as f32;
    let top = p(x0, y0) + (p(x1, y0) - p(x0, y0)) * fx;
    let bottom = p(x0, y1) + (p(x1, y1) - p(x0, y1)) * fx;
    top + (bottom - top) * fy
}

/// The region of the source frame a destination pixel maps to: for each
/// output pixel, source coordinates (or None where it is padding).
struct Mapping {
    scale_x: f32,
    scale_y: f32,
    offset_x: f32,
    offset_y: f32,
    /// Destination area covered by the image (the rest is padding).
    cover_w: usize,
    cover_h: usize,
    pad: f32,
}

fn mapping(p: &Preprocess, w: usize, h: usize) -> Mapping {
    let (tw, th) = (p.width as f32, p.height as f32);
    let (sw, sh) = (w as f32, h as f32);
    match p.fit {
        Fit::Stretch => Mapping { scale_x: sw / tw, scale_y: sh / th, offset_x: 0.0, offset_y: 0.0, cover_w: p.width, cover_h: p.height, pad: 0.0 },
        Fit::CenterCrop { crop } => {
            // Scale so the short side covers the target side / crop, then take the centre.
            let s = (tw / sw).max(th / sh) / crop.clamp(0.05, 1.0);
            let (cw, ch) = (tw / s, th / s);
            Mapping { scale_x: 1.0 / s, scale_y: 1.0 / s, offset_x: (sw - cw) / 2.0, offset_y: (sh - ch) / 2.0, cover_w: p.width, cover_h: p.height, pad: 0.0 }
        }
        Fit::Letterbox { pad } => {
            let s = (tw / sw).min(th / sh);
            let (cw, ch) = ((sw * s).round() as usize, (sh * s).round() as usize);
            // Centre the image: negative offsets shift it right/down.
            let ox = (p.width - cw.min(p.width)) as f32 / 2.0;
            let oy = (p.height - ch.min(p.height)) as f32 / 2.0;
            Mapping { scale_x: 1.0 / s, scale_y: 1.0 / s, offset_x: -ox / s, offset_y: -oy / s, cover_w: p.width, cover_h: p.height, pad }
        }
        Fit::PadRight { pad } => {
            let s = th / sh;
            let cw = ((sw * s).ceil() as usize).min(p.width);
            Mapping { scale_x: 1.0 / s, scale_y: 1.0 / s, offset_x: 0.0, offset_y: 0.0, cover_w: cw, cover_h: p.height, pad }
        }
    }
}

/// Converts an RGBA frame of `w` x `h` pixels to the model's input tensor.
pub fn preprocess(rgba: &[u8], w: usize, h: usize, p: &Preprocess) -> Result<Vec<f32>> {
    if w == 0 || h == 0 || rgba.len() != w * h * 4 {
        return Err(Error::Invalid(format!("frame of {w}x{h} pixels needs {} RGBA bytes, got {}", w * h * 4, rgba.len())));
    }
    if p.width == 0 || p.height == 0 {
        return Err(Error::Invalid("preprocessing target size is zero".into()));
    }
    let m = mapping(p, w, h);
    let (tw, th) = (p.width, p.height);
    let mut out = vec![0f32; 3 * tw * th];
    for y in 0..th {
        for x in 0..tw {
            let sx = m.offset_x + (x as f32 + 0.5) * m.scale_x - 0.5;
            let sy = m.offset_y + (y as f32 + 0.5) * m.scale_y - 0.5;
            let inside = x < m.cover_w && y < m.cover_h && sx > -1.0 && sy > -1.0 && sx < w as f32 && sy < h as f32;
            for c in 0..3 {
                let src = if p.bgr { 2 - c } else { c };
                let v = if inside { sample(rgba, w, h, sx, sy, src) } else { m.pad };
                let v = (v - p.mean[c]) / p.std[c];
                let idx = match p.layout {
                    Layout::Nchw => (c * th + y) * tw + x,
                    Layout::Nhwc => (y * tw + x) * 3 + c,
                };
                out[idx] = v;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn frame(w: usize, h: usize) -> Vec<u8> {
        (0..w * h).flat_map(|i| [(i % 251) as u8, (i * 7 % 253) as u8, (i * 13 % 255) as u8, 255]).collect()
    }

    #[test]
    fn identity_size_stretch_reproduces_pixels() {
        let (w, h) = (5, 3);
        let rgba = frame(w, h);
        let p = Preprocess::preset("raw", w, h, Layout::Nhwc).unwrap();
        let t = preprocess(&rgba, w, h, &p).unwrap();
        for i in 0..w * h {
            for c in 0..3 {
                assert_eq!(t[i * 3 + c], rgba[i * 4 + c] as f32);
            }
        }
    }

    #[test]
    fn layouts_and_bgr_agree() {
        let (w, h) = (9, 7);
        let rgba = frame(w, h);
        let nchw = Preprocess { bgr: true, ..Preprocess::preset("lite", 4, 4, Layout::Nchw).unwrap() };
        let nhwc = Preprocess { layout: Layout::Nhwc, ..nchw.clone() };
        let a = preprocess(&rgba, w, h, &nchw).unwrap();
        let b = preprocess(&rgba, w, h, &nhwc).unwrap();
        for c in 0..3 {
            for i in 0..16 {
                assert_eq!(a[c * 16 + i], b[i * 3 + c]);
            }
        }
    }

    #[test]
    fn letterbox_and_pad_right_pad_outside_the_image() {
        let rgba = vec![200u8; 8 * 4 * 4];
        let p = Preprocess::preset("raw", 8, 8, Layout::Nchw).unwrap();
        let lb = preprocess(&rgba, 8, 4, &Preprocess { fit: Fit::Letterbox { pad: 114.0 }, ..p.clone() }).unwrap();
        assert_eq!(lb[0], 114.0); // top row is padding
        assert_eq!(lb[4 * 8 + 4], 200.0); // centre is image
        let pr = preprocess(&rgba, 8, 4, &Preprocess { fit: Fit::PadRight { pad: 0.0 }, ..Preprocess::preset("raw", 32, 8, Layout::Nchw).unwrap() }).unwrap();
        assert_eq!(pr[0], 200.0);
        assert_eq!(pr[31], 0.0);
    }

    #[test]
    fn bad_frames_are_errors() {
        let p = Preprocess::preset("raw", 4, 4, Layout::Nchw).unwrap();
        assert!(preprocess(&[0; 10], 2, 2, &p).is_err());
        assert!(preprocess(&[], 0, 0, &p).is_err());
        assert!(Preprocess::preset("nope", 4, 4, Layout::Nchw).is_err());
    }
}
