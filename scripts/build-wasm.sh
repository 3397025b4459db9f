#!/usr/bin/env bash
# Builds the engine for the browser, in two variants from the same code:
#   www/pkg/quant_playground.js + quant_playground_bg.wasm   SIMD128 (every browser with SIMD)
#   www/pkg/quant_playground_relaxed_bg.wasm                  SIMD128 + relaxed SIMD
# The worker (www/engine-build.js) loads the relaxed one where the browser validates relaxed
# SIMD; the int8 GEMM then uses the relaxed dot where it is exact (crate/src/kernels/int8/
# relaxed.rs). Both share one JavaScript glue, which this script checks.
#   scripts/build-wasm.sh [release|dev]     (default: release)
# release also runs wasm-opt -O3 from npm's binaryen (package.json), not wasm-pack's own
# (off in crate/Cargo.toml: it would download binaryen) nor Debian's binaryen 108, which
# writes a broken module: it points the `__wbindgen_externrefs` export at the funcref table
# and the page fails with "WebAssembly.Table.set(): Argument 1 is invalid for table".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

mode=${1:-release}
case "$mode" in
  release|dev) ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 2 ;;
esac

# build VARIANT OUT_DIR: wasm-pack build of one variant (scripts/wasm-env.sh WASM_SIMD), then
# wasm-opt in release.
build() {
  local variant=$1 out=$2
  (
    export WASM_SIMD=$variant
    . scripts/wasm-env.sh
    echo "[build-wasm] $variant: wasm-pack build --$mode ($WASM_TOOLCHAIN toolchain${WASM_CARGO_FLAGS[*]:+, ${WASM_CARGO_FLAGS[*]}})"
    wasm-pack --log-level warn build --"$mode" --target web --no-pack --out-dir "$out" crate "${WASM_CARGO_FLAGS[@]}"
  )
  local wasm=$out/quant_playground_bg.wasm
  [ -f "$wasm" ] || { echo "[build-wasm] $wasm was not produced" >&2; exit 1; }
  [ "$mode" = release ] || return 0
  local wasm_opt="$ROOT/node_modules/.bin/wasm-opt"
  [ -x "$wasm_opt" ] || { echo "[build-wasm] $wasm_opt is missing: run make setup (npm ci)" >&2; exit 1; }
  # The features rustc enables by default for wasm32-unknown-unknown, plus SIMD128 (and
  # relaxed SIMD for that variant).
  local opt_flags=(-O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext
    --enable-mutable-globals --enable-multivalue --enable-reference-types)
  [ "$variant" = relaxed ] && opt_flags+=(--enable-relaxed-simd)
  local binaryen key cache="$ROOT/target/wasm-opt-cache/$variant"
  binaryen=$("$wasm_opt" --version | awk '{print $3}')
  # wasm-opt takes minutes on the full engine (binaryen.js is single-threaded): its output is
  # kept per input, so a rebuild that changed nothing (make serve, test, bench) reuses it.
  key=$( { sha256sum <"$wasm"; echo "$binaryen ${opt_flags[*]}"; } | sha256sum | cut -c1-32)
  if [ -f "$cache/$key.wasm" ]; then
    echo "[build-wasm] $variant: wasm-opt: input unchanged, optimised output reused (target/wasm-opt-cache)"
    cp "$cache/$key.wasm" "$wasm"
  else
    echo "[build-wasm] $variant: wasm-opt ${opt_flags[0]} (binaryen $binaryen)"
    "$wasm_opt" "${opt_flags[@]}" "$wasm" -o "$wasm.opt"
    mv "$wasm.opt" "$wasm"
    mkdir -p "$cache"
    rm -f "$cache"/*.wasm
    cp "$wasm" "$cache/$key.wasm"
  fi
}

start=$(date +%s)
build simd128 "$ROOT/www/pkg"
build relaxed "$ROOT/target/relaxed/pkg"
# One glue for both: the worker hands it the wasm file to instantiate.
cmp -s www/pkg/quant_playground.js target/relaxed/pkg/quant_playground.js || {
  echo "[build-wasm] the two variants' JavaScript glue differs (diff www/pkg/quant_playground.js target/relaxed/pkg/quant_playground.js)" >&2
  exit 1
}
cp target/relaxed/pkg/quant_playground_bg.wasm www/pkg/quant_playground_relaxed_bg.wasm

for wasm in www/pkg/quant_playground_bg.wasm www/pkg/quant_playground_relaxed_bg.wasm; do
  raw=$(stat -c %s "$wasm")
  gz=$(gzip -9 -c "$wasm" | wc -c)
  awk -v f="$wasm" -v r="$raw" -v g="$gz" \
    'BEGIN { printf "[build-wasm] %s: %d bytes (%.2f MB), gzip -9 %d bytes (%.2f MB)\n", f, r, r / 1e6, g, g / 1e6 }'
done
echo "[build-wasm] both variants in $(( $(date +%s) - start ))s"
