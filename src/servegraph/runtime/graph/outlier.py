"""OutlierDetector: score each row against reference statistics and flag the far ones.

- ``zscore``: the largest |x - mean| / std over the row's features (mean and std of the
  reference, numpy's population std; a feature with std 0 counts in raw units), or the
  step's inline ``mean``/``scale`` when it has no reference file.
- ``mahalanobis``: sqrt((x - mean)^T pinv(cov) (x - mean)) with the reference's mean and
  covariance (pseudo-inverse, so collinear features do not break it).

A row is an outlier when its score is above ``threshold``. The step adds outputs
``OUTLIER_SCORE`` (FP32 ``[n, 1]``) and ``IS_OUTLIER`` (BOOL ``[n, 1]``) to the response and
changes nothing it was given: on the input stage the child sees the request unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from servegraph.runtime.graph.batch import TensorBatch, feature_rows, selected
from servegraph.runtime.graph.metrics import GraphMetrics
from servegraph.runtime.protocol.errors import InvalidInput

SCORE = "OUTLIER_SCORE"
FLAG = "IS_OUTLIER"


class OutlierDetector:
    kind = "OutlierDetector"
    blocking = False

    def __init__(
        self,
        label: str,
        node: str,
        tensors: Sequence[str],
        method: str,
        threshold: float,
        metrics: GraphMetrics,
        reference: np.ndarray | None = None,
        mean: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
    ) -> None:
        self.label = label
        self.node = node
        self.tensors = list(tensors)
        self.method = method
        self.threshold = threshold
        self.metrics = metrics
        self.rows = 0
        self.outliers = 0
        self._inverse: np.ndarray | None = None
        if reference is not None:
            self.mean = reference.mean(axis=0)
            if method == "mahalanobis":
                self._inverse = np.linalg.pinv(np.atleast_2d(np.cov(reference, rowvar=False)))
                self.std = np.ones_like(self.mean)
            else:
                std = reference.std(axis=0)
                self.std = np.where(std > 0, std, 1.0)
        elif method == "zscore" and mean is not None and scale is not None:
            self.mean = np.asarray(mean, dtype=np.float64)
            self.std = np.asarray(scale, dtype=np.float64)
            if self.mean.shape != self.std.shape or np.any(self.std <= 0):
                raise ValueError(f"{label} needs mean and scale of the same length, scale > 0")
        else:
            raise ValueError(
                f"{label} needs reference_file"
                + (" (mahalanobis needs a covariance)" if method == "mahalanobis" else ", or inline mean and scale")
            )

    @property
    def width(self) -> int:
        return int(self.mean.shape[0])

    def score(self, rows: np.ndarray) -> np.ndarray:
        centred = rows - self.mean
        scores: np.ndarray
        if self._inverse is not None:
            quadratic = np.einsum("ij,jk,ik->i", centred, self._inverse, centred)
            scores = np.sqrt(np.maximum(quadratic, 0.0))
        else:
            scores = np.abs(centred / self.std).max(axis=1)
        return scores

    def apply(self, batch: TensorBatch) -> None:
        names = selected(batch, self.tensors, self.label)
        rows = feature_rows(batch, names, self.label)
        if rows.shape[1] != self.width:
            raise InvalidInput(
                f"{self.label}: tensors {names} have {rows.shape[1]} features per row, the reference has {self.width}"
            )
        scores = self.score(rows)
        flags = scores > self.threshold
        batch.annotate(SCORE, scores.astype(np.float32)[:, None], "FP32")
        batch.annotate(FLAG, flags[:, None], "BOOL")
        found = int(flags.sum())
        self.rows += len(flags)
        self.outliers += found
        if found:
            self.metrics.outlier_rows.labels(self.node, "outlier").inc(found)
        if len(flags) - found:
            self.metrics.outlier_rows.labels(self.node, "inlier").inc(len(flags) - found)

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step": self.label,
            "method": self.method,
            "threshold": self.threshold,
            "rows": self.rows,
            "outliers": self.outliers,
        }
