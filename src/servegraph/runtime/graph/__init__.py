"""Graph nodes: the same v2 server in another role (router, combiner, transformer).

A node process is configured by one ``NodeConfig`` (``config.py``) that the control plane
renders from a ModelDeployment, for Kubernetes and for ``servegraph run`` alike, and is
started with ``servegraph serve --node-config FILE``. It answers every v2 endpoint under the
deployment's model name (version "1"), so a client cannot tell a graph from a model.

Modules, one idea each:
    node.py         GraphNode: children, cached readiness, signature, stats, deadlines
    client.py       ChildClient: one child over v2 gRPC (tritonclient aio), errors naming it
    router.py       the Router role      strategies.py  how it picks a child
    bandits.py      EpsilonGreedy / ThompsonSampling over per-arm reward statistics
    feedback.py     which arm served each recent request id (bounded)
    state.py        bandit state on disk (atomic, debounced)
    shadow.py       Shadow's background copies (bounded, counted)
    combiner.py     the Combiner role and ``combine()``
    transformer.py  the Transformer role  transforms.py  its steps
    batch.py        the tensors flowing through steps   datafiles.py  parameter/reference files
    outlier.py      OutlierDetector      drift.py  DriftDetector (KS test on a sliding window)
    metrics.py      node-role Prometheus metrics   hosting.py  a node as the DataPlane's model source

Feedback (routers learn from it; other nodes pass it on to their children):
    HTTP  POST /v2/models/{model}[/versions/{v}]/feedback  {"id": "<request id>", "reward": 0.8}
          -> 200 {"node", "id", "reward", "route", "arm", "pulls", "mean_reward", "passed_on"}
    gRPC  ModelInfer with no inputs and the request parameters ``servegraph.feedback_id``
          (string) and ``servegraph.reward`` (number) -> a response with no outputs and
          parameters ``servegraph.feedback = "accepted"`` and ``servegraph.route``.
    An id the router does not remember (never routed, forgotten, already rewarded) is
    404 / NOT_FOUND; a reward a bandit cannot use is 400 / INVALID_ARGUMENT.
"""
