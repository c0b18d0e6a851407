"""A model whose load() fails, to check that the rest of the repository keeps serving."""


class Broken:
    def load(self) -> None:
        raise RuntimeError("weights are corrupt")

    def predict(self, inputs):  # pragma: no cover - never loaded
        return inputs
