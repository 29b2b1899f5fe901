"""The docs list every setting and every metric, and link only to pages that exist.

docs/configuration.md documents every environment variable of every process,
docs/observability.md every metric; the README and the pages under docs/ link
only to files (and headings) that exist, so a newcomer never lands on a dead link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from medbook import config, metrics
from medbook.booking import monitor  # noqa: F401  (registers the sweep metrics)
from medbook_operator import metrics as operator_metrics
from medbook_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
OBSERVABILITY = (DOCS / "observability.md").read_text()
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def env_names(cls: type[BaseSettings]) -> set[str]:
    names: set[str] = set()
    for field in cls.model_fields.values():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names |= env_names(annotation)
        elif field.validation_alias is not None:
            names |= set(field.validation_alias.choices)  # type: ignore[union-attr]
    return names


@pytest.mark.parametrize(
    "settings",
    [config.BookingSettings, config.DiscountSettings, config.CleanupSettings, OperatorSettings],
)
def test_every_environment_variable_is_documented(settings: type[BaseSettings]) -> None:
    missing = sorted(name for name in env_names(settings) if f"`{name}`" not in CONFIGURATION)
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_every_variable_of_the_command_is_documented() -> None:
    import typer

    from medbook.cli.main import app

    found: set[str] = set()

    def walk(command: object) -> None:
        for param in getattr(command, "params", []):
            envvar = param.envvar
            found.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    documented = CONFIGURATION + (DOCS / "cli.md").read_text()
    missing = sorted(name for name in found if f"`{name}`" not in documented)
    assert found and not missing, f"docs/configuration.md nor docs/cli.md document: {missing}"


def test_every_metric_is_documented() -> None:
    registries = (metrics.BOOKING, metrics.DISCOUNT, operator_metrics.REGISTRY)
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for registry in registries
        for family in registry.collect()
        if family.name.startswith("medbook_")
    }
    missing = sorted(name for name in names if f"`{name}`" not in OBSERVABILITY)
    assert not missing, f"docs/observability.md does not document: {missing}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page (outside code blocks)."""
    found: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_lead_somewhere(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.name} links to what does not exist: {broken}"
