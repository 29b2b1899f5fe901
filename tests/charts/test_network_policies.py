"""The NetworkPolicies of both charts allow the saga's paths and nothing else.

A small evaluator of NetworkPolicy semantics (pod and namespace selectors, ports, both
directions) runs every pod of a release against every listening port and compares the
connections it allows with the saga's paths.
"""

from __future__ import annotations

from typing import Any

from medbook_operator import cronjob
from tests.charts.rendering import NAMESPACE, find, pod_template, render

# What listens where (the components' container ports).
LISTENS = {
    "booking": [3000],
    "discount": [9464],
    "postgresql": [5432],
    "redis": [6379],
    "rabbitmq": [5672],
    "operator": [9465, 8080],
}
SAGA_PATHS = {
    ("booking", "postgresql", 5432),
    ("booking", "rabbitmq", 5672),
    ("discount", "redis", 6379),
    ("discount", "rabbitmq", 5672),
    ("migrations", "postgresql", 5432),
    ("cleanup", "postgresql", 5432),
    ("operator", "redis", 6379),
    ("uninstall", "redis", 6379),  # the operator's pre-delete hook withdraws the policy
    ("test", "booking", 3000),
}
OPERATOR_VALUES = {"redis": {"host": "medbook-redis"}}


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def _peer_matches(peer: dict[str, Any], pod: dict[str, Any], policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return False  # addresses outside the cluster's pods
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], pod["namespace_labels"]):
            return False
    elif pod["namespace"] != policy_ns:
        return False
    return _matches(peer.get("podSelector"), pod["labels"])


def _rule_allows(rule: dict[str, Any], key: str, peer: dict, port: int, ns: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(key)
    return not peers or any(_peer_matches(p, peer, ns) for p in peers)


def _allowed(policies: list[dict], direction: str, pod: dict, peer: dict, port: int) -> bool:
    key = "to" if direction == "Egress" else "from"
    rules_key = "egress" if direction == "Egress" else "ingress"
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod["namespace"]
        and _matches(p["spec"]["podSelector"], pod["labels"])
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # no policy isolates this pod in that direction
    return any(
        _rule_allows(rule, key, peer, port, p["metadata"]["namespace"])
        for p in selecting
        for rule in p["spec"].get(rules_key) or []
    )


def _pod(labels: dict[str, str], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "labels": labels,
        "namespace": namespace,
        "namespace_labels": {"kubernetes.io/metadata.name": namespace},
    }


def _cluster(apps: dict[str, Any], operator: dict[str, Any]) -> tuple[dict, list[dict]]:
    manifests = render("medbook", apps) + render("medbook-operator", operator)
    pods: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        if manifest.kind in ("Deployment", "StatefulSet", "Job", "Pod"):
            labels = pod_template(manifest.doc)["metadata"]["labels"]
            component = labels["app.kubernetes.io/component"]
            if labels["app.kubernetes.io/name"].endswith("-uninstall"):
                component = "uninstall"  # the operator's pre-delete hook, a pod of its own
            pods[component] = _pod(labels)
    # The cleanup CronJob's pods, as the operator builds them.
    pods["cleanup"] = _pod(cronjob.labels("default"))
    policies = [m.doc for m in find(manifests, "NetworkPolicy")]
    return pods, policies


def _connections(pods: dict[str, dict], policies: list[dict]) -> set[tuple[str, str, int]]:
    return {
        (source, target, port)
        for source, src in pods.items()
        for target, dst in pods.items()
        for port in LISTENS.get(target, [])
        if source != target
        and _allowed(policies, "Egress", src, dst, port)
        and _allowed(policies, "Ingress", dst, src, port)
    }


def test_inside_the_namespace_only_the_sagas_paths_are_open() -> None:
    pods, policies = _cluster({}, OPERATOR_VALUES)
    assert set(pods) == {*LISTENS, "migrations", "cleanup", "test", "uninstall"}
    assert _connections(pods, policies) == SAGA_PATHS


def test_with_external_servers_the_apps_reach_them_on_their_ports_only() -> None:
    apps = {
        "postgresql": {
            "enabled": False,
            "external": {
                "host": "db",
                "existingSecret": "db",
                "egressTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            },
        },
        "redis": {"enabled": False, "external": {"host": "redis"}},
        "rabbitmq": {"enabled": False, "external": {"existingSecret": "amqp"}},
    }
    pods, policies = _cluster(apps, OPERATOR_VALUES)
    assert not {"postgresql", "redis", "rabbitmq"} & set(pods)
    assert _connections(pods, policies) == {("test", "booking", 3000)}
    booking = next(p for p in policies if p["metadata"]["name"] == "medbook-booking")
    egress_ports = {port["port"] for rule in booking["spec"]["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 5432, 5672}
    [postgres_rule] = [r for r in booking["spec"]["egress"] if r["ports"][0]["port"] == 5432]
    assert postgres_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_from_outside_only_api_clients_and_scrapers_get_in() -> None:
    hardened = {
        "networkPolicy": {
            "apiClients": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
            "metricsScrapers": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
        }
    }
    operator = {
        **OPERATOR_VALUES,
        "networkPolicy": {"metricsScrapers": hardened["networkPolicy"]["metricsScrapers"]},
    }
    pods, policies = _cluster(hardened, operator)
    ingress = _pod({"app": "ingress-controller"}, "ingress")
    prometheus = _pod({"app": "prometheus"}, "monitoring")
    stranger = _pod({"app": "curl"}, "elsewhere")

    def reaches(source: dict, target: str, port: int) -> bool:
        return _allowed(policies, "Ingress", pods[target], source, port)

    assert reaches(ingress, "booking", 3000)
    assert reaches(prometheus, "booking", 3000)  # /metrics is on the API port
    assert reaches(prometheus, "discount", 9464)
    assert reaches(prometheus, "operator", 9465)
    assert not reaches(stranger, "booking", 3000)
    assert not reaches(ingress, "discount", 9464)
    for server, port in (("postgresql", 5432), ("redis", 6379), ("rabbitmq", 5672)):
        assert not reaches(prometheus, server, port)
    assert _connections(pods, policies) == SAGA_PATHS


def test_every_pod_may_resolve_names() -> None:
    pods, policies = _cluster({}, OPERATOR_VALUES)
    dns = _pod({"k8s-app": "kube-dns"}, "kube-system")
    for name, pod in pods.items():
        assert _allowed(policies, "Egress", pod, dns, 53), name
