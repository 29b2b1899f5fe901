"""The QuotaPolicy CRD's schema, applied to objects offline as far as it can be.

Loading the CRD runs the checks kube-apiserver makes before it takes a CRD
(:mod:`tests.operator.crd_checks`: structure, every ``default`` against its
schema and CEL rules, list types, rule costs): a CRD the server would refuse
fails every test that uses it, with the server's message.

What the API server does with a custom resource, and what is done here:

- structural defaulting (``default`` at every level, nested ``{}`` included): done;
- the OpenAPI v3 checks (types, enums, bounds, lengths, item counts) and the
  ``format`` of strings (``date``, ``date-time``, as kube-openapi parses them): jsonschema;
- ``x-kubernetes-list-type``: ``set`` items and ``map`` keys must be unique: done;
- unknown fields: the API server prunes them, and with ``kubectl``'s default
  ``--validate=strict`` refuses them; here every object is closed
  (``additionalProperties: false``), which gives that refusal;
- ``x-kubernetes-validations`` (CEL): evaluated with cel-python (``matches``
  runs on RE2, as in the API server), with values typed as the API server
  types them (``number`` is a double), messages and ``fieldPath`` included;
  a rule that cannot be evaluated (a missing key) is an error, as in the server.

Not done offline: the CEL runtime cost limit per call (the static estimate is
checked when the CRD loads), Kubernetes' CEL extension libraries (the rules use
none), CEL type checking, and everything that needs an API server (admission,
server-side apply ownership, status-subresource rules, ratcheting).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    """The chart's CRD, once the API server's checks on a new CRD have passed."""
    from tests.operator import crd_checks  # they use the object checks below

    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    problems = crd_checks.check(loaded)
    if problems:
        raise crd_checks.Refused(loaded["metadata"]["name"], problems)
    return loaded


def schema(version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd()["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def spec_schema() -> dict[str, Any]:
    return schema()["properties"]["spec"]


# -- defaulting and pruning ------------------------------------------------------------------


def apply_defaults(node: Mapping[str, Any], value: Any) -> Any:
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


def pruned(node: Mapping[str, Any], value: Any) -> Any:
    """``value`` without the fields ``node`` does not declare (what the API server stores)."""
    if isinstance(value, dict) and node.get("type") == "object":
        if node.get("x-kubernetes-preserve-unknown-fields") or "properties" not in node:
            return value
        properties = node["properties"]
        return {k: pruned(properties[k], v) for k, v in value.items() if k in properties}
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [pruned(node["items"], item) for item in value]
    return value


# -- OpenAPI v3 -> JSON schema ---------------------------------------------------------------

_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:?\d{2})$"
)
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    return not isinstance(value, str) or (bool(dt.date.fromisoformat(value)) and len(value) == 10)


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        return False
    dt.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return True


def to_jsonschema(node: Mapping[str, Any], *, closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
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


def schema_problems(node: Mapping[str, Any], value: Any) -> list[str]:
    """The OpenAPI v3 checks of ``value`` against ``node``, as ``.path: reason`` lines."""
    validator = jsonschema.Draft7Validator(to_jsonschema(node), format_checker=FORMATS)
    problems = [
        f"{_dotted(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
    return problems + list(list_problems(node, value, ""))


def _dotted(path: Any) -> str:
    return "".join(f".{part}" for part in path)


def _relative(problem: str) -> str:
    """``.spec.x: reason`` as ``spec.x: reason``; the object itself as ``.``."""
    return problem[1:] if problem.startswith(".") else f".{problem}"


# -- list types: sets and maps hold each item (key) once -------------------------------------


def list_problems(node: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
    """Duplicates in ``x-kubernetes-list-type: set`` and ``map`` lists, as the server words them."""
    if isinstance(value, list):
        list_type = node.get("x-kubernetes-list-type")
        keys = node.get("x-kubernetes-list-map-keys") or ()
        seen: set[str] = set()
        for index, item in enumerate(value):
            if list_type == "set":
                key = json.dumps(item, sort_keys=True)
            elif list_type == "map" and isinstance(item, dict):
                key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            else:
                continue
            if key in seen:
                yield f"{path}[{index}]: Duplicate value: {key}"
            seen.add(key)
        if isinstance(node.get("items"), Mapping):
            for index, item in enumerate(value):
                yield from list_problems(node["items"], item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in value:
                yield from list_problems(sub, value[name], f"{path}.{name}")


# -- CEL -------------------------------------------------------------------------------------


def to_cel(node: Mapping[str, Any], value: Any) -> Any:
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


def rules(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, rule) of the schema, for listing and compiling them."""
    for rule in node.get("x-kubernetes-validations") or ():
        yield path or ".", rule
    for name, sub in (node.get("properties") or {}).items():
        yield from rules(sub, f"{path}.{name}")
    if "items" in node:
        yield from rules(node["items"], f"{path}[*]")


@dataclass(frozen=True)
class CelProblem:
    """A rule that failed (or could not be evaluated) on a value, as the server reports it."""

    path: str  # below the value checked, e.g. ".eligibility" ("" for the value itself)
    type_name: str  # the schema type of the node the rule is on
    detail: str

    def render(self, prefix: str) -> str:
        """``<prefix><path>: Invalid value: "<type>": <detail>`` (kube-apiserver's wording)."""
        return f'{prefix}{self.path}: Invalid value: "{self.type_name}": {self.detail}'


def _texts(value: object) -> Iterator[str]:
    """Every string inside an error's arguments (cel-python nests the cause's text there)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, BaseException):
        yield from _texts(value.args)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _texts(item)


def _eval_error(exc: BaseException) -> str:
    """cel-python's error in cel-go's words (``no such key: x`` for a missing field)."""
    texts = list(_texts(exc))
    for text in texts:
        # The first (leftmost) missing field; nested texts carry it with escaped quotes.
        missing = re.search(r"no such member in mapping: \\*'([^'\\]+)", text)
        if missing:
            return f"no such key: {missing.group(1)}"
    return texts[0].split(" (in activation")[0] if texts else repr(exc)


def cel_problems(node: Mapping[str, Any], value: Any, path: str) -> Iterator[CelProblem]:
    """Every rule of ``node`` and of the nodes below it that ``value`` reaches, on ``value``.

    Nothing is defaulted first: the API server evaluates an object after defaulting
    it, and a CRD's ``default`` values as written.
    """
    kind = str(node.get("type", ""))
    for rule in node.get("x-kubernetes-validations") or ():
        message = " ".join(rule.get("message", rule["rule"]).split())
        try:
            result = _program(rule["rule"]).evaluate({"self": to_cel(node, value)})
        except celpy.CELEvalError as exc:
            result = exc
        if isinstance(result, celpy.CELEvalError):
            yield CelProblem(path, kind, f"{_eval_error(result)} evaluating rule: {message}")
        elif not bool(result):
            yield CelProblem(path + rule.get("fieldPath", ""), kind, message)
    if isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in value:
                yield from cel_problems(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            yield from cel_problems(node["items"], item, f"{path}[{i}]")


# -- the whole check -------------------------------------------------------------------------


def admit(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default and validate a QuotaPolicy as the API server would: (defaulted object, errors)."""
    defaulted = apply_defaults(schema(), copy.deepcopy(obj))
    problems = schema_problems(schema(), defaulted)
    if problems:  # CEL rules see only objects that passed the schema
        return defaulted, [_relative(p) for p in problems]
    return defaulted, [
        _relative(f"{p.path}: {p.detail}") for p in cel_problems(schema(), defaulted, "")
    ]
