"""The README documents every setting and every metric: the docs cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from medbook import config, metrics
from medbook.booking import monitor  # noqa: F401  (registers the sweep metrics)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


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
    "settings", [config.BookingSettings, config.DiscountSettings, config.CleanupSettings]
)
def test_every_environment_variable_is_in_the_readme(settings: type[BaseSettings]) -> None:
    missing = sorted(name for name in env_names(settings) if f"`{name}`" not in README)
    assert not missing, f"README.md does not document: {missing}"


def test_every_metric_is_in_the_readme() -> None:
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for registry in (metrics.BOOKING, metrics.DISCOUNT)
        for family in registry.collect()
        if family.name.startswith("medbook_")
    }
    missing = sorted(name for name in names if f"`{name}`" not in README)
    assert not missing, f"README.md does not document: {missing}"
