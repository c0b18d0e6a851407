"""Returns its input unchanged and the row sum; records nothing. For padding tests."""

import numpy as np


class Echo:
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["INPUT"]
        return {"OUTPUT": x.copy(), "ROWSUM": x.sum(axis=tuple(range(1, x.ndim)))[:, None]}
