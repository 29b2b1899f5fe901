"""The monitoring objects: PodMonitors that select the pods' metrics ports, the PrometheusRule
carrying exactly the promtool-tested alerts (the SLO group from the chart's objectives), and
the Grafana dashboards as labelled ConfigMaps."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helm_python.errors import HelmError
from prometheus_client.utils import floatToGoString

from medbook.metrics import SAGA_BUCKETS
from tests.charts import rendering
from tests.charts.rendering import CHARTS_DIR, NAMESPACE, RELEASE, find, pod_template, render

ON = yaml.safe_load((CHARTS_DIR / "medbook" / "ci" / "monitoring-values.yaml").read_text())


def test_nothing_of_the_prometheus_operator_or_grafana_by_default() -> None:
    for chart in ("medbook", "medbook-operator"):
        manifests = render(chart)
        assert not [
            m for m in manifests if m.doc["apiVersion"].startswith("monitoring.coreos.com/")
        ]
        assert not [
            m for m in manifests if "grafana_dashboard" in (m.doc["metadata"].get("labels") or {})
        ]


def test_pod_monitors_select_each_service_and_a_port_its_pods_expose() -> None:
    for chart, values, expected in (
        ("medbook", ON, {"booking", "discount"}),
        ("medbook-operator", {"monitoring": {"podMonitor": {"enabled": True}}}, {"operator"}),
    ):
        manifests = render(chart, values)
        monitors = find(manifests, "PodMonitor")
        workloads = [m for m in manifests if m.kind == "Deployment"]
        seen = set()
        for monitor in monitors:
            selector = monitor.doc["spec"]["selector"]["matchLabels"]
            [workload] = [
                w
                for w in workloads
                if selector.items() <= pod_template(w.doc)["metadata"]["labels"].items()
            ]
            pod = pod_template(workload.doc)
            ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in monitor.doc["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            seen.add(pod["metadata"]["labels"]["app.kubernetes.io/component"])
            assert monitor.doc["metadata"]["labels"].get("release") == (
                "kube-prometheus-stack" if chart == "medbook" else None
            )
        assert seen == expected


def test_the_prometheus_rule_is_the_tested_rule_file() -> None:
    [rule] = find(render("medbook", ON), "PrometheusRule")
    expected = yaml.safe_load(
        (CHARTS_DIR / "medbook" / "alerts" / "medbook-alerts.yaml").read_text()
    )
    assert rule.doc["spec"] == expected
    assert rule.doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar() -> None:
    maps = [
        m
        for m in find(render("medbook", ON), "ConfigMap")
        if m.doc["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    shipped = {key: json.loads(text) for m in maps for key, text in m.doc["data"].items()}
    files = {
        p.name: json.loads(p.read_text())
        for p in (CHARTS_DIR / "medbook" / "dashboards").glob("*.json")
    }
    assert shipped == files
    assert all(m.doc["metadata"]["annotations"]["grafana_folder"] == "medbook" for m in maps)


def slo_group(values: dict) -> dict:
    [rule] = find(render("medbook", values), "PrometheusRule")
    [group] = [g for g in rule.doc["spec"]["groups"] if g["name"] == "medbook.slo"]
    return group


def test_the_slo_rules_follow_the_objectives_given_and_pass_promtool(tmp_path: Path) -> None:
    values = ON | {
        "monitoring": ON["monitoring"]
        | {
            "slo": {
                "sagaSuccess": {"objective": 0.9995},
                "sagaLatency": {"objective": 0.95, "thresholdSeconds": "1.0"},
            }
        }
    }
    group = slo_group(values)
    by_name = {r.get("alert") or r["record"]: r for r in group["rules"]}
    fast = by_name["MedbookSagaSuccessBudgetBurningFast"]
    assert fast["expr"].count("(14.4 * (1 - 0.9995))") == 2
    assert "objective: 99.95 % decided" in fast["annotations"]["description"]
    slow = by_name["MedbookSagaLatencyBudgetBurning"]
    assert slow["expr"].count("(6 * (1 - 0.95))") == 2
    assert "objective: 95 % within 1.0 s" in slow["annotations"]["description"]
    assert 'le="1.0"' in by_name["medbook:saga_slow:ratio_rate30m"]["expr"]
    assert all('le="0.5"' not in r["expr"] for r in group["rules"])
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [group]}))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("slo", "problem"),
    [
        ({"sagaSuccess": {"objective": 1}}, "/monitoring/slo/sagaSuccess/objective"),
        ({"sagaSuccess": {"objective": 0}}, "/monitoring/slo/sagaSuccess/objective"),
        (
            {"sagaLatency": {"thresholdSeconds": "0.7"}},
            "/monitoring/slo/sagaLatency/thresholdSeconds",
        ),
        ({"sagaLatency": {"thresholdSeconds": 1}}, "/monitoring/slo/sagaLatency/thresholdSeconds"),
    ],
)
def test_the_schema_refuses_an_objective_that_cannot_be_met_or_measured(
    slo: dict, problem: str
) -> None:
    with pytest.raises(HelmError, match=problem):
        rendering.chart("medbook").render(
            {"monitoring": {"slo": slo}}, name=RELEASE, namespace=NAMESPACE
        )


def test_the_latency_thresholds_offered_are_the_histograms_buckets() -> None:
    schema = json.loads((CHARTS_DIR / "medbook" / "values.schema.json").read_text())
    slo = schema["properties"]["monitoring"]["properties"]["slo"]["properties"]
    offered = slo["sagaLatency"]["properties"]["thresholdSeconds"]["enum"]
    assert offered == [floatToGoString(bound) for bound in SAGA_BUCKETS]
