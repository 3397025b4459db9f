#!/usr/bin/env bash
# Runs the crate's tests compiled to wasm32 in headless Chromium (wasm-bindgen-test,
# run_in_browser), through wasm-pack with Debian's chromedriver and crate/webdriver.json.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/wasm-env.sh
# wasm-bindgen-test-runner gives each test binary 20 s in the browser by default: too short
# for tests on the real models. Override with WASM_BINDGEN_TEST_TIMEOUT (seconds).
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
chromedriver=$(command -v chromedriver) || { echo "chromedriver is missing: run make setup" >&2; exit 1; }
echo "[test-wasm] wasm-pack test --headless --chrome ($WASM_TOOLCHAIN toolchain${WASM_CARGO_FLAGS[*]:+, ${WASM_CARGO_FLAGS[*]}})"
exec wasm-pack --log-level warn test --headless --chrome --chromedriver "$chromedriver" crate "${WASM_CARGO_FLAGS[@]}" "$@"
