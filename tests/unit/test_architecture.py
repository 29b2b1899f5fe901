"""The layout's rule: the two services speak only through medbook.contracts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "medbook"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("service", "other"), [("booking", "discount"), ("discount", "booking")])
def test_a_service_never_imports_the_other(service: str, other: str) -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.startswith(f"medbook.{other}")
        )
        for path in (PACKAGE / service).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
