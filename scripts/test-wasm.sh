#!/usr/bin/env bash
# Runs the crate's tests compiled to wasm32 in headless Chromium (wasm-bindgen-test,
# run_in_browser), through wasm-pack with Debian's chromedriver and crate/webdriver.json.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/wasm-env.sh
chromedriver=$(command -v chromedriver) || { echo "chromedriver is missing: run make setup" >&2; exit 1; }
echo "[test-wasm] wasm-pack test --headless --chrome ($WASM_TOOLCHAIN toolchain${WASM_CARGO_FLAGS[*]:+, ${WASM_CARGO_FLAGS[*]}})"
exec wasm-pack --log-level warn test --headless --chrome --chromedriver "$chromedriver" crate "${WASM_CARGO_FLAGS[@]}" "$@"
