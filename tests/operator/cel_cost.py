"""A static cost estimate of a CRD's CEL rules, as kube-apiserver makes one before it takes a CRD.

The API server refuses a CustomResourceDefinition whose rules could cost too much
to evaluate on the largest object a request may carry: each rule must stay under
``PER_RULE_LIMIT`` and all rules together, each multiplied by how many times it
can run in one object (the items of the lists above it), under ``PER_CRD_LIMIT``.
Sizes come from the schema: ``maxLength``, ``maxItems``, ``maxProperties`` where
they are set, else as much as a request of ``MAX_REQUEST_BYTES`` could hold (the
reason rules on unbounded lists and strings are refused).

This mirrors cel-go's estimator (``checker/cost.go``) and the apiextensions size
estimates (``apiserver/schema/cel/model``: ``maxLength``, else the longest
``enum`` value, else the request size) for the parts of CEL the rules use;
the figures are close to the server's, not equal to them. A construct it has no
model for raises :class:`Unsupported`, so a new kind of rule is estimated before
it is trusted, never silently counted as free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
from lark import Token, Tree

PER_RULE_LIMIT = 10_000_000  # k8s.io/apiserver/pkg/apis/cel: StaticEstimatedCostLimit
PER_CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # the largest request the estimate assumes
STRING_TRAVERSAL = 0.1  # cel-go: common.StringTraversalCostFactor
REGEX_LENGTH = 0.25  # cel-go: common.RegexStringLengthCostFactor
LIST_CREATE = 10  # cel-go: createListBaseCost
_FIXED_FORMAT_LENGTH = {"date": 12, "date-time": 34, "duration": 34}  # with the quotes
_MIN_SERIALIZED = {"string": 2, "object": 2, "array": 2}  # "", {}, []; numbers: 1

_MACROS = {"all", "exists", "exists_one", "map", "filter"}
_PASS_THROUGH = {
    "expr",
    "conditionalor",
    "conditionaland",
    "relation",
    "addition",
    "multiplication",
    "unary",
    "member",
    "primary",
}


class Unsupported(Exception):
    """The rule uses CEL this estimator has no model for."""


@dataclass(frozen=True)
class Estimate:
    cost: float
    node: Mapping[str, Any] | None  # the schema of the value, when it comes from the object
    size: float  # characters of a string, items of a list, entries of a map; 1 otherwise


def max_size(node: Mapping[str, Any] | None) -> float:
    """The most characters, items or properties a value of ``node`` can have in one request."""
    if node is None:
        return 1
    kind = node.get("type")
    if kind == "string":
        if "maxLength" in node:
            return float(node["maxLength"])
        if node.get("enum"):  # the longest value it may take
            return float(max(len(str(v)) for v in node["enum"]))
        return float(_FIXED_FORMAT_LENGTH.get(node.get("format", ""), MAX_REQUEST_BYTES) - 2)
    if kind == "array":
        if "maxItems" in node:
            return float(node["maxItems"])
        item = _MIN_SERIALIZED.get((node.get("items") or {}).get("type", ""), 1)
        return float((MAX_REQUEST_BYTES - 2) // (item + 1))  # each item and its comma
    if kind == "object" and "additionalProperties" in node:
        if "maxProperties" in node:
            return float(node["maxProperties"])
        return float((MAX_REQUEST_BYTES - 2) // 6)  # "k":v and a comma, at the least
    return 1


@cache
def _parse(rule: str) -> Tree:
    return celpy.Environment().compile(rule)


def estimate(rule: str, node: Mapping[str, Any]) -> float:
    """The estimated worst-case cost of ``rule`` evaluated with ``self`` of schema ``node``."""
    self_value = Estimate(cost=1, node=node, size=max_size(node))
    return _Walker({"self": self_value}).walk(_parse(rule)).cost


class _Walker:
    def __init__(self, scope: dict[str, Estimate]) -> None:
        self.scope = scope

    def walk(self, tree: Tree | Token) -> Estimate:
        if isinstance(tree, Token):
            raise Unsupported(f"unexpected token {tree!r}")
        children = [c for c in tree.children if c is not None]
        if tree.data in _PASS_THROUGH and len(children) == 1:
            return self.walk(children[0])
        handler = getattr(self, f"_{tree.data}", None)
        if handler is None:
            raise Unsupported(f"no cost model for {tree.data!r}; add one to {__name__}")
        result: Estimate = handler(children)
        return result

    # -- operators ---------------------------------------------------------------------------

    def _expr(self, children: list[Any]) -> Estimate:  # cond ? a : b
        cond, then, other = (self.walk(c) for c in children)
        return Estimate(cond.cost + max(then.cost, other.cost), None, max(then.size, other.size))

    def _logical(self, children: list[Any]) -> Estimate:  # both sides may run
        left, right = (self.walk(c) for c in children)
        return Estimate(left.cost + right.cost, None, 1)

    _conditionalor = _logical
    _conditionaland = _logical

    def _relation(self, children: list[Any]) -> Estimate:
        operator, right_tree = children
        left = self.walk(operator.children[0])
        right = self.walk(right_tree)
        cost = left.cost + right.cost
        if operator.data == "relation_in":
            cost += right.size  # a list is scanned
        elif _is_sized(left) and _is_sized(right):
            cost += math.ceil(min(left.size, right.size) * STRING_TRAVERSAL)
        else:
            cost += 1
        return Estimate(cost, None, 1)

    def _arithmetic(self, children: list[Any]) -> Estimate:
        operator, right_tree = children
        left = self.walk(operator.children[0])
        right = self.walk(right_tree)
        size = left.size + right.size if _is_sized(left) else 1  # string or list concatenation
        extra = math.ceil(size * STRING_TRAVERSAL) if _is_sized(left) else 1
        return Estimate(left.cost + right.cost + extra, None, size)

    _addition = _arithmetic
    _multiplication = _arithmetic

    def _unary(self, children: list[Any]) -> Estimate:  # ! or -
        operand = self.walk(children[1])
        return Estimate(operand.cost + 1, None, 1)

    # -- values ------------------------------------------------------------------------------

    def _ident(self, children: list[Any]) -> Estimate:
        name = str(children[0])
        if name not in self.scope:
            raise Unsupported(f"unknown identifier {name!r}")
        found = self.scope[name]
        return Estimate(1, found.node, found.size)

    def _literal(self, children: list[Any]) -> Estimate:
        token = str(children[0])
        size = len(token) - 2 if token[:1] in "\"'" else 1
        return Estimate(0, {"type": "string"} if token[:1] in "\"'" else None, size)

    def _paren_expr(self, children: list[Any]) -> Estimate:
        return self.walk(children[0])

    def _list_lit(self, children: list[Any]) -> Estimate:
        items = [self.walk(c) for c in children[0].children] if children else []
        return Estimate(LIST_CREATE + sum(i.cost for i in items), None, len(items))

    def _member_dot(self, children: list[Any]) -> Estimate:
        target = self.walk(children[0])
        field = _field(target.node, str(children[1]))
        return Estimate(target.cost + 1, field, max_size(field))

    def _member_index(self, children: list[Any]) -> Estimate:
        target = self.walk(children[0])
        index = self.walk(children[1])
        element = _element(target.node)
        return Estimate(target.cost + index.cost + 1, element, max_size(element))

    # -- calls -------------------------------------------------------------------------------

    def _ident_arg(self, children: list[Any]) -> Estimate:  # has(x.y), size(x), int(x), ...
        name = str(children[0])
        args = [self.walk(c) for c in children[1].children] if len(children) > 1 else []
        if name in {"has", "size", "int", "uint", "double", "bool", "type", "duration"}:
            return Estimate(1 + sum(a.cost for a in args), None, 1)
        if name == "string":
            [arg] = args
            return Estimate(arg.cost + math.ceil(arg.size * STRING_TRAVERSAL), None, arg.size)
        raise Unsupported(f"no cost model for the function {name}()")

    def _member_dot_arg(self, children: list[Any]) -> Estimate:  # x.method(args), macros
        target = self.walk(children[0])
        name = str(children[1])
        arg_trees = list(children[2].children) if len(children) > 2 else []
        if name in _MACROS:
            return self._macro(target, arg_trees)
        args = [self.walk(c) for c in arg_trees]
        arg_cost = sum(a.cost for a in args)
        if name == "matches":
            [regex] = args
            string_cost = math.ceil(target.size * STRING_TRAVERSAL)
            regex_cost = math.ceil(regex.size * REGEX_LENGTH)
            return Estimate(target.cost + arg_cost + string_cost * regex_cost, None, 1)
        if name in {"startsWith", "endsWith", "contains"}:
            cost = target.cost + arg_cost + math.ceil(target.size * STRING_TRAVERSAL)
            return Estimate(cost, None, 1)
        if name == "size":
            return Estimate(target.cost + 1, None, 1)
        raise Unsupported(f"no cost model for the method {name}()")

    def _macro(self, target: Estimate, arg_trees: list[Any]) -> Estimate:
        variable = _identifier(arg_trees[0])
        element = _element(target.node)
        inner = _Walker({**self.scope, variable: Estimate(1, element, max_size(element))})
        body = sum(inner.walk(t).cost for t in arg_trees[1:])
        # Each step: the body, the accumulator's update and the loop's condition.
        return Estimate(target.cost + target.size * (body + 3), None, target.size)


def _is_sized(value: Estimate) -> bool:
    return value.node is not None and value.node.get("type") in ("string", "array")


def _field(node: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    if node is None:
        return None
    properties = node.get("properties") or {}
    if name in properties:
        return properties[name]
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _element(node: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if node is None:
        return None
    if node.get("type") == "array":
        return node.get("items")
    if node.get("type") == "object":
        return {"type": "string"}  # a macro over a map iterates over its keys
    return None


def _identifier(tree: Tree | Token) -> str:
    """The name in an expression that is a bare identifier (a macro's variable)."""
    while isinstance(tree, Tree) and len(tree.children) == 1:
        if tree.data == "ident":
            return str(tree.children[0])
        tree = tree.children[0]
    raise Unsupported("a macro's first argument must be a variable name")
