"""Write small ONNX models with the ``onnx`` package (no downloads, fixed seeds).

    python examples/make_onnx.py scale DIR/model.onnx   # Y = 2 * X + 1, X: FP32 [n, 4]
    python examples/make_onnx.py mlp DIR/model.onnx     # the benchmark MLP's ONNX twin
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def scale_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    nodes = [helper.make_node("Mul", ["X", "two"], ["X2"]), helper.make_node("Add", ["X2", "one"], ["Y"])]
    graph = helper.make_graph(nodes, "scale", [x], [y], initializer=[two, one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """Same weights as examples/models/mlp (same seed, same draw order)."""
    rng = np.random.default_rng(seed)
    sizes = [512, 2048, 2048, 16]
    inits, nodes = [], []
    current = "INPUT"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = np.zeros(n_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "OUTPUT" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out if i == len(sizes) - 2 else f"g{i}"]))
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        current = out
    x = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 512])
    y = helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 16])
    graph = helper.make_graph(nodes, "mlp", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> None:
    kind, target = sys.argv[1], Path(sys.argv[2])
    target.parent.mkdir(parents=True, exist_ok=True)
    model = {"scale": scale_model, "mlp": mlp_model}[kind]()
    onnx.checker.check_model(model)
    onnx.save(model, target)


if __name__ == "__main__":
    main()
