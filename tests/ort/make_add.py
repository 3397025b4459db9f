#!/usr/bin/env python3
"""Writes a QDQ model computing one quantized Add of two [1, N] float inputs.

Usage: make_add.py OUT.onnx N SA ZA SB ZB SC ZC [int8|uint8]
x -> QuantizeLinear(SA, ZA) -> DequantizeLinear, y likewise with (SB, ZB), Add, then
QuantizeLinear(SC, ZC) -> DequantizeLinear: onnxruntime fuses the middle into QLinearAdd (for
uint8), our import runs it as an int8 Add. tests/ort/qdq.test.mjs compares the two on every
pair of input integers.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main(out, n, sa, za, sb, zb, sc, zc, storage="uint8"):
    n = int(n)
    dtype = np.uint8 if storage == "uint8" else np.int8
    inits = []
    for name, s, z in (("x", sa, za), ("y", sb, zb), ("z", sc, zc)):
        inits.append(numpy_helper.from_array(np.array(float(s), np.float32), f"{name}_scale"))
        inits.append(numpy_helper.from_array(np.array(int(z), dtype), f"{name}_zero_point"))
    qdq = lambda t, q: [
        helper.make_node("QuantizeLinear", [t, f"{q}_scale", f"{q}_zero_point"], [f"{t}_q"]),
        helper.make_node("DequantizeLinear", [f"{t}_q", f"{q}_scale", f"{q}_zero_point"], [f"{t}_dq"]),
    ]
    nodes = qdq("x", "x") + qdq("y", "y") + [helper.make_node("Add", ["x_dq", "y_dq"], ["sum"], name="add")]
    nodes += [
        helper.make_node("QuantizeLinear", ["sum", "z_scale", "z_zero_point"], ["sum_q"]),
        helper.make_node("DequantizeLinear", ["sum_q", "z_scale", "z_zero_point"], ["out"]),
    ]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n])
    graph = helper.make_graph(nodes, "add", [io("x"), io("y")], [io("out")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
