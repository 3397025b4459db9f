//! The wasm-bindgen API: the only module that touches JavaScript. Everything
//! it exposes returns `Result<T, JsError>` so JavaScript receives a real
//! `Error` with the message of our [`crate::Error`].

use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    // Only shows what slipped through: every user-caused failure is an Error.
    console_error_panic_hook::set_once();
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EngineInfo {
    version: &'static str,
    simd128: bool,
}

/// Version and build features of the engine, shown by the page once loaded.
#[wasm_bindgen(js_name = engineInfo)]
pub fn engine_info() -> Result<JsValue, JsError> {
    let info = EngineInfo {
        version: env!("CARGO_PKG_VERSION"),
        simd128: cfg!(target_feature = "simd128"),
    };
    Ok(serde_wasm_bindgen::to_value(&info)?)
}
