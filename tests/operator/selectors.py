"""Label and field selectors as the API server reads them (``?labelSelector=``, ``?fieldSelector=``).

Equality (``a=b``, ``a==b``, ``a!=b``), sets (``a in (x,y)``, ``a notin (x)``) and
existence (``a``, ``!a``) for labels; ``path=value`` and ``path!=value`` for fields
(``metadata.name``). kmock serves lists and watches without them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import kmock

_SET_SELECTOR = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """``a=b,c in (x,y)`` into its requirements (commas inside parentheses belong to a set)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p.strip()]


def label_matcher(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate for Kubernetes' label selector syntax (equality, sets, existence)."""
    requirements: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(selector or ""):
        found = _SET_SELECTOR.match(part)
        if found:
            key, operator, values = found.group(1), found.group(2), found.group(3)
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if operator == "in":
                requirements.append(lambda labels, k=key, a=allowed: labels.get(k) in a)
            else:
                requirements.append(lambda labels, k=key, a=allowed: labels.get(k) not in a)
        elif "!=" in part:
            key, value = (p.strip() for p in part.split("!=", 1))
            requirements.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in part:
            key, value = (p.strip().lstrip("=") for p in part.split("=", 1))
            requirements.append(lambda labels, k=key, v=value.lstrip("="): labels.get(k) == v)
        elif part.strip().startswith("!"):
            requirements.append(lambda labels, k=part.strip()[1:]: k not in labels)
        else:
            requirements.append(lambda labels, k=part.strip(): k in labels)
    return lambda labels: all(r(labels) for r in requirements)


def _field_matcher(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    wanted: list[tuple[str, str, bool]] = []
    for part in _split_selector(selector or ""):
        negate = "!=" in part
        key, value = (p.strip().lstrip("=") for p in part.split("!=" if negate else "=", 1))
        wanted.append((key, value, negate))

    def matches(obj: Mapping[str, Any]) -> bool:
        for key, value, negate in wanted:
            found: Any = obj
            for step in key.split("."):
                found = found.get(step) if isinstance(found, Mapping) else None
            if (str(found) == value) == negate:
                return False
        return True

    return matches


def matching(request: kmock.Request) -> Callable[[Mapping[str, Any]], bool]:
    labels = label_matcher(request.params.get("labelSelector"))
    fields = _field_matcher(request.params.get("fieldSelector"))
    return lambda obj: labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj)
