"""The monitoring objects: PodMonitors that select the pods' metrics ports, the PrometheusRule
carrying exactly the promtool-tested alerts, and the Grafana dashboards as labelled ConfigMaps."""

from __future__ import annotations

import json

import yaml

from tests.charts.rendering import CHARTS_DIR, find, pod_template, render

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
