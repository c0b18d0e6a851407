"""Reading a ModelDeployment: from a YAML file or a mapping, with errors a user can act on.

pydantic's own errors point at ``spec.nodes.3.router.weights.0.weight``; a user thinks in
node names and camelCase keys, so parse errors are rewritten into the same ``SpecError``
that ``validate`` raises ("node 'ab': router.weights[0].weight: ..."), with a
did-you-mean for misspelt keys.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from servegraph.operator.spec import KIND, ModelDeployment
from servegraph.operator.validation import SpecError, validate


def load_manifest(path: str | Path) -> ModelDeployment:
    """Read, parse and validate the ModelDeployment in a YAML file (multi-document allowed)."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError([f"{path} is not valid YAML: {error}"]) from None
    found = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(found) != 1:
        kinds = [d.get("kind") if isinstance(d, Mapping) else type(d).__name__ for d in documents]
        raise SpecError(
            [f"{path} must hold exactly one {KIND} document, found {len(found)} (kinds: {kinds})"]
        )
    deployment = parse_manifest(found[0])
    validate(deployment)
    return deployment


def parse_manifest(data: Mapping[str, Any]) -> ModelDeployment:
    """A ModelDeployment from a mapping (camelCase keys), structure only: see ``validate``."""
    try:
        return ModelDeployment.model_validate(data)
    except ValidationError as error:
        name = _get(data, ("metadata", "name"))
        problems = [_describe(data, e) for e in error.errors()]
        raise SpecError(list(dict.fromkeys(problems)), name if isinstance(name, str) else "") from None


def _get(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        if isinstance(data, Mapping) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _describe(data: Mapping[str, Any], error: Any) -> str:
    """One pydantic error as "node 'x': router.weights[0].weight: <what>, got <value>"."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    prefix: list[str] = []
    if loc[:2] == ("spec", "nodes") and len(loc) >= 3 and isinstance(loc[2], int):
        node = _get(data, loc[:3])
        name = node.get("name") if isinstance(node, Mapping) else None
        prefix.append(f"node '{name}'" if isinstance(name, str) and name else f"spec.nodes[{loc[2]}]")
        loc = loc[3:]
    field = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" if i else str(part)
        for i, part in enumerate(loc)
    )
    if field:
        prefix.append(field)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
        known = _known_fields(tuple(error["loc"])[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc else []
        if close:
            message += f"; did you mean '{close[0]}'?"
        elif known:
            message += f"; expected one of {', '.join(known)}"
    elif error["type"] != "missing":
        message += f", got {error['input']!r}"
    return ": ".join([*prefix, message])


def _known_fields(loc: tuple[int | str, ...]) -> list[str]:
    """The camelCase keys allowed at ``loc``, found by walking the models' annotations."""
    model: Any = ModelDeployment
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)), None
        )
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

