"""A model that blocks until a gate file exists, so tests control when batches finish.

Parameters: ``gate`` (a file path; the model waits until it exists), ``entered`` (a file
the model appends one line to per execution, with the batch size, before waiting).
Returns OUTPUT = INPUT + 1.
"""

import os
import time

import numpy as np


class Gated:
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        params = self.config.parameters
        with open(params["entered"], "a") as marker:
            marker.write(f"{inputs['INPUT'].shape[0]} {inputs['INPUT'][:, 0].tolist()}\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(params["gate"]) and time.monotonic() < deadline:
            time.sleep(0.002)  # a blocked model, not test synchronisation
        return {"OUTPUT": inputs["INPUT"] + 1}
