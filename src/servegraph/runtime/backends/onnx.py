"""The ONNX backend: ``model.onnx`` run by onnxruntime, on CUDA when a GPU is there.

The CUDA execution provider is used when onnxruntime-gpu is installed and the instance
group does not ask for KIND_CPU; otherwise the CPU provider. The config parameter
``intra_op_threads`` sets onnxruntime's thread count (0 = its default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servegraph.runtime.config import ModelConfig, TensorConfig

_ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _providers(config: ModelConfig) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime's providers for the config: CUDA on the instance group's GPU (``gpus``,
    as the CUDA provider's ``device_id``) when there is one, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wants_cpu = all(group.kind == "KIND_CPU" for group in config.instance_group)
    gpus = config.gpus  # at most one: ModelConfig refuses more
    if gpus and "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"instance_group gpus {gpus} asks for a GPU, but onnxruntime here has no"
            f" CUDAExecutionProvider (available: {', '.join(available)})"
        )
    if "CUDAExecutionProvider" in available and not wants_cpu:
        cuda: str | tuple[str, dict[str, str]] = (
            ("CUDAExecutionProvider", {"device_id": str(gpus[0])}) if gpus else "CUDAExecutionProvider"
        )
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(config: ModelConfig, version_dir: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    path = version_dir / (config.default_model_filename or "model.onnx")
    if not path.is_file():
        raise FileNotFoundError(f"onnxruntime backend needs {path.name} in {version_dir}")
    options = ort.SessionOptions()
    threads = int(config.parameters.get("intra_op_threads", "0"))
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=_providers(config))


class OnnxModel:
    def __init__(self, session, output_names: list[str]) -> None:  # type: ignore[no-untyped-def]
        self._session = session
        self._output_names = output_names
        self.providers: list[str] = session.get_providers()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results))

    def unload(self) -> None:
        self._session = None


def load(config: ModelConfig, version_dir: Path) -> OnnxModel:
    session = _session(config, version_dir)
    names = [o.name for o in config.output] or [o.name for o in session.get_outputs()]
    return OnnxModel(session, names)


def signature(
    config: ModelConfig, version_dir: Path
) -> tuple[list[TensorConfig], list[TensorConfig]] | None:
    """Inputs and outputs read from the ONNX graph, batch dim stripped when batching."""
    session = _session(config, version_dir)

    def convert(args) -> list[TensorConfig]:  # type: ignore[no-untyped-def]
        tensors = []
        for arg in args:
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
            if config.max_batch_size > 0:
                dims = dims[1:]
            tensors.append(TensorConfig(name=arg.name, data_type=_ORT_TO_V2[arg.type], dims=dims))
        return tensors

    return convert(session.get_inputs()), convert(session.get_outputs())
