//! Browser tests of the wasm API, in headless Chromium:
//! `wasm-pack test --headless --chrome crate` (`make test` runs it through scripts/test-wasm.sh).
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).expect("a plain object")
}

#[wasm_bindgen_test]
fn engine_info_reports_the_crate_version_and_simd128() {
    let info = quant_playground::api::engine_info().map_err(JsValue::from).expect("engineInfo()");
    assert_eq!(get(&info, "version").as_string().as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        get(&info, "simd128").as_bool(),
        Some(true),
        "the wasm must be built with +simd128 (.cargo/config.toml)"
    );
}
