import numpy as np


class TextLength:
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        text = inputs["TEXT"]
        lengths = np.vectorize(lambda b: len(b.decode("utf-8")), otypes=[np.int32])(text)
        upper = np.vectorize(lambda b: b.decode("utf-8").upper().encode("utf-8"), otypes=[object])(text)
        return {"LENGTH": lengths, "UPPER": upper}
