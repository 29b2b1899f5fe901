"""What kube-apiserver checks when a CustomResourceDefinition is created, offline.

A CRD the API server refuses makes ``helm install`` of the operator chart fail, so
the tests must refuse it too, with the server's message. ``crd_schema`` runs these
checks when it loads the chart's CRD (every test that uses the schema fails), and
the emulated API server runs them on every CRD posted to it.

Modelled on kube-apiserver 1.28 (apiextensions-apiserver: ``apis/apiextensions/
validation``, ``apiserver/schema/defaulting/validation.go``, ``apiserver/schema/cel``):

- a structural schema: every node has a ``type`` (arrays an ``items``), and
  ``properties`` only on objects;
- every ``default`` is pruned (no fields its schema does not know), valid against
  the OpenAPI schema of its node, and valid against the CEL rules of its node and
  of the nodes below that its value reaches, evaluated on the default *as
  written*: nested defaults are not applied to it first (so a rule on ``spec``
  that reads ``self.x`` fails on ``spec``'s ``default: {}`` with "no such key");
- ``x-kubernetes-list-type``: ``set`` lists hold scalars; ``map`` lists name
  their ``x-kubernetes-list-map-keys``, which are scalar properties of the items
  and required or defaulted;
- every rule compiles and its estimated cost fits the per-rule and per-CRD
  budgets (:mod:`tests.operator.cel_cost`).

Not checked here: CEL type checking (cel-go checks each rule's types against the
schema when the CRD is created; cel-python has no checker, so a rule comparing
an integer with a double is only caught by a real server), the rules' runtime
cost limit per call, ``messageExpression``, and the many checks on fields the
chart's CRD does not use (conversion webhooks, ``x-kubernetes-embedded-resource``,
``int-or-string``, several versions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from tests.operator import cel_cost
from tests.operator.crd_schema import cel_problems, pruned, schema_problems

SCALARS = {"string", "integer", "number", "boolean"}


class Refused(Exception):
    """The API server would refuse the CRD; the message is the server's, problem by problem."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "".join(f"\n* {p}" for p in problems)
        super().__init__(f'The CustomResourceDefinition "{name}" is invalid: {listed}')


def check(crd: Mapping[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``crd`` (empty: it would take it)."""
    problems: list[str] = []
    versions = crd["spec"]["versions"]
    schemas = [v["schema"]["openAPIV3Schema"] for v in versions]
    shared = all(s == schemas[0] for s in schemas)
    for index, root in enumerate(schemas[:1] if shared else schemas):
        # The server hoists a schema shared by all versions to spec.validation.
        base = "spec.validation" if shared else f"spec.versions[{index}].schema"
        path = f"{base}.openAPIV3Schema"
        problems += _structure(root, path)
        if problems:
            continue  # the other checks need a structural schema
        problems += _list_types(root, path)
        problems += _defaults(root, path)
        problems += _costs(root, path)
    return problems


def nodes(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any], float]]:
    """Every node of a schema: (its path as the server prints it, the node, its cardinality).

    The cardinality is how many times the node can occur in one object: the product
    of the sizes of the lists and maps above it.
    """
    stack: list[tuple[str, Mapping[str, Any], float]] = [(path, node, 1.0)]
    while stack:
        here, current, cardinality = stack.pop()
        yield here, current, cardinality
        for name, sub in (current.get("properties") or {}).items():
            stack.append((f"{here}.properties[{name}]", sub, cardinality))
        if isinstance(current.get("items"), Mapping):
            times = cardinality * cel_cost.max_size(current)
            stack.append((f"{here}.items", current["items"], times))
        if isinstance(current.get("additionalProperties"), Mapping):
            times = cardinality * cel_cost.max_size(current)
            stack.append((f"{here}.additionalProperties", current["additionalProperties"], times))


def _structure(root: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    for here, node, _ in nodes(root, path):
        kind = node.get("type")
        if not kind and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(
                f"{here}.type: Required value: must not be empty for specified object fields"
            )
        if kind == "array" and "items" not in node:
            problems.append(f"{here}.items: Required value: must be specified")
        if "properties" in node and kind != "object":
            problems.append(f"{here}.properties: Forbidden: only allowed for type object")
    return problems


def _list_types(root: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    for here, node, _ in nodes(root, path):
        list_type = node.get("x-kubernetes-list-type")
        keys = node.get("x-kubernetes-list-map-keys")
        if list_type is None and keys is None:
            continue
        if node.get("type") != "array":
            problems.append(
                f"{here}.x-kubernetes-list-type: Invalid value: must be used only on arrays"
            )
            continue
        items = node.get("items") or {}
        if list_type == "set" and items.get("type") not in SCALARS:
            problems.append(
                f"{here}.items.type: Invalid value: {json.dumps(items.get('type'))}: "
                "must be a scalar type if x-kubernetes-list-type is set"
            )
        if list_type == "map":
            if not keys:
                problems.append(
                    f"{here}.x-kubernetes-list-map-keys: Required value: "
                    "must not be empty if x-kubernetes-list-type is map"
                )
                continue
            properties = items.get("properties") or {}
            required = set(items.get("required") or ())
            for key in keys:
                field = properties.get(key)
                if field is None:
                    problems.append(
                        f"{here}.x-kubernetes-list-map-keys: Invalid value: {json.dumps(key)}: "
                        "entries must all be names of item properties"
                    )
                elif field.get("type") not in SCALARS:
                    problems.append(
                        f"{here}.items.properties[{key}].type: Invalid value: "
                        f"{json.dumps(field.get('type'))}: must be a scalar type if parent "
                        "array's x-kubernetes-list-type is map"
                    )
                elif key not in required and "default" not in field:
                    problems.append(
                        f"{here}.items.properties[{key}]: Required value: this property is in "
                        "x-kubernetes-list-map-keys, so it must have a default or be a required property"
                    )
        elif keys:
            problems.append(
                f"{here}.x-kubernetes-list-map-keys: Forbidden: "
                "allowed only if x-kubernetes-list-type is map"
            )
    return problems


def _defaults(root: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    for here, node, _ in nodes(root, path):
        if "default" not in node:
            continue
        value = node["default"]
        where = f"{here}.default"
        if pruned(node, value) != value:
            problems.append(
                f"{where}: Invalid value: {json.dumps(value)}: must not have unknown fields"
            )
            continue
        invalid = schema_problems(node, value)
        if invalid:
            problems += [f"{where}{p}" for p in invalid]
            continue
        for problem in cel_problems(node, value, ""):
            problems.append(problem.render(where))
    return problems


def _costs(root: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    total = 0.0
    for here, node, cardinality in nodes(root, path):
        for index, rule in enumerate(node.get("x-kubernetes-validations") or ()):
            where = f"{here}.x-kubernetes-validations[{index}].rule"
            try:
                cost = cel_cost.estimate(rule["rule"], node)
            except cel_cost.Unsupported as exc:
                problems.append(
                    f"{where}: Internal error: the tests cannot estimate this rule: {exc}"
                )
                continue
            except Exception as exc:  # a rule that does not compile
                problems.append(
                    f"{where}: Invalid value: {json.dumps(rule['rule'])}: compilation failed: {exc}"
                )
                continue
            if cost > cel_cost.PER_RULE_LIMIT:
                problems.append(
                    f"{where}: Forbidden: estimated rule cost exceeds budget by factor of "
                    f"{_factor(cost, cel_cost.PER_RULE_LIMIT)} (try simplifying the rule, or "
                    "adding maxItems, maxProperties, and maxLength where arrays, maps, and "
                    "strings are declared)"
                )
            total += cost * cardinality
    if total > cel_cost.PER_CRD_LIMIT:
        problems.append(
            f"{path}: Forbidden: x-kubernetes-validations estimated rule cost total for entire "
            f"OpenAPIv3 schema exceeds budget by factor of {_factor(total, cel_cost.PER_CRD_LIMIT)} "
            "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where "
            "arrays, maps, and strings are declared)"
        )
    return problems


def _factor(cost: float, limit: float) -> str:
    factor = cost / limit
    return "more than 100x" if factor > 100 else f"{factor:.1f}x"
