//! The corpus of broken files in tests/corpus/: each must give an error that
//! names the problem, never a panic. The page's end-to-end test drops some of
//! the same files.

use quant_playground::onnx::ImportOptions;
use quant_playground::Model;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const CORPUS: &[(&str, &[u8], &str)] = &[
    ("empty.onnx", include_bytes!("../../tests/corpus/empty.onnx"), "not an ONNX model: the file is empty"),
    ("text.onnx", include_bytes!("../../tests/corpus/text.onnx"), "not an ONNX model: protobuf decoding failed"),
    ("image-renamed.onnx", include_bytes!("../../tests/corpus/image-renamed.onnx"), "not an ONNX model"),
    ("truncated-blazeface.onnx", include_bytes!("../../tests/corpus/truncated-blazeface.onnx"), "truncated"),
    ("truncated-efficientnet.onnx", include_bytes!("../../tests/corpus/truncated-efficientnet.onnx"), "truncated"),
];

#[test]
fn every_broken_file_gives_its_named_error() {
    for (name, bytes, expected) in CORPUS {
        let err = match Model::load(bytes, &ImportOptions::default()) {
            Ok(_) => panic!("{name}: loaded without error"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{name}: error '{err}' does not contain '{expected}'");
    }
}

#[test]
fn size_limit_is_enforced_before_parsing() {
    let options = ImportOptions { max_bytes: 100, ..ImportOptions::default() };
    let bytes = include_bytes!("../../tests/corpus/truncated-blazeface.onnx");
    let err = Model::load(bytes, &options).err().expect("over the limit").to_string();
    assert_eq!(err, "the model is too large: 150000 bytes (limit 100 bytes)");
}

#[test]
fn wrong_input_sizes_and_unknown_inputs_are_named() {
    let bytes = include_bytes!("../../models/blazeface_front_128.onnx");
    let model = Model::load(bytes, &ImportOptions::default()).unwrap();
    let err = model.run(&[&[0.0; 10]]).err().expect("wrong size").to_string();
    assert_eq!(err, "input 'input:0': has 10 values, shape [1, 128, 128, 3] needs 49152");
    let err = model.run_named(&[("nope".into(), vec![0.0; 49152])]).err().expect("wrong name").to_string();
    assert!(err.contains("'input:0'") && err.contains("was not given"), "{err}");
    let mut options = ImportOptions::default();
    options.input_shapes.insert("input:0".into(), vec![1, 3, 128, 128]);
    let err = Model::load(bytes, &options).err().expect("fixed dim changed").to_string();
    assert!(err.starts_with("input 'input:0': dimension 1 is fixed to 128 by the model"), "{err}");
}
