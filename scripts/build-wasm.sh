#!/usr/bin/env bash
# Builds the engine for the browser: crate/ -> www/pkg/ (ES module + .wasm, SIMD128).
#   scripts/build-wasm.sh [release|dev]     (default: release)
# release also runs wasm-opt -O3 from npm's binaryen (package.json), not wasm-pack's own
# (off in crate/Cargo.toml: it would download binaryen) nor Debian's binaryen 108, which
# writes a broken module: it points the `__wbindgen_externrefs` export at the funcref table
# and the page fails with "WebAssembly.Table.set(): Argument 1 is invalid for table".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
. scripts/wasm-env.sh

mode=${1:-release}
case "$mode" in
  release|dev) ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 2 ;;
esac

echo "[build-wasm] wasm-pack build --$mode ($WASM_TOOLCHAIN toolchain${WASM_CARGO_FLAGS[*]:+, ${WASM_CARGO_FLAGS[*]}})"
start=$(date +%s)
wasm-pack --log-level warn build --"$mode" --target web --no-pack --out-dir ../www/pkg crate "${WASM_CARGO_FLAGS[@]}"

wasm=www/pkg/quant_playground_bg.wasm
[ -f "$wasm" ] || { echo "[build-wasm] $wasm was not produced" >&2; exit 1; }
if [ "$mode" = release ]; then
  wasm_opt="$ROOT/node_modules/.bin/wasm-opt"
  [ -x "$wasm_opt" ] || { echo "[build-wasm] $wasm_opt is missing: run make setup (npm ci)" >&2; exit 1; }
  # The features rustc enables by default for wasm32-unknown-unknown, plus SIMD128.
  opt_flags=(-O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext
    --enable-mutable-globals --enable-multivalue --enable-reference-types)
  binaryen=$("$wasm_opt" --version | awk '{print $3}')
  # wasm-opt takes minutes on the full engine (binaryen.js is single-threaded): its output is
  # kept per input, so a rebuild that changed nothing (make serve, test, bench) reuses it.
  cache="$ROOT/target/wasm-opt-cache"
  key=$( { sha256sum <"$wasm"; echo "$binaryen ${opt_flags[*]}"; } | sha256sum | cut -c1-32)
  if [ -f "$cache/$key.wasm" ]; then
    echo "[build-wasm] wasm-opt: input unchanged, optimised output reused (target/wasm-opt-cache)"
    cp "$cache/$key.wasm" "$wasm"
  else
    echo "[build-wasm] wasm-opt ${opt_flags[0]} (binaryen $binaryen)"
    "$wasm_opt" "${opt_flags[@]}" "$wasm" -o "$wasm.opt"
    mv "$wasm.opt" "$wasm"
    mkdir -p "$cache"
    rm -f "$cache"/*.wasm
    cp "$wasm" "$cache/$key.wasm"
  fi
fi
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
awk -v f="$wasm" -v r="$raw" -v g="$gz" -v t="$(( $(date +%s) - start ))" \
  'BEGIN { printf "[build-wasm] %s: %d bytes (%.2f MB), gzip -9 %d bytes (%.2f MB), %ds\n", f, r, r / 1e6, g, g / 1e6, t }'
