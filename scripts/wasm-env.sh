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
unset _root
