"""The operator's settings: one typed tree, built once in ``main()`` and passed explicitly.

Every field can come from the environment (``SERVEGRAPH_*``), which is how the Helm chart
sets them, or from ``servegraph operator``'s flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

FIELD_MANAGER = "servegraph"
"""The name our writes carry (``fieldManager``, seen in managedFields), so that others'
fields, an HPA's or a GitOps tool's, are told apart from ours."""



class OperatorSettings(BaseModel):
    """What the operator needs to turn a ModelDeployment into workloads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime_image: str = Field(
        "ghcr.io/servegraph/runtime:0.1.0", description="Image for every graph pod (CPU)."
    )
    runtime_gpu_image: str = Field(
        "ghcr.io/servegraph/runtime-gpu:0.1.0",
        description="Image for Model nodes that ask for GPUs (onnxruntime-gpu on CUDA).",
    )
    image_pull_policy: str = Field("IfNotPresent", description="pullPolicy of graph pods.")
    namespaces: tuple[str, ...] = Field(
        (), description="Namespaces to watch; empty means every namespace."
    )
    exit_timeout_secs: int = Field(
        30, ge=1, description="Graph pods' SIGTERM drain; the grace period adds a margin."
    )
    startup_timeout_secs: int = Field(
        600, ge=10, description="How long a pod may load and warm up before it is restarted."
    )
    relative_model_root: str = Field(
        "/opt/servegraph/examples/graphs",
        description=(
            "Where a relative storageUri (written for servegraph run) is looked up inside the"
            " runtime image, which ships the examples there."
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> OperatorSettings:
        """Settings from ``SERVEGRAPH_*`` variables, then ``overrides`` (the command line)."""
        env = os.environ if env is None else env
        data: dict[str, object] = {}
        for name in ("runtime_image", "runtime_gpu_image", "image_pull_policy"):
            value = env.get(f"SERVEGRAPH_{name.upper()}")
            if value:
                data[name] = value
        namespaces = env.get("SERVEGRAPH_NAMESPACES", "")
        if namespaces.strip():
            data["namespaces"] = tuple(n.strip() for n in namespaces.split(",") if n.strip())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)
