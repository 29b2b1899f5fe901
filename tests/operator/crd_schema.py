"""The QuotaPolicy CRD's schema, checked offline as far as it can be.

What the API server does with a custom resource, and what is done here:

- structural defaulting (``default`` at every level, nested ``{}`` included): done;
- the OpenAPI v3 checks (types, enums, bounds, lengths, item counts): jsonschema;
- unknown fields: the API server prunes them, and with ``kubectl``'s default
  ``--validate=strict`` refuses them; here every object is closed
  (``additionalProperties: false``), which gives that refusal;
- ``x-kubernetes-validations`` (CEL): evaluated with cel-python (``matches``
  runs on RE2, as in the API server), with values typed as the API server
  types them (``number`` is a double), messages and ``fieldPath`` included;

Not done offline: the CEL cost budget (hence the ``maxLength`` and
``maxItems`` bounds, which keep it small), Kubernetes' CEL extension
libraries (the rules use none), ``format`` checks (``date-time``, ``date``),
``x-kubernetes-list-type`` uniqueness, and everything that needs an API
server (admission, server-side apply ownership, status-subresource rules).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts" / "medbook-operator" / "crds" / "quotapolicies.medbook.io.yaml"
EXAMPLES = ROOT / "k8s" / "examples"


@cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def schema(version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd()["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def spec_schema() -> dict[str, Any]:
    return schema()["properties"]["spec"]


# -- defaulting --------------------------------------------------------------------------


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Fill in defaults the way the API server does (a default is itself defaulted)."""
    if node.get("type") == "object" and isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif node.get("type") == "array" and isinstance(value, list) and "items" in node:
        return [apply_defaults(node["items"], item) for item in value]
    return value


# -- OpenAPI v3 -> JSON schema -------------------------------------------------------------


def to_jsonschema(node: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "format"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v, closed=closed) for k, v in value.items()}
        elif key == "items":
            out[key] = to_jsonschema(value, closed=closed)
        else:
            out[key] = value
    if (
        closed
        and node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# -- CEL -----------------------------------------------------------------------------------


def to_cel(node: dict[str, Any], value: Any) -> Any:
    """A JSON value as the API server hands it to CEL, typed by its schema."""
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties") or {}
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(props.get(k, {}), v) for k, v in value.items()}
        )
    if kind == "array":
        return celtypes.ListType([to_cel(node.get("items", {}), v) for v in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(int(value))
    return celpy.json_to_cel(value)


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def rules(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, rule) of the schema, for listing and compiling them."""
    for rule in node.get("x-kubernetes-validations") or ():
        yield path or ".", rule
    for name, sub in (node.get("properties") or {}).items():
        yield from rules(sub, f"{path}.{name}")
    if "items" in node:
        yield from rules(node["items"], f"{path}[*]")


def _cel_errors(node: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    for rule in node.get("x-kubernetes-validations") or ():
        result = _program(rule["rule"]).evaluate({"self": to_cel(node, value)})
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            where = path + rule.get("fieldPath", "")
            yield f"{where}: {' '.join(rule.get('message', rule['rule']).split())}"
    if isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in value:
                yield from _cel_errors(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            yield from _cel_errors(node["items"], item, f"{path}[{i}]")


# -- the whole check -------------------------------------------------------------------------


def admit(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default and validate a QuotaPolicy as the API server would: (defaulted object, errors)."""
    defaulted = apply_defaults(schema(), copy.deepcopy(obj))
    validator = jsonschema.Draft7Validator(to_jsonschema(schema()))
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '.'}: {error.message}"
        for error in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.absolute_path))
    ]
    if problems:  # CEL rules see only objects that passed the schema
        return defaulted, problems
    return defaulted, list(_cel_errors(schema(), defaulted, ""))
