//! Shared by the integration tests: the shipped models and images (compiled
//! in, so the same tests run natively and in the browser) and tract, the
//! FP32 oracle.
#![allow(dead_code)]

pub mod onnx_builder;

use quant_playground::preprocess::{preprocess, Layout, Preprocess};
use tract_onnx::pb;
use tract_onnx::prelude::*;

pub const EFFICIENTNET: &[u8] = include_bytes!("../../../models/efficientnet_lite0.onnx");
pub const BLAZEFACE: &[u8] = include_bytes!("../../../models/blazeface_front_128.onnx");
pub const PPOCR: &[u8] = include_bytes!("../../../models/ppocr_cls_mobile_v2.onnx");

pub const IMAGES: &[(&str, &[u8])] = &[
    ("astronaut.png", include_bytes!("../../../models/images/astronaut.png")),
    ("coffee.png", include_bytes!("../../../models/images/coffee.png")),
    ("chelsea.png", include_bytes!("../../../models/images/chelsea.png")),
    ("rocket.jpg", include_bytes!("../../../models/images/rocket.jpg")),
    ("text.png", include_bytes!("../../../models/images/text.png")),
];

pub fn rgba(bytes: &[u8]) -> (Vec<u8>, usize, usize) {
    let img = image::load_from_memory(bytes).expect("shipped image decodes").to_rgba8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    (img.into_raw(), w, h)
}

pub fn image_tensor(bytes: &[u8], preset: &str, w: usize, h: usize, layout: Layout) -> Vec<f32> {
    let (px, iw, ih) = rgba(bytes);
    preprocess(&px, iw, ih, &Preprocess::preset(preset, w, h, layout).unwrap()).unwrap()
}

/// tract's FP32 execution of the same file, with the two fixes tract-onnx
/// 0.23.9 needs on real exports (see shared/notes/tract-notes.md).
pub fn tract_run(bytes: &[u8], shape: &[usize], input: &[f32]) -> Vec<Vec<f32>> {
    let onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_output_types(true).with_ignore_value_info(true);
    let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).expect("tract parses");
    for node in proto.graph.as_mut().unwrap().node.iter_mut() {
        if node.op_type == "ConstantOfShape" && !node.attribute.iter().any(|a| a.name == "value") {
            node.attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(pb::TensorProto { dims: vec![1], data_type: 1, float_data: vec![0.0], ..Default::default() }),
                ..Default::default()
            });
        }
    }
    let model =
        onnx.model_for_proto_model(&proto).unwrap().with_input_fact(0, f32::fact(shape).into()).unwrap().into_optimized().unwrap().into_runnable().unwrap();
    let x = Tensor::from_shape(shape, input).unwrap();
    let outs = model.run(tvec!(x.into())).unwrap();
    outs.iter().map(|t| t.to_plain_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}

/// max |a - b| / max |b|
pub fn relative_error(ours: &[f32], oracle: &[f32]) -> f32 {
    assert_eq!(ours.len(), oracle.len());
    let err = ours.iter().zip(oracle).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = oracle.iter().map(|b| b.abs()).fold(0f32, f32::max);
    err / scale.max(f32::MIN_POSITIVE)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}
