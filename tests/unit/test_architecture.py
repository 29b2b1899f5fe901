"""The layout's rules: the two services speak only through medbook.contracts; nothing under
services/ touches Kubernetes; the operator uses only the shared policy model and contracts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "medbook"
KUBERNETES = {"kopf", "kubernetes", "kubernetes_asyncio", "kr8s", "lightkube", "medbook_operator"}


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


def modules_under(folder: Path) -> set[str]:
    return set().union(*(imported_modules(path) for path in folder.rglob("*.py")))


def test_nothing_under_services_imports_kubernetes() -> None:
    assert not {m for m in modules_under(ROOT / "services") if m.split(".")[0] in KUBERNETES}


def test_the_operator_uses_only_the_shared_policy_model_and_the_contracts() -> None:
    used = {m for m in modules_under(ROOT / "operator") if m.split(".")[0] == "medbook"}
    assert used <= {"medbook.contracts", "medbook.discount.policy"}
