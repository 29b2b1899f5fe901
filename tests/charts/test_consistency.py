"""skaffold.yaml, the charts' image values and the Dockerfiles describe the same images,
commands, ports and user; skaffold's releases wire the two charts to each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.charts.rendering import ROOT, chart, container, find, one, render

SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _dockerfile(path: Path) -> dict[str, Any]:
    """The final stage's USER, EXPOSE, ENTRYPOINT and every FROM of a Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())
    info: dict[str, Any] = {"from": [], "expose": set()}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            info["from"].append(words[1])
        elif instruction == "USER":
            info["user"] = words[1]
        elif instruction == "EXPOSE":
            info["expose"] |= {int(w.split("/")[0]) for w in words[1:]}
        elif instruction == "ENTRYPOINT":
            info["entrypoint"] = yaml.safe_load(line.split(None, 1)[1])
    return info


def _artifacts() -> dict[str, Path]:
    return {
        a["image"]: ROOT / a.get("context", ".") / a["docker"]["dockerfile"]
        for a in SKAFFOLD["build"]["artifacts"]
    }


def _releases() -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in SKAFFOLD["deploy"]["helm"]["releases"]}


def _get(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"no value {dotted}"
        node = node[key]
    return node


def test_every_dockerfile_is_built_by_skaffold() -> None:
    assert _artifacts() == {
        "medbook-booking": ROOT / "Dockerfile.booking",
        "medbook-discount": ROOT / "Dockerfile.discount",
    }
    assert set(ROOT.glob("Dockerfile*")) == set(_artifacts().values())


def test_the_charts_default_images_are_skaffolds_artifacts() -> None:
    apps = chart("medbook").values
    operator = chart("medbook-operator").values
    artifacts = set(_artifacts())
    assert apps["booking"]["image"]["repository"] == "medbook-booking"
    assert apps["discount"]["image"]["repository"] == "medbook-discount"
    # The operator runs from the discount image, its cleanup job from the booking image.
    assert operator["image"]["repository"] == "medbook-discount"
    assert operator["cleanup"]["image"]["repository"] == "medbook-booking"
    assert {
        apps["booking"]["image"]["repository"],
        apps["discount"]["image"]["repository"],
        operator["image"]["repository"],
        operator["cleanup"]["image"]["repository"],
    } == artifacts


def test_skaffold_sets_each_image_value_from_its_artifact() -> None:
    expected = {
        "medbook": {
            "booking.image": "medbook-booking",
            "discount.image": "medbook-discount",
        },
        "medbook-operator": {
            "image": "medbook-discount",
            "cleanup.image": "medbook-booking",
        },
    }
    for name, release in _releases().items():
        assert release["chartPath"] == f"charts/{name}"
        values = chart(name).values
        templates = release["setValueTemplates"]
        for key in templates:
            _get(values, key)  # every key skaffold sets is one the chart has
        for prefix, artifact in expected[name].items():
            token = artifact.replace("-", "_")
            assert templates[f"{prefix}.repository"] == f"{{{{.IMAGE_REPO_{token}}}}}"
            assert templates[f"{prefix}.tag"] == (
                f"{{{{.IMAGE_TAG_{token}}}}}@{{{{.IMAGE_DIGEST_{token}}}}}"
            )
        for path in release.get("valuesFiles", []):
            assert (ROOT / path).is_file(), path
    for profile in SKAFFOLD["profiles"]:
        for patch in profile["patches"]:
            for path in patch["value"]:
                assert (ROOT / path).is_file(), path


def test_the_dockerfiles_agree_with_the_charts() -> None:
    booking = _dockerfile(ROOT / "Dockerfile.booking")
    discount = _dockerfile(ROOT / "Dockerfile.discount")
    apps = chart("medbook").values
    operator = chart("medbook-operator").values
    for image in (booking, discount):
        assert image["user"] == "10001:10001"
        assert apps["podSecurityContext"]["runAsUser"] == 10001
        assert operator["podSecurityContext"]["runAsUser"] == 10001
        assert operator["cleanup"]["runAsUser"] == 10001
        assert len(set(image["from"])) == 1, "builder and runtime stages share the base"
    assert booking["expose"] == {apps["booking"]["port"]}
    assert discount["expose"] == {apps["discount"]["metricsPort"]}
    assert booking["entrypoint"] == ["medbook-booking"]
    assert discount["entrypoint"] == ["medbook-discount"]
    # Every command the charts run exists in the image (the package's console scripts).
    manifests = render("medbook") + render("medbook-operator")
    commands = {booking["entrypoint"][0], discount["entrypoint"][0]}
    for manifest in manifests:
        if manifest.kind in ("Deployment", "Job", "Pod"):
            spec = (
                manifest.doc["spec"]
                if manifest.kind == "Pod"
                else manifest.doc["spec"]["template"]["spec"]
            )
            for box in [*spec.get("initContainers", []), *spec["containers"]]:
                if box["image"].startswith("medbook-") and "command" in box:
                    commands.add(box["command"][0])
    assert commands - {"python"} <= SCRIPTS
    assert {"medbook-migrate", "medbook-operator", "medbook-cleanup"} <= SCRIPTS


def test_skaffold_forwards_the_api_and_wires_the_operator_to_the_apps_release() -> None:
    [forward] = SKAFFOLD["portForward"]
    releases = _releases()
    namespace = releases["medbook"]["namespace"]
    assert {r["namespace"] for r in releases.values()} == {namespace}
    apps = render("medbook", release=releases["medbook"]["name"], namespace=namespace)
    service = one(apps, "Service", forward["resourceName"])
    assert forward["port"] == service["spec"]["ports"][0]["port"]
    assert forward["namespace"] == namespace and forward["localPort"] == 3000
    wired = yaml.safe_load((ROOT / releases["medbook-operator"]["valuesFiles"][0]).read_text())
    assert one(apps, "Service", wired["redis"]["host"])["spec"]["ports"][0]["port"] == 6379
    assert find(apps, "Secret", wired["redis"]["existingSecret"])
    assert find(apps, "ConfigMap", wired["database"]["configMap"])
    database_secret = one(apps, "Secret", wired["database"]["existingSecret"])
    assert set(database_secret["data"]) == {"DB_PASSWORD"}
    # The booking pods read their database password from that same Secret.
    booking = container(apps, "Deployment", "medbook-booking", "booking")
    [password] = [e for e in booking["env"] if e["name"] == "DB_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"]["name"] == wired["database"]["existingSecret"]


def test_the_kind_cluster_has_workers_to_drain() -> None:
    config = yaml.safe_load((ROOT / "k8s" / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 2
