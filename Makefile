# The two commands of README.md are `make serve` and `make test`; both set up what is
# missing first (scripts/setup.sh: idempotent, seconds when done).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PORT ?= 8080
# `make bench BENCH="wasm-load"` runs only the named benchmarks.
BENCH ?=

.PHONY: setup build build-dev serve test test-native test-ort test-wasm test-e2e bench dist clean

setup:
	@scripts/setup.sh

# Release builds of the engine for the browser (SIMD128, and SIMD128 + relaxed SIMD; wasm-opt
# -O3) into www/pkg/.
build: setup
	@scripts/build-wasm.sh release

build-dev: setup
	@scripts/build-wasm.sh dev

# Serves www/ (and models/ at /models/) on http://localhost:$(PORT).
serve: build
	@PORT=$(PORT) node scripts/serve.mjs

# Native tests (seconds), ONNX export/QDQ import against onnxruntime, the crate's tests in
# headless Chromium, then the page end to end.
test: setup
	@$(MAKE) --no-print-directory test-native test-ort test-wasm test-e2e

test-native:
	cargo test --workspace

# Our exported ONNX files and onnxruntime's QDQ files (tests/fixtures/ort-qdq/) in
# onnxruntime-web (wasm, in Node) against the native CLI, and onnx's checker on the exports.
test-ort:
	cargo build --bin quant-playground
	node --test --test-concurrency=1 tests/ort/*.test.mjs

# The crate's tests on the SIMD128 build, then its library tests on the relaxed-SIMD build
# (its GEMM tiles, the probe of its dot product, the kernels and engines built on them); the
# end-to-end tests run the page, and so the real models, on the relaxed build in Chromium.
test-wasm:
	@scripts/test-wasm.sh
	@WASM_SIMD=relaxed scripts/test-wasm.sh --lib

test-e2e:
	@scripts/build-wasm.sh release
	node --test --test-concurrency=1 tests/e2e/*.test.mjs

# Writes bench/results.json and prints a table (see bench/README.md).
bench: build
	node bench/run.mjs $(BENCH)

# A self-contained static folder for any static host.
dist: build
	@scripts/dist.sh

clean:
	rm -rf www/pkg target/relaxed/pkg dist tests/artifacts
