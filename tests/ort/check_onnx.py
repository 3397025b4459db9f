#!/usr/bin/env python3
"""onnx's checker (full check: types and shapes inferred) on each ONNX file given.

Used by tests/ort/qdq.test.mjs on the files our export writes. Needs the `onnx` package that
scripts/setup.sh installs (pinned there). Prints one line per file; exits 1 if any fails.
"""

import sys

import onnx


def main(paths):
    failed = 0
    for path in paths:
        try:
            model = onnx.load(path)
            onnx.checker.check_model(model, full_check=True)
            opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            print(f"ok   {path} (opset {opset}, ir {model.ir_version}, onnx {onnx.__version__})")
        except Exception as e:  # the checker raises several exception types
            failed += 1
            print(f"FAIL {path}: {e}")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
