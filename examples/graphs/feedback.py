"""Drive the bandit example and teach it with feedback.

    servegraph run examples/graphs/bandit.yaml &      # entrypoint on 127.0.0.1:8000/8001
    python examples/graphs/feedback.py --requests 300

Each request's answer says which arm served it (parameter ``servegraph.route``); the
caller scores the answer and posts only the request id and a reward to the router's
feedback endpoint. Here the "truth" is that class 0 is right when the features sum to a
positive number; the script prints how often each arm was chosen as the router learns.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from collections import Counter

import numpy as np
import tritonclient.http as httpclient


def send_feedback(url: str, model: str, request_id: str, reward: float) -> None:
    body = json.dumps({"id": request_id, "reward": reward}).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/feedback", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000", help="the entrypoint's HTTP address")
    parser.add_argument("--model", default="bandit", help="the deployment's name")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(args.url)
    rng = np.random.default_rng(0)
    chosen: Counter[str] = Counter()
    rewards: Counter[str] = Counter()
    for i in range(args.requests):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        inp = httpclient.InferInput("INPUT", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(args.model, [inp], request_id=f"req-{i}")
        route = result.get_response()["parameters"]["servegraph.route"]
        correct = int(result.as_numpy("PROBS")[0].argmax() == (0 if x.sum() > 0 else 1))
        send_feedback(args.url, args.model, f"req-{i}", float(correct))
        chosen[route] += 1
        rewards[route] += correct
        if (i + 1) % 100 == 0:
            share = ", ".join(f"{arm}: {n} picks, {rewards[arm] / n:.0%} right" for arm, n in sorted(chosen.items()))
            print(f"after {i + 1} requests: {share}")


if __name__ == "__main__":
    main()
