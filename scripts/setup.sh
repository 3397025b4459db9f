#!/usr/bin/env bash
# Installs everything the build and the tests need, from package registries only:
#   - a Rust toolchain that can build for wasm32-unknown-unknown
#     (rustup's target where rustup can download it, else Debian's rustc-web with its std
#     source, built with -Zbuild-std; see ARCHITECTURE.md, "Toolchain"),
#   - wasm-pack, and wasm-bindgen-cli at exactly the version crate/Cargo.toml pins,
#   - Chromium + chromedriver (browser tests), ffmpeg (fake webcam),
#   - the Node packages of package-lock.json (npm ci): playwright-core, and binaryen whose
#     wasm-opt the release build uses (Debian's binaryen 108 miscompiles wasm-bindgen output),
#   - Python's onnx package at a pinned version (onnx's checker in tests/ort/).
# Idempotent: when everything is in place it takes a few seconds and installs nothing.
# The chosen wasm toolchain is recorded in target/toolchain.env for scripts/wasm-env.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WASM_PACK_VERSION=0.15.1           # the version this project is tested with
RUSTUP_TIMEOUT=${RUSTUP_TIMEOUT:-40}  # seconds; rustup hangs where it cannot download
ENV_FILE="$ROOT/target/toolchain.env"
DEBIAN_RUST_PKGS=(rustc-web cargo-web rust-web-src lld-22)

if [ -t 1 ]; then bold=$'\033[1m' red=$'\033[1;31m' off=$'\033[0m'; else bold='' red='' off=''; fi
say() { printf '%s[setup]%s %s\n' "$bold" "$off" "$*"; }
die() { printf '%s[setup] ERROR:%s %s\n' "$red" "$off" "$*" >&2; exit 1; }
join() { local IFS=','; local s="$*"; printf '%s' "${s//,/, }"; }

start=$(date +%s)
[ -d "$HOME/.cargo/bin" ] && case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) PATH="$HOME/.cargo/bin:$PATH" ;; esac
export DEBIAN_FRONTEND=noninteractive

# --- basics that this script cannot install --------------------------------------------
missing=()
command -v cargo >/dev/null || missing+=("cargo (Rust, e.g. from rustup)")
command -v node >/dev/null || missing+=("node (Node.js >= 20)")
command -v npm >/dev/null || missing+=("npm")
[ ${#missing[@]} -eq 0 ] || die "missing: $(join "${missing[@]}"). Install them, then run this again."
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is needed, found $(node --version)"

# --- apt helpers ---------------------------------------------------------------------------
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=(sudo); fi
fi
apt_updated=0
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_install() { # apt_install WHY PKG...
  local why=$1; shift
  command -v apt-get >/dev/null \
    || die "missing: $why. This is not a Debian-like system: install the equivalent of the Debian packages '$*' by hand."
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "missing: $why. Installing the Debian packages '$*' needs root (or sudo)."
  fi
  if [ $apt_updated -eq 0 ]; then
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed (needed for: $*)"
    apt_updated=1
  fi
  say "apt-get install $* ($why)"
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed (needed for: $why)"
}

# --- 1. the wasm32 toolchain -----------------------------------------------------------------
rustup_has_target() {
  command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}
debian_rust_ready() {
  local p
  for p in "${DEBIAN_RUST_PKGS[@]}"; do deb_installed "$p" || return 1; done
  [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ]
}
recorded_toolchain=$(sed -n 's/^WASM_TOOLCHAIN=//p' "$ENV_FILE" 2>/dev/null || true)

# WASM_TOOLCHAIN=rustup|debian forces a choice (e.g. to test the Debian path where rustup works).
forced=${WASM_TOOLCHAIN:-}
case "$forced" in
  ""|rustup|debian) ;;
  *) die "WASM_TOOLCHAIN must be rustup or debian, not '$forced'" ;;
esac
toolchain=""
if [ "$forced" = debian ]; then
  debian_rust_ready || apt_install "Debian's Rust for wasm32 (WASM_TOOLCHAIN=debian)" "${DEBIAN_RUST_PKGS[@]}"
  debian_rust_ready || die "Debian's Rust (${DEBIAN_RUST_PKGS[*]}) is still incomplete after installing"
  toolchain=debian
elif [ "$forced" = rustup ]; then
  command -v rustup >/dev/null || die "WASM_TOOLCHAIN=rustup but rustup is missing"
  rustup_has_target || timeout "$RUSTUP_TIMEOUT" rustup target add wasm32-unknown-unknown </dev/null \
    || die "rustup target add wasm32-unknown-unknown failed (WASM_TOOLCHAIN=rustup)"
  toolchain=rustup
elif rustup_has_target; then
  toolchain=rustup
elif [ "$recorded_toolchain" = debian ] && debian_rust_ready; then
  toolchain=debian   # decided on an earlier run: do not wait for rustup again
else
  if command -v rustup >/dev/null; then
    say "rustup target add wasm32-unknown-unknown (timeout ${RUSTUP_TIMEOUT}s)"
    if timeout "$RUSTUP_TIMEOUT" rustup target add wasm32-unknown-unknown </dev/null; then
      toolchain=rustup
    else
      say "rustup could not add the wasm32 target; using Debian's Rust and building std from source"
    fi
  fi
  if [ -z "$toolchain" ]; then
    debian_rust_ready || apt_install "a Rust toolchain for wasm32 (rustup cannot provide one here)" "${DEBIAN_RUST_PKGS[@]}"
    debian_rust_ready || die "Debian's Rust (${DEBIAN_RUST_PKGS[*]}) is still incomplete after installing"
    toolchain=debian
  fi
fi
if [ "$toolchain" = debian ] && [ ! -d /usr/lib/rustlib/wasm32-unknown-unknown/lib ]; then
  # wasm-pack refuses a sysroot without the target's directory; -Zbuild-std does not need it.
  say "mkdir -p /usr/lib/rustlib/wasm32-unknown-unknown/lib (for wasm-pack's sysroot check)"
  "${SUDO[@]}" mkdir -p /usr/lib/rustlib/wasm32-unknown-unknown/lib
fi
mkdir -p "$ROOT/target"
if [ "$toolchain" = rustup ]; then
  want=$'# written by scripts/setup.sh: rustup provides the wasm32 target\nWASM_TOOLCHAIN=rustup\nWASM_PATH_PREFIX=\nWASM_RUSTC_BOOTSTRAP=\nWASM_CARGO_FLAGS='
else
  want=$'# written by scripts/setup.sh: Debian\'s Rust at /usr/bin, std built from source\nWASM_TOOLCHAIN=debian\nWASM_PATH_PREFIX=/usr/bin\nWASM_RUSTC_BOOTSTRAP=1\nWASM_CARGO_FLAGS=-Zbuild-std=std,panic_abort'
fi
if [ "$(cat "$ENV_FILE" 2>/dev/null || true)" != "$want" ]; then
  printf '%s\n' "$want" >"$ENV_FILE"
fi
say "wasm toolchain: $toolchain (recorded in target/toolchain.env)"

# --- 2. wasm-pack and wasm-bindgen-cli ---------------------------------------------------------
bindgen_pin=$(sed -n 's/^wasm-bindgen *= *"=\([0-9][0-9.]*\)".*/\1/p' crate/Cargo.toml | head -n1)
[ -n "$bindgen_pin" ] || die "crate/Cargo.toml must pin wasm-bindgen exactly (wasm-bindgen = \"=X.Y.Z\"): wasm-bindgen-cli has to match it"
to_install=()
if command -v wasm-pack >/dev/null; then
  have=$(wasm-pack --version | awk '{print $2}')
  [ "$have" = "$WASM_PACK_VERSION" ] || say "note: wasm-pack $have found (the project is tested with $WASM_PACK_VERSION); keeping it"
else
  to_install+=("wasm-pack@$WASM_PACK_VERSION")
fi
have_bindgen=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_bindgen" != "$bindgen_pin" ]; then
  to_install+=("wasm-bindgen-cli@$bindgen_pin")
  [ -z "$have_bindgen" ] || say "wasm-bindgen-cli $have_bindgen installed, the crate pins $bindgen_pin: replacing it"
fi
if [ ${#to_install[@]} -gt 0 ]; then
  say "cargo install ${to_install[*]} (compiles from crates.io; several minutes the first time)"
  # One invocation and one target dir, so the crates both tools share compile once.
  cargo install --target-dir "$ROOT/target/tools" "${to_install[@]}" \
    || die "cargo install ${to_install[*]} failed"
fi
command -v wasm-pack >/dev/null || die "wasm-pack is not on PATH after installing (is ~/.cargo/bin on PATH?)"
[ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" = "$bindgen_pin" ] \
  || die "wasm-bindgen $bindgen_pin is not on PATH after installing (is ~/.cargo/bin on PATH?)"
command -v wasm-bindgen-test-runner >/dev/null || die "wasm-bindgen-test-runner is missing (it comes with wasm-bindgen-cli)"
say "wasm-pack $(wasm-pack --version | awk '{print $2}'), wasm-bindgen $bindgen_pin"

# --- 3. Chromium, chromedriver, ffmpeg ---------------------------------------------------------
pkgs=(); why=()
command -v chromium >/dev/null || { pkgs+=(chromium); why+=(chromium); }
command -v chromedriver >/dev/null || { pkgs+=(chromium-driver); why+=(chromedriver); }
command -v ffmpeg >/dev/null || { pkgs+=(ffmpeg); why+=(ffmpeg); }
[ ${#pkgs[@]} -eq 0 ] || apt_install "${why[*]}" "${pkgs[@]}"
for c in chromium chromedriver ffmpeg; do
  command -v "$c" >/dev/null || die "missing: $c (still not on PATH after installing)"
done

# --- 4. Node packages (npm ci from the committed package-lock.json) ---------------------------
[ -f package-lock.json ] || die "package-lock.json is missing: it must be committed (npm install writes it)"
lock_sum=$(sha256sum package-lock.json | awk '{print $1}')
if [ "$(cat node_modules/.setup-stamp 2>/dev/null || true)" != "$lock_sum" ]; then
  say "npm ci (package-lock.json changed or node_modules missing)"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"
  printf '%s\n' "$lock_sum" >node_modules/.setup-stamp
fi

# --- 5. Python's onnx (the checker that tests/ort/ runs on our exports) ------------------------
ONNX_VERSION=1.23.2
command -v python3 >/dev/null || die "missing: python3 (with pip), for onnx's checker in tests/ort/"
if [ "$(python3 -c 'import onnx; print(onnx.__version__)' 2>/dev/null || true)" != "$ONNX_VERSION" ]; then
  say "pip install onnx==$ONNX_VERSION (onnx's checker for tests/ort/)"
  python3 -m pip install --quiet --disable-pip-version-check "onnx==$ONNX_VERSION" \
    || die "pip install onnx==$ONNX_VERSION failed (needed by tests/ort/check_onnx.py)"
fi

say "ready in $(( $(date +%s) - start ))s"
