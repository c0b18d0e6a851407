"""Rules that span fields and nodes: the graph's shape, each node's settings, its edges.

``validate`` reports every problem at once, each naming the node (or edge) and showing the
bad value, because a user fixing a manifest should not have to fix one line per run.
Pure: no I/O, so the operator can run it on a custom resource and ``servegraph run`` on a
file with the same result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from urllib.parse import urlparse

from servegraph.operator.spec import ModelDeployment, Node, Step, TensorSignature

STORAGE_SCHEMES = ("file", "http", "https", "s3", "gs", "pvc")

OUTLIER_SCORE = TensorSignature(name="OUTLIER_SCORE", datatype="FP32", shape=[-1, 1])
IS_OUTLIER = TensorSignature(name="IS_OUTLIER", datatype="BOOL", shape=[-1, 1])
OUTLIER_OUTPUTS = (OUTLIER_SCORE, IS_OUTLIER)
"""What an OutlierDetector step adds to its transformer's answer (on input or output)."""

FLOATS = ("FP16", "FP32", "FP64")

_BLOCKS = {"Model": "model", "Router": "router", "Combiner": "combiner", "Transformer": "transformer"}

# Router fields that only one strategy reads; setting them for another is a mistake.
_ROUTER_FIELDS = {
    "weights": ("Weighted",),
    "header": ("Header",),
    "routes": ("Header",),
    "default": ("Header",),
    "epsilon": ("EpsilonGreedy",),
    "primary": ("Shadow",),
    "shadow_percent": ("Shadow",),
}


class SpecError(ValueError):
    """A ModelDeployment that cannot work; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], name: str = "") -> None:
        self.problems = list(problems)
        self.name = name
        subject = f"ModelDeployment '{name}'" if name else "ModelDeployment"
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{subject} is invalid ({count} problem{'s' * (count != 1)}):\n{lines}")


def validate(deployment: ModelDeployment) -> None:
    """Raise ``SpecError`` listing every problem of the deployment; return if there is none."""
    problems = _problems(deployment)
    if problems:
        raise SpecError(problems, deployment.metadata.name)


def _problems(deployment: ModelDeployment) -> list[str]:
    nodes = deployment.spec.nodes
    problems: list[str] = []
    if not nodes:
        problems.append("spec.nodes is empty; a graph needs at least one node")
    counts = Counter(node.name for node in nodes)
    problems += [
        f"node '{name}' is defined {count} times; node names must be unique"
        for name, count in counts.items()
        if count > 1
    ]
    by_name: dict[str, Node] = {}
    for node in nodes:
        by_name.setdefault(node.name, node)
    for node in nodes:
        problems += _node_problems(node, by_name)
    problems += _graph_problems(deployment.spec.entrypoint, nodes, by_name)
    problems += _signature_problems(by_name)
    # Two definitions of one name can repeat each other's problems: say each once.
    return list(dict.fromkeys(problems))


def _names(items: Iterable[str]) -> str:
    listed = ", ".join(f"'{i}'" for i in items)
    return listed or "none"


# ----------------------------------------------------------------------------- graph


def _graph_problems(entrypoint: str, nodes: list[Node], by_name: dict[str, Node]) -> Iterable[str]:
    if not entrypoint:
        yield "spec.entrypoint is empty; name the node that receives requests"
    elif entrypoint not in by_name:
        yield f"spec.entrypoint '{entrypoint}' is not a node; nodes are {_names(by_name)}"
    for cycle in _cycles(nodes, by_name):
        yield f"cycle {' -> '.join(repr(n) for n in cycle)}; the graph must be acyclic"
    if entrypoint in by_name:
        reached = _reachable(entrypoint, by_name)
        for name in by_name:
            if name not in reached:
                yield (
                    f"node '{name}' is not reachable from the entrypoint '{entrypoint}';"
                    " every node must be the entrypoint or below it"
                )


def _known_children(node: Node, by_name: dict[str, Node]) -> list[str]:
    return [c for c in dict.fromkeys(node.children) if c in by_name]


def _reachable(start: str, by_name: dict[str, Node]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for child in _known_children(by_name[todo.pop()], by_name):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _cycles(nodes: list[Node], by_name: dict[str, Node]) -> list[list[str]]:
    """Each cycle once, as a path that starts and ends on the same node."""
    found: list[list[str]] = []
    seen_sets: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(name: str, path: list[str], on_path: set[str]) -> None:
        path.append(name)
        on_path.add(name)
        for child in _known_children(by_name[name], by_name):
            if child == name:
                continue  # reported as "lists itself as a child"
            if child in on_path:
                cycle = path[path.index(child):] + [child]
                if frozenset(cycle) not in seen_sets:
                    seen_sets.add(frozenset(cycle))
                    found.append(cycle)
            elif child not in done:
                visit(child, path, on_path)
        path.pop()
        on_path.discard(name)
        done.add(name)

    for node in nodes:
        if node.name in by_name and node.name not in done:
            visit(node.name, [], set())
    return found


def topological_order(deployment: ModelDeployment, start: str | None = None) -> list[str]:
    """Nodes reachable from ``start`` (default: the entrypoint), children before parents.

    Expects a validated (acyclic) deployment; ties keep the order of ``spec.nodes``.
    """
    by_name = {n.name: n for n in reversed(deployment.spec.nodes)}
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        placed.add(name)
        for child in _known_children(by_name[name], by_name):
            place(child)
        order.append(name)

    place(start or deployment.spec.entrypoint)
    return order


# ----------------------------------------------------------------------------- nodes


def _node_problems(node: Node, by_name: dict[str, Node]) -> Iterable[str]:
    where = f"node '{node.name}'"
    expected = _BLOCKS[node.type]
    if getattr(node, expected) is None:
        yield f"{where}: type {node.type} needs a '{expected}' block"
    for other in _BLOCKS.values():
        if other != expected and getattr(node, other) is not None:
            yield f"{where}: type {node.type} takes a '{expected}' block, not '{other}'"

    seen: set[str] = set()
    for child in node.children:
        if child in seen:
            yield f"{where}: child '{child}' is listed twice"
        seen.add(child)
        if child == node.name:
            yield f"{where}: lists itself as a child"
        elif child not in by_name:
            yield f"{where}: child '{child}' is not a node; nodes are {_names(by_name)}"

    children = list(dict.fromkeys(node.children))
    if node.type == "Model":
        yield from _model_problems(node, where)
    elif node.type == "Router":
        yield from _router_problems(node, children, where)
    elif node.type == "Combiner":
        yield from _combiner_problems(node, children, where)
    else:
        yield from _transformer_problems(node, children, where)


def _model_problems(node: Node, where: str) -> Iterable[str]:
    if node.children:
        yield f"{where}: a Model has no children, got {node.children}"
    if node.timeout_ms is not None:
        yield (
            f"{where}: timeoutMs applies to Router, Combiner and Transformer nodes;"
            " a Model's queue timeout is batching.timeoutMicroseconds"
        )
    model = node.model
    if model is None:
        return
    uri = model.storage_uri.strip()
    if not uri:
        yield f"{where}: model.storageUri is empty; say where the model folder is"
    elif "://" in uri and urlparse(uri).scheme not in STORAGE_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        yield (
            f"{where}: model.storageUri '{uri}' has an unsupported scheme"
            f" '{urlparse(uri).scheme}'; use a relative path or {schemes}"
        )
    policy = model.version_policy
    if policy is not None:
        chosen = [k for k in ("latest", "specific", "all") if getattr(policy, k) is not None]
        if len(chosen) > 1:
            yield f"{where}: model.versionPolicy sets {chosen}; choose one of latest, specific, all"
    batching = model.batching
    if batching is not None and batching.max_batch_size is not None:
        limit = batching.max_batch_size
        too_big = [b for b in batching.preferred_batch_sizes or [] if b > limit]
        if too_big:
            yield f"{where}: batching.preferredBatchSizes {too_big} exceed maxBatchSize {limit}"
        buckets = batching.shape_buckets
        too_big = [b for b in (buckets.batch_sizes if buckets else []) if b > limit]
        if too_big:
            yield f"{where}: batching.shapeBuckets.batchSizes {too_big} exceed maxBatchSize {limit}"


def _weights_problems(
    where: str, what: str, weights: list[tuple[str, float]], children: list[str]
) -> Iterable[str]:
    named: set[str] = set()
    for child, _ in weights:
        if child in named:
            yield f"{where}: {what} weights name '{child}' twice"
        named.add(child)
        if child not in children:
            yield (
                f"{where}: {what} weight names '{child}', which is not a child"
                f" (children: {_names(children)})"
            )
    missing = [c for c in children if c not in named]
    if missing:
        yield (
            f"{where}: {what} weights miss children {_names(missing)};"
            " give every child a weight (0 is allowed)"
        )


def _router_problems(node: Node, children: list[str], where: str) -> Iterable[str]:
    if len(children) < 2:
        yield f"{where}: a Router needs at least 2 children, got {len(children)} ({_names(children)})"
    router = node.router
    if router is None:
        return
    strategy = router.strategy
    for field, strategies in _ROUTER_FIELDS.items():
        if getattr(router, field) is not None and strategy not in strategies:
            camel = "".join(w.capitalize() if i else w for i, w in enumerate(field.split("_")))
            yield f"{where}: router.{camel} applies to {' and '.join(strategies)} routers, not {strategy}"
    if strategy == "Weighted" and router.weights:
        pairs = [(w.child, w.weight) for w in router.weights]
        yield from _weights_problems(where, "router", pairs, children)
        total = sum(w for _, w in pairs)
        if abs(total - 100) > 1e-6:
            yield f"{where}: router weights sum to {total:g}, expected 100"
    elif strategy == "Header":
        if not router.header:
            yield f"{where}: a Header router needs router.header, the header or parameter to route on"
        if not router.routes and router.default is None:
            yield f"{where}: a Header router needs routes (value -> child) or a default"
        values: set[str] = set()
        for route in router.routes or []:
            if route.value in values:
                yield f"{where}: router route value '{route.value}' appears twice"
            values.add(route.value)
            if route.child not in children:
                yield (
                    f"{where}: router route '{route.value}' names '{route.child}',"
                    f" which is not a child (children: {_names(children)})"
                )
        if router.default is not None and router.default not in children:
            yield (
                f"{where}: router default '{router.default}' is not a child"
                f" (children: {_names(children)})"
            )
    elif strategy == "Shadow" and router.primary is not None and router.primary not in children:
        yield f"{where}: router primary '{router.primary}' is not a child (children: {_names(children)})"


def _combiner_problems(node: Node, children: list[str], where: str) -> Iterable[str]:
    if len(children) < 2:
        yield f"{where}: a Combiner needs at least 2 children, got {len(children)} ({_names(children)})"
    combiner = node.combiner
    if combiner is None:
        return
    if combiner.method == "WeightedMean":
        if not combiner.weights:
            yield f"{where}: WeightedMean needs combiner weights, one per child"
        else:
            pairs = [(w.child, w.weight) for w in combiner.weights]
            yield from _weights_problems(where, "combiner", pairs, children)
            if sum(w for _, w in pairs) <= 0:
                yield f"{where}: combiner weights sum to 0; at least one must be positive"
    elif combiner.weights is not None:
        yield f"{where}: combiner.weights applies to WeightedMean, not {combiner.method}"
    if combiner.concat_axis is not None and combiner.method != "Concat":
        yield f"{where}: combiner.concatAxis applies to Concat, not {combiner.method}"
    if combiner.quorum is not None:
        if combiner.on_child_failure != "Skip":
            yield f"{where}: combiner.quorum applies only with onChildFailure: Skip"
        if combiner.quorum > len(children):
            yield f"{where}: combiner quorum {combiner.quorum} exceeds its {len(children)} children"


def _transformer_problems(node: Node, children: list[str], where: str) -> Iterable[str]:
    if len(children) != 1:
        yield f"{where}: a Transformer needs exactly 1 child, got {len(children)} ({_names(children)})"
    transformer = node.transformer
    if transformer is None:
        return
    if not transformer.input and not transformer.output:
        yield f"{where}: a Transformer needs at least one input or output step"
    detectors = 0
    for side in ("input", "output"):
        for index, step in enumerate(getattr(transformer, side)):
            detectors += step.kind == "OutlierDetector"
            yield from _step_problems(step, f"{where}: transformer.{side}[{index}] ({step.kind})")
    if detectors > 1:
        yield (
            f"{where}: {detectors} OutlierDetector steps would each add"
            f" {OUTLIER_SCORE.name} and {IS_OUTLIER.name}; use one"
        )


def _step_problems(step: Step, where: str) -> Iterable[str]:
    """What runtime/graph/transforms.py would refuse at start, said before anything starts."""
    if step.kind == "StandardScaler":
        yield from _pair_problems(where, ("mean", step.mean), ("scale", step.scale), step.params_file)
        if step.scale is not None and 0 in step.scale:
            yield f"{where}: scale {step.scale} has a 0; it divides"
    elif step.kind == "MinMaxScaler":
        yield from _pair_problems(where, ("min", step.min), ("max", step.max), step.params_file)
        low, high = step.min, step.max
        if low is not None and high is not None and any(h < lo for lo, h in zip(low, high)):
            yield f"{where}: a max is below its min, got min {low} max {high}"
    elif step.kind == "OutlierDetector" and not step.reference_file:
        if step.method == "mahalanobis":
            yield f"{where}: needs referenceFile; mahalanobis needs the reference's covariance"
        elif step.mean is None or step.scale is None:
            yield f"{where}: needs referenceFile, or inline mean and scale"
        else:
            yield from _pair_problems(where, ("mean", step.mean), ("scale", step.scale), "")
            if any(v <= 0 for v in step.scale):
                yield f"{where}: scale {step.scale} must be > 0 everywhere"
    elif step.kind == "DriftDetector" and not step.reference_file:
        yield f"{where}: needs referenceFile, the reference data to compare against"
    elif step.kind == "Python" and not step.file:
        yield f"{where}: needs file, the .py file with the user's class"
    if step.feature_range is not None and step.feature_range[0] >= step.feature_range[1]:
        yield f"{where}: featureRange {step.feature_range} must be [low, high] with low < high"


def _pair_problems(
    where: str,
    first: tuple[str, list[float] | None],
    second: tuple[str, list[float] | None],
    params_file: str | None,
) -> Iterable[str]:
    """Per-feature parameters that come as a pair: both given (or a file), one per feature."""
    (a_name, a), (b_name, b) = first, second
    if not params_file and (a is None or b is None):
        yield f"{where}: needs {a_name} and {b_name}, or paramsFile"
    elif a is not None and b is not None and len(a) != len(b):
        yield f"{where}: {a_name} has {len(a)} values but {b_name} has {len(b)}"


# ----------------------------------------------------------------------------- signatures


def _describe(tensor: TensorSignature) -> str:
    return f"{tensor.datatype} {tensor.shape}"


def _shapes_fit(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _signature_problems(by_name: dict[str, Node]) -> Iterable[str]:
    for node in by_name.values():
        if node.signature is not None:
            for side in ("inputs", "outputs"):
                names = [t.name for t in getattr(node.signature, side)]
                for name in dict.fromkeys(n for n in names if names.count(n) > 1):
                    count = names.count(name)
                    yield f"node '{node.name}': signature {side[:-1]} '{name}' is declared {count} times"
    for node in by_name.values():
        children = [by_name[c] for c in _known_children(node, by_name)]
        if node.type == "Transformer" and node.transformer is not None:
            yield from _transformer_signature_problems(node, children)
        elif node.type == "Router":
            for child in children:
                yield from _input_edge(node, child)
                yield from _output_edge(node, child)
        elif node.type == "Combiner" and node.combiner is not None:
            method = node.combiner.method
            axis = node.combiner.concat_axis or 1
            for child in children:
                yield from _input_edge(node, child)
                if child.signature is not None:
                    merged = [_merged(t, method, axis) for t in child.signature.outputs]
                    yield from _output_edge(node, child, produced=merged, after=f" after {method}")
            yield from _sibling_outputs(node, children, method, axis)


def _by_name(tensors: Iterable[TensorSignature]) -> dict[str, TensorSignature]:
    return {t.name: t for t in tensors}


def _input_edge(
    parent: Node, child: Node, sent: list[TensorSignature] | None = None, after: str = ""
) -> Iterable[str]:
    """What the parent sends (its inputs, or ``sent``: after its steps) is what the child accepts."""
    if parent.signature is None or child.signature is None:
        return
    edge = f"edge '{parent.name}' -> '{child.name}'"
    sends = _by_name(parent.signature.inputs if sent is None else sent)
    accepts = _by_name(child.signature.inputs)
    if not sends or not accepts:
        return
    for name, want in accepts.items():
        got = sends.get(name)
        if got is None:
            yield (
                f"{edge}: the child needs input '{name}' ({_describe(want)}),"
                " which the parent does not send"
            )
        elif got.datatype != want.datatype or not _shapes_fit(got.shape, want.shape):
            yield (
                f"{edge}: input '{name}' is {_describe(got)} on the parent{after}"
                f" but the child accepts {_describe(want)}"
            )
    for name in sends:
        if name not in accepts:
            yield f"{edge}: the parent sends input '{name}', which the child does not accept"


def _output_edge(
    parent: Node,
    child: Node,
    declared: list[TensorSignature] | None = None,
    produced: list[TensorSignature] | None = None,
    after: str = "",
) -> Iterable[str]:
    """What the child returns (``produced``: after the parent's merge) is what the parent declares."""
    if parent.signature is None or child.signature is None:
        return
    edge = f"edge '{parent.name}' -> '{child.name}'"
    returns = _by_name(parent.signature.outputs if declared is None else declared)
    made = _by_name(child.signature.outputs if produced is None else produced)
    if not returns or not made:
        return
    for name, want in returns.items():
        got = made.get(name)
        if got is None:
            yield f"{edge}: the parent returns output '{name}', which the child does not produce"
        elif got.datatype != want.datatype or not _shapes_fit(got.shape, want.shape):
            yield (
                f"{edge}: output '{name}' is {_describe(got)} from the child{after}"
                f" but the parent returns {_describe(want)}"
            )
    for name in made:
        if name not in returns:
            yield f"{edge}: the child produces output '{name}', which the parent does not declare"


def _merged(tensor: TensorSignature, method: str, axis: int) -> TensorSignature:
    """What a Combiner makes of one child output (runtime/graph/combiner.py's rules).

    Mean and WeightedMean average integers as FP64; MajorityVote over floating scores
    returns the winning class index as INT64 [..., 1]; Concat's axis grows by an amount
    the child alone does not know.
    """
    datatype, shape = tensor.datatype, list(tensor.shape)
    if method in ("Mean", "WeightedMean") and datatype not in FLOATS:
        datatype = "FP64"
    elif method == "MajorityVote" and datatype in FLOATS:
        datatype, shape = "INT64", [*shape[:-1], 1]
    elif method == "Concat" and axis < len(shape):
        shape[axis] = -1
    return TensorSignature(name=tensor.name, datatype=datatype, shape=shape)


def _sibling_outputs(node: Node, children: list[Node], method: str, axis: int) -> Iterable[str]:
    """A Combiner merges each output of one child with the same output of the others."""
    declared = [c for c in children if c.signature is not None and c.signature.outputs]
    if len(declared) < 2:
        return
    first = declared[0]
    assert first.signature is not None
    reference = _by_name(first.signature.outputs)
    where = f"node '{node.name}': {method} needs the same outputs from every child, but"
    for other in declared[1:]:
        assert other.signature is not None
        theirs = _by_name(other.signature.outputs)
        for name, want in reference.items():
            got = theirs.get(name)
            if got is None:
                yield f"{where} '{other.name}' has no output '{name}' that '{first.name}' has"
                continue
            # Concat joins along one axis, so only that axis may differ.
            shape_a, shape_b = list(want.shape), list(got.shape)
            if method == "Concat" and len(shape_a) == len(shape_b) and axis < len(shape_a):
                shape_a[axis] = shape_b[axis] = -1
            if got.datatype != want.datatype or not _shapes_fit(shape_a, shape_b):
                yield (
                    f"{where} output '{name}' is {_describe(want)} from '{first.name}'"
                    f" and {_describe(got)} from '{other.name}'"
                )
        for name in theirs:
            if name not in reference:
                yield f"{where} '{other.name}' has output '{name}' that '{first.name}' has not"


def _after_steps(tensors: list[TensorSignature], steps: list[Step]) -> list[TensorSignature] | None:
    """The tensors once ``steps`` ran over them (runtime/graph/transforms.py's rules); None if unknowable.

    Scalers keep floating tensors' datatypes and turn integer tensors they name into FP32;
    detectors change nothing they are given; a Python step may change anything.
    """
    if any(step.kind == "Python" for step in steps):
        return None
    result = list(tensors)
    for step in steps:
        if step.kind in ("StandardScaler", "MinMaxScaler") and step.tensors:
            result = [
                t.model_copy(update={"datatype": "FP32"})
                if t.name in step.tensors and t.datatype not in FLOATS
                else t
                for t in result
            ]
    return result


def _transformer_signature_problems(node: Node, children: list[Node]) -> Iterable[str]:
    transformer = node.transformer
    assert transformer is not None
    where = f"node '{node.name}'"
    inputs = node.signature.inputs if node.signature else []
    outputs = node.signature.outputs if node.signature else []
    if inputs:
        names = [t.name for t in inputs]
        for index, step in enumerate(transformer.input):
            for tensor in step.tensors:
                if tensor not in names:
                    yield (
                        f"{where}: transformer.input[{index}] ({step.kind}) names tensor '{tensor}',"
                        f" which is not among the node's inputs ({_names(names)})"
                    )
    steps = [*transformer.input, *transformer.output]
    added = OUTLIER_OUTPUTS if any(s.kind == "OutlierDetector" for s in steps) else ()
    if outputs and added:
        declared = _by_name(outputs)
        for extra in added:
            got = declared.get(extra.name)
            if got is None:
                yield (
                    f"{where}: its OutlierDetector adds output '{extra.name}' ({_describe(extra)}),"
                    " which the node's signature does not declare"
                )
            elif got.datatype != extra.datatype or not _shapes_fit(got.shape, extra.shape):
                yield (
                    f"{where}: output '{extra.name}' is declared {_describe(got)}"
                    f" but the OutlierDetector produces {_describe(extra)}"
                )
    sent = _after_steps(inputs, transformer.input)
    # What the child must return: the node's outputs less what its detector adds.
    passed_through = [t for t in outputs if t.name not in {a.name for a in added}]
    for child in children:
        produced = child.signature.outputs if child.signature else []
        if produced:
            names = [t.name for t in produced]
            for index, step in enumerate(transformer.output):
                for tensor in step.tensors:
                    if tensor not in names:
                        yield (
                            f"{where}: transformer.output[{index}] ({step.kind}) names tensor"
                            f" '{tensor}', which child '{child.name}' does not produce ({_names(names)})"
                        )
        if sent is not None:
            after = " after the input steps" if sent != inputs else ""
            yield from _input_edge(node, child, sent=sent, after=after)
        returned = _after_steps(produced, transformer.output)
        if returned is not None and passed_through:
            after = " after the output steps" if returned != produced else ""
            yield from _output_edge(node, child, declared=passed_through, produced=returned, after=after)
