"""A model that fails on purpose: rows whose first value is negative make it raise,
and a first value of exactly 999 makes it return one row too few.
Returns OUTPUT = INPUT * 2 otherwise.
"""

import numpy as np


class Faulty:
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["INPUT"]
        if (x[:, 0] < 0).any():
            raise ValueError("negative inputs are poison")
        if (x[:, 0] == 999).any():
            return {"OUTPUT": (x * 2)[:-1]}
        return {"OUTPUT": x * 2}
