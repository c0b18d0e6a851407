"""The bench MLP on PyTorch, on the GPU when there is one: servegraph's python backend.

Same weights as examples/models/mlp/1/model.py (numpy's ``default_rng(seed)``, drawn in the
same order), so the load generator's check against the numpy model holds; TF32 is off so
the GPU's matmuls stay within its tolerance. On a GPU a batch costs tens of microseconds,
which leaves the front end (transport, codecs, batcher) as what limits the server: what
``bench/frontend_workers.py --model mlp-torch`` measures.
"""

import numpy as np
import torch


class MLP:
    def load(self) -> None:
        rng = np.random.default_rng(int(self.config.parameters.get("seed", "0")))
        sizes = [512, 2048, 2048, 16]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            weight = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
            self.layers.append(
                (torch.from_numpy(weight).to(self.device), torch.zeros(n_out, dtype=torch.float32, device=self.device))
            )

    def predict(self, inputs: dict) -> dict:
        with torch.inference_mode():
            x = torch.from_numpy(np.require(inputs["INPUT"], np.float32, ["C", "W"])).to(self.device)  # a read-only view is copied
            for i, (weight, bias) in enumerate(self.layers):
                x = torch.addmm(bias, x, weight)
                if i < len(self.layers) - 1:
                    x.relu_()
            return {"OUTPUT": x.cpu().numpy()}
