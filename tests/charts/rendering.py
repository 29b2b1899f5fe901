"""Render the charts with the real Helm engine (helm-python-sdk), once per set of values.

A scenario is a chart and a values file: the chart's defaults, and each documented
combination in ``charts/<chart>/ci/*-values.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS_DIR = ROOT / "charts"
CHARTS = ("medbook", "medbook-operator")
RELEASE = "medbook"
NAMESPACE = "medbook"
KUBE_VERSIONS = ("1.28.0", "1.37.0")  # the lowest and the highest supported
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob", "Pod", "DaemonSet", "ReplicaSet")


@dataclass(frozen=True)
class Scenario:
    chart: str
    name: str  # "default" or the values file's stem

    @property
    def values_file(self) -> Path | None:
        if self.name == "default":
            return None
        return CHARTS_DIR / self.chart / "ci" / f"{self.name}.yaml"

    @property
    def values(self) -> dict[str, Any]:
        path = self.values_file
        return {} if path is None else yaml.safe_load(path.read_text()) or {}

    @property
    def id(self) -> str:
        return f"{self.chart}:{self.name}"


def scenarios(chart: str | None = None) -> list[Scenario]:
    found = []
    for name in CHARTS if chart is None else (chart,):
        found.append(Scenario(name, "default"))
        found.extend(
            Scenario(name, path.stem)
            for path in sorted((CHARTS_DIR / name / "ci").glob("*-values.yaml"))
        )
    return found


@dataclass(frozen=True)
class Manifest:
    template: str  # e.g. "medbook/templates/booking.yaml"
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def annotations(self) -> dict[str, str]:
        return self.doc["metadata"].get("annotations") or {}


@cache
def chart(name: str) -> helm.Chart:
    return helm.Chart.load(str(CHARTS_DIR / name))


@cache
def _render(name: str, values_json: str, release: str, namespace: str) -> tuple[Manifest, ...]:
    rendered = chart(name).render(json.loads(values_json), name=release, namespace=namespace)
    manifests = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc)
    return tuple(manifests)


def render(
    name: str,
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[Manifest]:
    return list(_render(name, json.dumps(values or {}, sort_keys=True), release, namespace))


def render_scenario(scenario: Scenario) -> list[Manifest]:
    return render(scenario.chart, scenario.values)


def notes(name: str, values: dict[str, Any] | None = None) -> str:
    rendered = chart(name).render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for template, text in rendered.items() if template.endswith("NOTES.txt"))


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind and (name is None or m.name == name)]


def one(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    [found] = find(manifests, kind, name)
    return found.doc


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod (metadata and spec) a workload runs."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def pods(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for manifest in manifests:
        if manifest.kind in WORKLOADS:
            yield manifest, pod_template(manifest.doc)


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*(spec.get("initContainers") or []), *spec["containers"]]


def container(manifests: list[Manifest], kind: str, name: str, container_name: str) -> dict:
    pod = pod_template(one(manifests, kind, name))
    [found] = [c for c in containers(pod) if c["name"] == container_name]
    return found
