# Sourced by the wasm build and test scripts: applies the toolchain that scripts/setup.sh
# chose (target/toolchain.env). Sets WASM_CARGO_FLAGS (extra cargo flags, e.g. -Zbuild-std).
# shellcheck shell=bash
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_root/target/toolchain.env" ]; then
  echo "target/toolchain.env is missing: run scripts/setup.sh (or make setup) first" >&2
  exit 1
fi
# shellcheck source=/dev/null
. "$_root/target/toolchain.env"
[ -d "$HOME/.cargo/bin" ] && case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH="$HOME/.cargo/bin:$PATH" ;; esac
if [ -n "${WASM_PATH_PREFIX:-}" ]; then
  # Debian's cargo/rustc (with the std source) before rustup's proxies; wasm-pack and
  # wasm-bindgen stay reachable in ~/.cargo/bin.
  PATH="$WASM_PATH_PREFIX:$PATH"
fi
export PATH
if [ -n "${WASM_RUSTC_BOOTSTRAP:-}" ]; then export RUSTC_BOOTSTRAP="$WASM_RUSTC_BOOTSTRAP"; fi
# shellcheck disable=SC2206
WASM_CARGO_FLAGS=(${WASM_CARGO_FLAGS:-})
# WASM_SIMD=relaxed: the relaxed-SIMD variant (crate/src/kernels/int8/relaxed.rs), in its own
# target directory so that the two variants do not rebuild each other.
case "${WASM_SIMD:-simd128}" in
  simd128) ;;
  relaxed)
    # Relaxed SIMD only where the code asks for it (kernels/int8/relaxed.rs says why).
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128 --cfg qp_relaxed_simd"
    export CARGO_TARGET_DIR="$_root/target/relaxed"
    ;;
  *) echo "WASM_SIMD=$WASM_SIMD: expected simd128 or relaxed" >&2; exit 2 ;;
esac
unset _root
