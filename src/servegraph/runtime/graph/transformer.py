"""The Transformer role: input steps, then its one child, then output steps.

Tensors added by detectors (``OUTLIER_SCORE``, ``IS_OUTLIER``) reach the response whatever
the stage they were computed on; on the input stage they are not sent to the child.
"""

from __future__ import annotations

from typing import Any

from servegraph.runtime.graph.batch import TensorBatch
from servegraph.runtime.graph.config import NodeConfig, TensorSignature, TransformerSettings
from servegraph.runtime.graph.node import GraphNode, Signature
from servegraph.runtime.graph.outlier import FLAG, SCORE
from servegraph.runtime.graph.transforms import build_steps, run_steps
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol.types import InferRequest, InferResponse


class TransformerNode(GraphNode):
    role = "transformer"

    def __init__(self, config: NodeConfig, metrics: ServerMetrics, **options: Any) -> None:
        super().__init__(config, metrics, **options)
        if config.transformer is None:
            raise ValueError(f"node '{config.node}' is a transformer without transformer settings")
        if len(self.children) != 1:
            raise ValueError(f"transformer '{self.node}' needs exactly one child, got {self.children}")
        self.settings: TransformerSettings = config.transformer
        self.child = self.children[0]
        self.input_steps = build_steps(self.node, "input", self.settings.input, self.resolve, self.graph_metrics)
        self.output_steps = build_steps(self.node, "output", self.settings.output, self.resolve, self.graph_metrics)

    async def _infer(self, request: InferRequest) -> InferResponse:
        batch = TensorBatch(dict(request.inputs), dict(request.datatypes))
        await run_steps(self.input_steps, batch)
        answer = await self.call(self.child, request, inputs=batch.arrays, datatypes=batch.datatypes)
        result = TensorBatch(answer.outputs, answer.datatypes, batch.annotations, batch.annotation_types)
        await run_steps(self.output_steps, result)
        outputs = {**result.arrays, **result.annotations}
        datatypes = {**result.datatypes, **result.annotation_types}
        route = params.join_route(self.child, answer.parameters.get(params.ROUTE))
        return self.response(
            request,
            outputs,
            datatypes,
            request_id=request.id or answer.id,
            parameters={**answer.parameters, params.ROUTE: route},
        )

    def derive_outputs(self, outputs: Signature) -> Signature:
        if any(step.kind == "OutlierDetector" for step in (*self.input_steps, *self.output_steps)):
            known = {t.name for t in outputs}
            extra = [
                TensorSignature(name=SCORE, datatype="FP32", shape=[-1, 1]),
                TensorSignature(name=FLAG, datatype="BOOL", shape=[-1, 1]),
            ]
            return [*outputs, *(t for t in extra if t.name not in known)]
        return outputs

    def role_extras(self) -> dict[str, Any]:
        return {
            "steps": {
                "input": [step.stats() for step in self.input_steps],
                "output": [step.stats() for step in self.output_steps],
            }
        }
