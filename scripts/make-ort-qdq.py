#!/usr/bin/env python3
"""Makes the foreign QDQ fixtures in tests/fixtures/ort-qdq/: onnxruntime's own quantizer
(quantize_static) run on the shipped models, as a user who quantized with onnxruntime would.

For each model of models/ and each activation type (uint8, int8):
  - the input is fixed to the shape the tests use (ppocr's is dynamic), Constant nodes become
    initializers;
  - onnxruntime's basic graph optimisations (constant folding, BatchNormalization folded into
    Conv), onnxruntime.quantization.shape_inference.quant_pre_process (shape inference), then the opset
    raised to 13 where it is lower (per-channel QDQ needs it);
  - calibration on the shipped images of models/images/, preprocessed by our own CLI
    (`quant-playground run --save-inputs`), so the tensors are the ones our tests feed;
  - quantize_static: QDQ format, per-channel int8 weights, MinMax calibration, opset 13.

Not a project runtime need: run it in a scratch virtual environment, e.g.
    python3 -m venv /tmp/ortvenv
    /tmp/ortvenv/bin/pip install onnxruntime==1.30.0 onnx==1.23.2 numpy
    cargo build --bin quant-playground
    /tmp/ortvenv/bin/python scripts/make-ort-qdq.py
The outputs are committed (provenance: tests/fixtures/ort-qdq/README.md). Deterministic for a
given onnxruntime version.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, input name, fixed input shape, CLI preprocessing arguments)
MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "input", [1, 3, 224, 224], ["--preset", "lite"]),
    "blazeface_front_128": ("blazeface_front_128.onnx", "input:0", [1, 128, 128, 3], ["--preset", "signed"]),
    "ppocr_cls_mobile_v2": ("ppocr_cls_mobile_v2.onnx", "x", [1, 3, 48, 192], ["--preset", "ppocr", "--input-shape", "x=1,3,48,192"]),
}
ACTIVATIONS = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


def file_name_for(name):
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name)


def calibration_inputs(cli, model_path, input_name, preprocessing, scratch):
    """The preprocessed tensor of every shipped image, as our CLI feeds it."""
    images = sorted((ROOT / "models" / "images").iterdir())
    tensors = []
    for image in images:
        out = Path(scratch) / image.stem
        subprocess.run(
            [cli, "run", str(model_path), "--image", str(image), "--out", str(out), "--save-inputs", *preprocessing],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tensors.append(np.load(out / f"{file_name_for(input_name)}.input.npy").astype(np.float32))
    return tensors


class Reader(CalibrationDataReader):
    def __init__(self, input_name, tensors):
        self.items = iter([{input_name: t} for t in tensors])

    def get_next(self):
        return next(self.items, None)


def fixed_input(model, input_name, shape):
    for vi in model.graph.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shape):
                d.ClearField("dim_param")
                d.dim_value = v
    return model


def constants_to_initializers(model):
    """Constant nodes holding a tensor become initializers (PaddlePaddle keeps its weights in
    Constant nodes; onnxruntime's quantizer and BatchNormalization folding need initializers)."""
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cli", default=str(ROOT / "target" / "debug" / "quant-playground"))
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "ort-qdq"))
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    if not os.path.exists(args.cli):
        sys.exit(f"{args.cli} is missing: cargo build --bin quant-playground first")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        file, input_name, shape, preprocessing = MODELS[name]
        with tempfile.TemporaryDirectory() as scratch:
            model = onnx.load(ROOT / "models" / file)
            model = constants_to_initializers(fixed_input(model, input_name, shape))
            fixed = Path(scratch) / "fixed.onnx"
            onnx.save(model, fixed)
            # onnxruntime's basic graph optimisations (constant folding, BatchNormalization
            # folded into Conv), then quant_pre_process's shape inference.
            optimized = Path(scratch) / "optimized.onnx"
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(optimized)
            ort.InferenceSession(str(fixed), options, providers=["CPUExecutionProvider"])
            pre = Path(scratch) / "pre.onnx"
            quant_pre_process(str(optimized), str(pre), skip_optimization=True, skip_symbolic_shape=True)
            opset = next(o.version for o in onnx.load(pre).opset_import if o.domain in ("", "ai.onnx"))
            if opset < 13:
                # Per-channel QDQ needs opset 13 (converted after the optimisations, which
                # fold BatchNormalization only on the original opset here).
                onnx.save(version_converter.convert_version(onnx.load(pre), 13), pre)
            tensors = calibration_inputs(args.cli, ROOT / "models" / file, input_name, preprocessing, scratch)
            for suffix, activation_type in ACTIVATIONS.items():
                target = out_dir / f"{name}.{suffix}.onnx"
                quantize_static(
                    str(pre),
                    str(target),
                    Reader(input_name, tensors),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=activation_type,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
                print(f"{target.relative_to(ROOT)}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
