"""What a kube-apiserver does with a CRD and a custom resource, as far as it can be done here.

- ``structural_problems``: the structural-schema rules the API server enforces when the CRD is
  created (every node typed, no ``$ref``/``oneOf``/``allOf``, arrays with ``items``, ...), plus
  this project's own: free-form only at ``status.kopf``, list-map keys required, and every
  list and string a CEL rule walks (or that holds a rule) bounded, because the API server
  prices a rule by those bounds and refuses a CRD whose rules cost too much.
- ``admit``: a custom resource through pruning of nulls, defaulting, the OpenAPI schema (as
  JSON Schema draft 4, which has OpenAPI's boolean exclusive bounds), list-map and set
  uniqueness, and every CEL rule, evaluated with cel-expr-python (Google's cel-cpp).

Not emulated: the API server's CEL cost estimate itself (only the bounds it relies on),
Kubernetes-only CEL functions other than the lists library's ``sum()`` (declared here),
metadata validation, and ``oldSelf`` transition rules (this CRD has none).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
from cel_expr_python import cel

Schema = dict[str, Any]

# What apiextensions' JSONSchemaProps can hold that this project uses; anything else is flagged.
_KNOWN_KEYS = {
    "type",
    "description",
    "default",
    "enum",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}
_NEVER = ("$ref", "$defs", "definitions", "oneOf", "allOf", "not", "const")
_SHAPE = ("type", "properties", "items", "additionalProperties")
_MACROS = ("all", "exists", "exists_one", "map", "filter")


# ----------------------------------------------------------------------------- structure


def structural_problems(root: Schema, free_form: tuple[str, ...] = ("status.kopf",)) -> list[str]:
    """Every way ``root`` (an openAPIV3Schema) is not a structural schema the project accepts."""
    problems: list[str] = []
    if root.get("properties", {}).get("metadata") not in (None, {"type": "object"}):
        problems.append("metadata: must be just {type: object} at the root")
    for path, schema, bounded in _walk(root):
        problems += [f"{path}: {p}" for p in _node_problems(path, schema, free_form)]
        if "x-kubernetes-validations" in schema and not bounded:
            problems.append(f"{path}: holds CEL rules under a list without maxItems")
        for rule in schema.get("x-kubernetes-validations", []):
            problems += [f"{path}: rule {rule.get('rule')!r}: {p}" for p in _rule_problems(schema, rule)]
    return problems


def _walk(schema: Schema, path: str = "", bounded: bool = True) -> Iterator[tuple[str, Schema, bool]]:
    """Every schema node: its path (``spec.nodes[].name``), the node, whether enclosing lists are bounded."""
    yield path or "<root>", schema, bounded
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name, bounded)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]", bounded and "maxItems" in schema)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}", bounded)


def _node_problems(path: str, schema: Schema, free_form: tuple[str, ...]) -> Iterator[str]:
    for key in _NEVER:
        if key in schema:
            yield f"{key} is not allowed in a structural schema"
    for branch in schema.get("anyOf", []):
        if any(k in branch for k in _SHAPE):
            yield "anyOf may not carry types or fields"
    unknown = set(schema) - _KNOWN_KEYS - set(_NEVER) - {"anyOf"}
    if unknown:
        yield f"unknown keys {sorted(unknown)}"
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if kind is not None:
            yield "x-kubernetes-int-or-string takes no type"
    elif kind not in ("object", "array", "string", "integer", "number", "boolean"):
        yield f"needs a type, got {kind!r}"
    if kind == "array" and not isinstance(schema.get("items"), dict):
        yield "an array needs items"
    if "properties" in schema and "additionalProperties" in schema:
        yield "properties and additionalProperties exclude each other"
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], dict):
        yield "additionalProperties must be a schema, not a boolean"
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not isinstance(schema[key], bool):
            yield f"{key} must be a boolean (OpenAPI v3.0)"
    if schema.get("x-kubernetes-preserve-unknown-fields") and path not in free_form:
        yield "x-kubernetes-preserve-unknown-fields outside " + ", ".join(free_form)
    list_type = schema.get("x-kubernetes-list-type")
    items = schema.get("items", {})
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        if not keys:
            yield "a list-type map needs x-kubernetes-list-map-keys"
        for key in keys:
            field = items.get("properties", {}).get(key)
            if field is None:
                yield f"list-map key {key!r} is not a field of the items"
            elif key not in items.get("required", []) and "default" not in field:
                yield f"list-map key {key!r} must be required or defaulted"
    elif list_type == "set" and items.get("type") in ("object", "array"):
        yield "a list-type set needs scalar items"
    elif list_type not in (None, "atomic", "set"):
        yield f"unknown x-kubernetes-list-type {list_type!r}"
    if "x-kubernetes-list-map-keys" in schema and list_type != "map":
        yield "x-kubernetes-list-map-keys without x-kubernetes-list-type: map"
    if "default" in schema:
        # The API server refuses a CRD whose defaults its own schema would refuse.
        bare = {k: v for k, v in schema.items() if k not in ("default", "x-kubernetes-validations")}
        for error in jsonschema.Draft4Validator(json_schema(bare)).iter_errors(schema["default"]):
            yield f"default {schema['default']!r} is invalid: {error.message}"


def _rule_problems(schema: Schema, rule: dict[str, Any]) -> Iterator[str]:
    for key in ("rule", "message"):
        text = rule.get(key)
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            yield f"needs a one-line {key}"
    unknown = set(rule) - {"rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf"}
    if unknown:
        yield f"unknown keys {sorted(unknown)}"
    if "fieldPath" in rule:
        try:
            _resolve(schema, [p for p in rule["fieldPath"].split(".") if p])
        except KeyError as error:
            yield f"fieldPath {rule['fieldPath']!r} does not resolve: {error}"
    for expression in (rule.get("rule", ""), rule.get("messageExpression", "")):
        yield from _unbounded(schema, expression)


# ----------------------------------------------------------------------------- CEL bounds


def _strip_literals(expression: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)


_CHAIN = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)")
_BINDING = re.compile(
    r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.(?:" + "|".join(_MACROS) + r")\(\s*(\w+)\s*,"
)


def _resolve(schema: Schema, parts: list[str]) -> list[Schema]:
    """The schemas a field path walks through (``KeyError`` on a field that is not there)."""
    walked = []
    for part in parts:
        properties = schema.get("properties", {})
        if part not in properties:
            raise KeyError(part)
        schema = properties[part]
        walked.append(schema)
    return walked


def walked_fields(schema: Schema, expression: str) -> list[tuple[str, Schema]]:
    """The fields a CEL expression on ``schema`` reads, each a (path, schema) pair.

    ``has(x)`` and ``size(x)`` / ``x.size()`` cost the same whatever x holds: those are
    resolved (a misspelt field still fails) but not returned.
    """
    text = _strip_literals(expression)
    cheap = [m.span(1) for m in re.finditer(r"(?:has|size)\(([^()]*)\)", text)]
    roots: dict[str, tuple[str, Schema]] = {"self": ("self", schema)}
    for match in _BINDING.finditer(text):
        chain, variable = match.group(1), match.group(2)
        head, *rest = chain.split(".")
        if head in roots:
            path, at = roots[head]
            walked = _resolve(at, rest)
            target = walked[-1] if walked else at
            roots[variable] = (f"{path}.{'.'.join(rest)}[]", target.get("items", {}))
    found: list[tuple[str, Schema]] = []
    for match in _CHAIN.finditer(text):
        head = match.group(1)
        if head not in roots:
            continue
        parts = [p for p in match.group(2).split(".") if p]
        method = parts.pop() if text[match.end() : match.end() + 1] == "(" else None
        path, at = roots[head]
        walked = _resolve(at, parts)
        if method == "size" or any(a <= match.start() and match.end() <= b for a, b in cheap):
            walked = walked[:-1]  # only its size is read
        for index, field in enumerate(walked):
            found.append((".".join([path, *parts[: index + 1]]), field))
    return found


def _unbounded(schema: Schema, expression: str) -> Iterator[str]:
    try:
        fields = walked_fields(schema, expression)
    except KeyError as error:
        yield f"names a field that is not there: {error}"
        return
    for path, field in fields:
        kind = field.get("type")
        if kind == "array" and "maxItems" not in field:
            yield f"walks {path}, a list without maxItems"
        elif kind == "string" and "maxLength" not in field and "enum" not in field:
            yield f"reads {path}, a string without maxLength"


# ----------------------------------------------------------------------------- admission


def admit(obj: dict[str, Any], root: Schema) -> list[str]:
    """The API server's complaints about creating ``obj`` (a custom resource); [] when it is let in."""
    obj = _defaulted(_without_nulls(copy.deepcopy(obj)), root)
    errors = [
        f"{_path(error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft4Validator(json_schema(root)).iter_errors(obj)
    ]
    errors += _duplicates(obj, root, "")
    errors += [message for message, _ in cel_failures(obj, root)]
    return errors


def _path(parts: Any) -> str:
    """``spec.nodes[3].type``, as the API server writes a field path."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "<root>"


def _without_nulls(value: Any) -> Any:
    # Fields that are not nullable lose a null before defaulting (apiextensions v1).
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _defaulted(value: Any, schema: Schema) -> Any:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _defaulted(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                value[name] = _defaulted(value[name], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_defaulted(v, schema["items"]) for v in value]
    return value


def json_schema(schema: Schema) -> Schema:
    """openAPIV3Schema as JSON Schema (draft 4): int-or-string as anyOf, unknown fields refused
    (the API server prunes them, and kubectl's strict field validation refuses them), no
    ``x-kubernetes-*`` keys."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema:
        out["properties"] = {k: json_schema(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = json_schema(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = json_schema(schema["additionalProperties"])
    elif "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _duplicates(value: Any, schema: Schema, path: str) -> list[str]:
    errors: list[str] = []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        list_type = schema.get("x-kubernetes-list-type")
        seen: list[Any] = []
        for index, item in enumerate(value):
            if list_type == "map" and isinstance(item, dict):
                key = {k: item.get(k) for k in schema["x-kubernetes-list-map-keys"]}
            elif list_type == "set":
                key = item
            else:
                key = None
            if key is not None:
                if key in seen:
                    errors.append(f"{path}[{index}]: Duplicate value: {key!r}")
                seen.append(key)
            errors += _duplicates(item, schema["items"], f"{path}[{index}]")
    elif isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _duplicates(value[name], sub, f"{path}.{name}" if path else name)
    return errors


# ----------------------------------------------------------------------------- CEL


def _sum(values: list[Any]) -> float:
    return float(sum(values))


_ENV = cel.NewEnv(
    variables={"self": cel.Type.DYN},
    functions=[
        # Kubernetes' lists library (k8s.io/apiserver/pkg/cel/library): <list<double>>.sum().
        cel.FunctionDecl(
            "sum",
            [
                cel.Overload(
                    "list_double_sum",
                    cel.Type.DOUBLE,
                    [cel.Type.List(cel.Type.DOUBLE)],
                    is_member=True,
                    impl=_sum,
                )
            ],
        )
    ],
)
_COMPILED: dict[str, Any] = {}


def compile_rule(expression: str) -> Any:
    """A CEL expression compiled once (raises on a syntax or type error)."""
    if expression not in _COMPILED:
        _COMPILED[expression] = _ENV.compile(expression)
    return _COMPILED[expression]


def evaluate(expression: str, value: Any) -> Any:
    """``expression`` with ``self`` = value; raises on an evaluation error (the API server rejects)."""
    result = compile_rule(expression).eval(data={"self": value})
    if result.type() == cel.Type.ERROR:
        raise ValueError(f"{expression!r}: {result!r}")
    return result.value()


def cel_value(value: Any, schema: Schema) -> Any:
    """The value as the API server hands it to CEL: a ``number`` field is a double even if written 2."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: cel_value(v, properties.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [cel_value(v, schema.get("items", {})) for v in value]
    return value


def cel_failures(value: Any, schema: Schema, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every CEL rule ``value`` fails: (the API server's message, the rule)."""
    errors: list[tuple[str, dict[str, Any]]] = []
    rules = schema.get("x-kubernetes-validations", [])
    if rules:
        own = cel_value(value, schema)
        for rule in rules:
            try:
                passed = evaluate(rule["rule"], own)
            except ValueError as error:
                errors.append((f"{path or '<root>'}: evaluation error: {error}", rule))
                continue
            if not passed:
                message = rule["message"]
                if "messageExpression" in rule:
                    try:
                        message = evaluate(rule["messageExpression"], own)
                    except ValueError:
                        pass
                errors.append((f"{path or '<root>'}{rule.get('fieldPath', '')}: {message}", rule))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += cel_failures(value[name], sub, f"{path}.{name}" if path else name)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_failures(item, schema["items"], f"{path}[{index}]")
    return errors
