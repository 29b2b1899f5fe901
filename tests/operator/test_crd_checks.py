"""The checks kube-apiserver makes before it takes a CRD, made offline (``crd_checks``), and
the stricter checks it makes on objects that the emulation now makes too (formats, lists).

The chart's CRD passes; each variant here is one the real server refuses, and
the emulation refuses it with the server's words. The first one is the CRD as
it was: kube-apiserver 1.28 refused it, and ``helm install`` with it.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
import yaml

from tests.charts.helm_actions import HelmError
from tests.charts.rig import helm_cluster
from tests.operator import cel_cost, crd_checks, crd_schema
from tests.operator.apiserver import ApiServer
from tests.operator.conftest import policy

ROOT_PATH = "spec.validation.openAPIV3Schema"
SPEC_PATH = f"{ROOT_PATH}.properties[spec]"


def _crd() -> dict[str, Any]:
    return copy.deepcopy(crd_schema.crd())


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def _node(crd: dict[str, Any], *path: str) -> dict[str, Any]:
    node = _root(crd)
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def _rules_on_spec(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD as it was: the cross-field rules on spec, reading ``self.dailyLimit``."""
    root = _root(crd)
    rules = root.pop("x-kubernetes-validations")
    for rule in rules:
        rule["rule"] = rule["rule"].replace("self.spec.", "self.")
        rule["fieldPath"] = rule["fieldPath"].removeprefix(".spec")
    root["properties"]["spec"]["x-kubernetes-validations"] = rules
    return crd


def test_the_charts_crd_passes_every_check() -> None:
    assert crd_checks.check(crd_schema.crd()) == []


def test_spec_level_rules_on_a_defaulted_spec_are_refused_like_the_server_does() -> None:
    """kube-apiserver 1.28's answer to the CRD as it was, word for word."""
    problems = crd_checks.check(_rules_on_spec(_crd()))
    assert problems == [
        f'{SPEC_PATH}.default: Invalid value: "object": no such key: dailyLimit evaluating '
        "rule: discountPercent is 0, so every unit of the daily quota would be spent on a "
        "discount of nothing: set discountPercent above 0, or set dailyLimit to 0 to turn "
        "discounts off",
        f'{SPEC_PATH}.default: Invalid value: "object": no such key: dailyLimit evaluating '
        "rule: no eligibility rule is enabled, so no booking could ever get a discount: "
        "enable eligibility.birthday or eligibility.highValue, or set dailyLimit to 0 to "
        "turn discounts off",
    ]


def test_nested_defaults_are_not_applied_to_a_default_before_its_rules_run() -> None:
    """Guarding with has() is accepted: the default is checked as written, {} has no field."""
    crd = _rules_on_spec(_crd())
    for rule in _node(crd, "spec")["x-kubernetes-validations"]:
        rule["rule"] = f"!has(self.dailyLimit) || {rule['rule']}"
    assert crd_checks.check(crd) == []


def test_loading_a_crd_the_server_refuses_fails_every_test_that_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = tmp_path / "crd.yaml"
    refused.write_text(yaml.safe_dump(_rules_on_spec(_crd())))
    monkeypatch.setattr(crd_schema, "CRD_PATH", refused)
    crd_schema.crd.cache_clear()
    try:
        with pytest.raises(crd_checks.Refused, match="no such key: dailyLimit") as refusal:
            crd_schema.crd()
        assert str(refusal.value).startswith(
            'The CustomResourceDefinition "quotapolicies.medbook.io" is invalid: \n* '
        )
    finally:
        crd_schema.crd.cache_clear()


def _set(value: Any, *path: str, key: str = "default") -> Callable[[dict[str, Any]], None]:
    def change(crd: dict[str, Any]) -> None:
        _node(crd, *path)[key] = value

    return change


def _drop(key: str, *path: str) -> Callable[[dict[str, Any]], None]:
    def change(crd: dict[str, Any]) -> None:
        del _node(crd, *path)[key]

    return change


REFUSED = [
    (  # a default that breaks its own node's rule
        _set("Kolkata time", "spec", "timeZone"),
        f'{SPEC_PATH}.properties[timeZone].default: Invalid value: "string": timeZone must be '
        "an IANA time zone name",
    ),
    (  # ... or a rule further down that its value reaches
        _set({"genders": ["Female", "Female"]}, "spec", "eligibility", "birthday"),
        f"{SPEC_PATH}.properties[eligibility].properties[birthday].default.genders: Invalid "
        'value: "array": eligibility.birthday.genders names a gender twice',
    ),
    (  # a default out of its bounds
        _set(-1, "spec", "dailyLimit"),
        f"{SPEC_PATH}.properties[dailyLimit].default: -1 is less than the minimum of 0",
    ),
    (  # a default with a field the schema does not know
        _set({"dailyLimt": 5}, "spec"),
        f'{SPEC_PATH}.default: Invalid value: {{"dailyLimt": 5}}: must not have unknown fields',
    ),
    (  # without maxItems a rule over a list may cost more than the server allows
        _drop("maxItems", "spec", "eligibility", "birthday", "genders"),
        f"{SPEC_PATH}.properties[eligibility].properties[birthday].properties[genders]."
        "x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by "
        "factor of more than 100x",
    ),
    (  # a list-map key that is neither required nor defaulted
        _set(["status"], "status", "conditions", "[]", key="required"),
        f"{ROOT_PATH}.properties[status].properties[conditions].items.properties[type]: "
        "Required value: this property is in x-kubernetes-list-map-keys",
    ),
    (  # a set of objects
        _set("set", "status", "conditions", key="x-kubernetes-list-type"),
        f"{ROOT_PATH}.properties[status].properties[conditions].items.type: Invalid value: "
        '"object": must be a scalar type if x-kubernetes-list-type is set',
    ),
    (  # not structural
        _drop("type", "spec", "cleanup"),
        f"{SPEC_PATH}.properties[cleanup].type: Required value",
    ),
]


@pytest.mark.parametrize(("change", "problem"), REFUSED, ids=[p[:60] for _, p in REFUSED])
def test_crds_the_server_refuses_are_refused(
    change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    crd = _crd()
    change(crd)
    problems = crd_checks.check(crd)
    assert any(p.startswith(problem) for p in problems), problems


def test_the_rules_cost_little_and_every_list_or_string_they_read_is_bounded() -> None:
    for here, node, cardinality in crd_checks.nodes(crd_schema.schema(), ROOT_PATH):
        for rule in node.get("x-kubernetes-validations") or ():
            cost = cel_cost.estimate(rule["rule"], node) * cardinality
            assert cost < cel_cost.PER_RULE_LIMIT / 1000, (here, rule["rule"], cost)


def test_rules_on_items_of_unbounded_lists_exceed_the_crd_budget() -> None:
    """Each rule counts once per item that may carry it (the sweep's run count)."""
    crd = _crd()
    users = _node(crd, "spec", "blockedUsers")
    del users["maxItems"], users["items"]["maxLength"]
    users["items"]["x-kubernetes-validations"] = [
        {"rule": "self.matches('^[a-z]+$')", "message": "lower case"}
    ]
    problems = crd_checks.check(crd)
    assert any("estimated rule cost total for entire OpenAPIv3 schema" in p for p in problems)


def test_a_rule_the_estimator_cannot_price_is_reported_not_trusted() -> None:
    crd = _crd()
    _node(crd, "spec", "timeZone")["x-kubernetes-validations"].append(
        {"rule": "self.lowerAscii() == self", "message": "lower case"}
    )
    problems = crd_checks.check(crd)
    assert any(
        p.endswith("the tests cannot estimate this rule: no cost model for the method lowerAscii()")
        for p in problems
    ), problems


# -- objects: what the server checks beyond types and bounds ------------------------------


def _with_status(**status: Any) -> dict[str, Any]:
    obj = policy()
    obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ({"quota": {"day": "2025-13-01"}}, "status.quota.day: '2025-13-01' is not a 'date'"),
        (
            {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "now"}]},
            "'now' is not a 'date-time'",
        ),
        (
            {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Ready", "status": "False"},
                ]
            },
            'status.conditions[1]: Duplicate value: {"type": "Ready"}',
        ),
    ],
)
def test_formats_and_list_map_keys_are_checked(status: dict[str, Any], problem: str) -> None:
    _, problems = crd_schema.admit(_with_status(**status))
    assert any(problem in p for p in problems), problems


def test_the_timestamps_the_operator_writes_are_valid() -> None:
    _, problems = crd_schema.admit(
        _with_status(
            quota={"day": "2025-01-31"},
            conditions=[
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-31T23:59:59Z"}
            ],
            cronJob={"lastScheduleTime": "2025-01-31T23:59:00.123456+05:30"},
        )
    )
    assert problems == []


# -- the emulated API server refuses such a CRD, and so does `helm install` -------------------


async def test_the_emulated_api_server_refuses_such_a_crd() -> None:
    async with ApiServer() as server, kmock.Server(server) as endpoint:
        server.declare_cluster()
        async with httpx.AsyncClient(base_url=str(endpoint.url)) as http:
            path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            refused = await http.post(path, json=_rules_on_spec(_crd()))
            assert refused.status_code == 422
            assert "no such key: dailyLimit evaluating rule" in refused.json()["message"]
            accepted = await http.post(path, json=_crd())
            assert accepted.status_code == 200
            conditions = {c["type"]: c["status"] for c in accepted.json()["status"]["conditions"]}
            assert conditions["Established"] == "True"
            discovery = await http.get("/apis/medbook.io/v1alpha1")
            assert [r["name"] for r in discovery.json()["resources"]][:1] == ["quotapolicies"]


async def test_helm_install_of_the_operator_chart_fails_on_such_a_crd(tmp_path: Path) -> None:
    chart = tmp_path / "medbook-operator"
    shutil.copytree(crd_schema.ROOT / "charts" / "medbook-operator", chart)
    crd_file = chart / "crds" / crd_schema.CRD_PATH.name
    crd_file.write_text(yaml.safe_dump(_rules_on_spec(_crd())))
    async with helm_cluster("medbook") as rig:
        with pytest.raises(HelmError, match="no such key: dailyLimit evaluating rule"):
            await rig.run("install", chart, "medbook-operator", {}, wait=True, timeout=10)
