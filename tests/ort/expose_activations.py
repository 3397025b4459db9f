#!/usr/bin/env python3
"""Writes a copy of a QDQ model whose every dequantized activation is also a graph output.

Usage: expose_activations.py IN.onnx OUT.onnx
Prints a JSON list, in graph order, of {"name", "scale"} for each DequantizeLinear output of an
activation (not of a constant) with a per-tensor scale: what tests/ort/qdq.test.mjs compares
tensor by tensor to find where two engines first part.
"""

import json
import sys

import onnx
from onnx import helper, numpy_helper


def main(src, dst):
    model = onnx.load(src)
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    exposed = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in consts or node.input[1] not in consts:
            continue
        scale = numpy_helper.to_array(consts[node.input[1]])
        if scale.size != 1:
            continue
        name = node.output[0]
        if name not in outputs:
            graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        exposed.append({"name": name, "scale": float(scale.reshape(()))})
    onnx.save(model, dst)
    print(json.dumps(exposed))


if __name__ == "__main__":
    main(*sys.argv[1:3])
