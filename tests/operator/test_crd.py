"""The QuotaPolicy CRD: a valid CRD, in agreement with the policy model, refusing bad objects.

The schema is checked offline (see ``crd_schema`` for what that covers and
what only an API server can check).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from medbook.discount import policy as policy_module
from medbook.discount.policy import QuotaPolicy
from medbook_operator import API_VERSION, CRD_NAME, GROUP, KIND, PLURAL, VERSION
from tests.operator import crd_schema
from tests.operator.crd_schema import EXAMPLES, ROOT, admit, apply_defaults

# Rules the CRD adds on top of the model: the API server refuses these objects, the model
# (which also reads the worker's environment defaults) would accept them. They combine
# fields of spec, so they sit on the object (see the CRD's comment, and
# test_spec_level_rules_on_a_defaulted_spec_are_refused_like_the_server_does).
CRD_ONLY_RULES = {
    ".": {
        "self.spec.dailyLimit == 0 || self.spec.discountPercent > 0.0",
        "self.spec.dailyLimit == 0 || self.spec.eligibility.birthday.enabled"
        " || self.spec.eligibility.highValue.enabled",
    },
}

# Where the model is more lenient than the CRD (pydantic's lax mode): the API server
# refuses these, the model would read them.
MODEL_IS_LENIENT = (
    "'5' is not of type 'integer'",  # a number in a string
    "'female' is not one of",  # genders in any case
)

_JSON_TYPES = {"integer": "integer", "number": "number", "string": "string",
               "boolean": "boolean", "array": "array", "object": "object"}  # fmt: skip


def test_the_crd_is_a_valid_kubernetes_object() -> None:
    crd = crd_schema.crd()
    assert kubernetes_validate.validate(crd, "1.30.0", strict=True)
    assert crd["metadata"]["name"] == CRD_NAME
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["qp"]
    [version] = crd["spec"]["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_the_crd_lives_once_in_the_operator_chart() -> None:
    copies = [
        path
        for path in ROOT.rglob("*.y*ml")
        if ".venv" not in path.parts
        and "kind: CustomResourceDefinition" in path.read_text(errors="replace")
        and CRD_NAME in path.read_text(errors="replace")
    ]
    assert copies == [crd_schema.CRD_PATH]


def test_printer_columns_point_at_fields_of_the_schema() -> None:
    [version] = crd_schema.crd()["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Limit", "Used Today", "Remaining", "Ready", "Reason", "Age"]
    root = crd_schema.schema()
    for name, path in columns.items():
        if path.startswith(".metadata"):
            continue
        node = root
        for part in re.sub(r"\[\?\(.*?\)\]", "", path).lstrip(".").split("."):
            node = node["properties"][part]
            if node.get("type") == "array":
                node = node["items"]
        assert node["type"] in ("integer", "string", "object"), name


# -- the model and the schema cannot drift ----------------------------------------------------


def _model_fields(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Every field of the model's JSON schema, by dotted path, with $refs resolved."""
    if "$ref" in node:
        node = {
            **defs[node["$ref"].split("/")[-1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    fields = {path: node} if path else {}
    for name, sub in (node.get("properties") or {}).items():
        fields.update(_model_fields(sub, defs, f"{path}.{name}"))
    if "items" in node:
        fields.update(_model_fields(node["items"], defs, f"{path}[]"))
    return fields


def _crd_fields(node: dict[str, Any], path: str = "") -> dict[str, Any]:
    fields = {path: node} if path else {}
    for name, sub in (node.get("properties") or {}).items():
        fields.update(_crd_fields(sub, f"{path}.{name}"))
    if "items" in node:
        fields.update(_crd_fields(node["items"], f"{path}[]"))
    return fields


def test_the_spec_schema_and_the_policy_model_agree_field_by_field() -> None:
    model_schema = QuotaPolicy.model_json_schema(by_alias=True)
    model = _model_fields(model_schema, model_schema["$defs"])
    crd = _crd_fields(crd_schema.spec_schema())
    assert sorted(crd) == sorted(model), "the same field names at the same places"
    for path, m in model.items():
        c = crd[path]
        assert c["type"] == _JSON_TYPES[m.get("type", "object")], path
        for bound in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"):
            assert c.get(bound) == m.get(bound), f"{path}: {bound}"
        assert c.get("enum") == m.get("enum"), f"{path}: enum"
        if m.get("additionalProperties") is False:  # the model forbids unknown fields
            assert not c.get("x-kubernetes-preserve-unknown-fields"), path


def test_the_bounds_are_the_models_constants() -> None:
    spec = crd_schema.spec_schema()["properties"]
    assert spec["dailyLimit"]["maximum"] == policy_module.MAX_DAILY_LIMIT
    assert spec["blockedUsers"]["maxItems"] == policy_module.MAX_BLOCKED_USERS
    assert spec["blockedUsers"]["items"]["maxLength"] == policy_module.MAX_NAME_LENGTH
    timeout = spec["cleanup"]["properties"]["pendingTimeoutSeconds"]
    assert timeout["minimum"] == policy_module.MIN_PENDING_TIMEOUT_SECONDS
    assert timeout["maximum"] == policy_module.MAX_PENDING_TIMEOUT_SECONDS


def test_an_empty_spec_defaults_to_the_models_defaults() -> None:
    defaulted = apply_defaults(crd_schema.schema(), {"spec": {}})["spec"]
    assert QuotaPolicy.model_validate(defaulted) == QuotaPolicy()
    assert defaulted == QuotaPolicy().to_spec()


@pytest.mark.parametrize(
    "partial",
    [
        {"eligibility": {"birthday": {"enabled": False}}},
        {"cleanup": {"suspend": True}},
        {"eligibility": {}},
        {"dailyLimit": 0},
    ],
)
def test_partial_specs_default_like_the_model(partial: dict[str, Any]) -> None:
    defaulted = apply_defaults(crd_schema.schema(), {"spec": copy.deepcopy(partial)})["spec"]
    assert defaulted == QuotaPolicy.model_validate(partial).to_spec()


def test_the_cel_rules_compile_and_are_known() -> None:
    found: dict[str, set[str]] = {}
    for path, rule in crd_schema.rules(crd_schema.schema()):
        crd_schema._program(rule["rule"])  # compiles
        assert rule.get("message"), f"{path}: a rule needs a message a person understands"
        found.setdefault(path, set()).add(rule["rule"])
    assert found["."] == CRD_ONLY_RULES["."]
    assert set(found) == {
        ".",
        ".spec.timeZone",
        ".spec.eligibility.birthday.genders",
        ".spec.cleanup.schedule",
    }


# -- objects: the examples pass, the bad ones are refused --------------------------------------


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_the_examples_are_valid(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert obj["apiVersion"] == API_VERSION and obj["kind"] == KIND
    defaulted, problems = admit(obj)
    assert problems == []
    QuotaPolicy.model_validate(defaulted["spec"])


def test_there_are_examples() -> None:
    assert {p.name for p in _examples()} >= {"quotapolicy.yaml", "quotapolicy-minimal.yaml"}


def _spec(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "p"}, "spec": spec}


BAD_OBJECTS = [
    # (spec, words the API server's answer contains)
    ({"dailyLimit": -1}, "dailyLimit: -1 is less than the minimum of 0"),
    ({"dailyLimit": 1_000_001}, "dailyLimit: 1000001 is greater than the maximum"),
    ({"dailyLimit": "5"}, "dailyLimit: '5' is not of type 'integer'"),
    ({"discountPercent": 101}, "discountPercent: 101 is greater than the maximum of 100"),
    ({"timeZone": "Kolkata time"}, "timeZone must be an IANA time zone name"),
    ({"eligibility": {"birthday": {"genders": []}}}, "should be non-empty"),
    ({"eligibility": {"birthday": {"genders": ["female"]}}}, "'female' is not one of"),
    ({"eligibility": {"birthday": {"genders": ["Female", "Female"]}}}, "names a gender twice"),
    ({"eligibility": {"highValue": {"threshold": -5}}}, "threshold: -5 is less than the minimum"),
    ({"blockedUsers": [""]}, "blockedUsers.0: '' should be non-empty"),
    ({"blockedUsers": ["x" * 201]}, "is too long"),
    ({"cleanup": {"schedule": "every minute"}}, "cleanup.schedule must be a cron expression"),
    ({"cleanup": {"schedule": "* * * *"}}, "cleanup.schedule must be a cron expression"),
    ({"cleanup": {"pendingTimeoutSeconds": 5}}, "5 is less than the minimum of 30"),
    ({"cleanup": {"pendingTimeoutSeconds": 700_000}}, "is greater than the maximum of 604800"),
    ({"dailyLimt": 5}, "Additional properties are not allowed ('dailyLimt' was unexpected)"),
    ({"cleanup": {"every": "1m"}}, "('every' was unexpected)"),
    ({"discountPercent": 0}, "discountPercent is 0, so every unit of the daily quota"),
    (
        {"eligibility": {"birthday": {"enabled": False}, "highValue": {"enabled": False}}},
        "no eligibility rule is enabled",
    ),
]


@pytest.mark.parametrize(
    ("spec", "problem"), BAD_OBJECTS, ids=[str(b[0])[:40] for b in BAD_OBJECTS]
)
def test_bad_objects_are_refused_with_a_readable_reason(spec: dict[str, Any], problem: str) -> None:
    _, problems = admit(_spec(**spec))
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("spec", "problem"), BAD_OBJECTS, ids=[str(b[0])[:40] for b in BAD_OBJECTS]
)
def test_what_the_crd_refuses_the_model_refuses_too(spec: dict[str, Any], problem: str) -> None:
    crd_only = "discountPercent is 0" in problem or "no eligibility rule" in problem
    if crd_only or any(words in problem for words in MODEL_IS_LENIENT):
        assert QuotaPolicy.model_validate(spec)  # CRD_ONLY_RULES, MODEL_IS_LENIENT
        return
    with pytest.raises(ValidationError):
        QuotaPolicy.model_validate(spec)


@pytest.mark.parametrize(
    "spec",
    [
        {"timeZone": "Mars/Olympus"},  # shaped like an IANA name, but no such zone
        {"cleanup": {"schedule": "61 * * * *"}},  # five fields, but minute 61
        {"cleanup": {"schedule": "*/0 * * * *"}},  # a step of 0
    ],
)
def test_what_only_the_operator_refuses(spec: dict[str, Any]) -> None:
    """The CRD checks shapes; the operator's model checks the zone and cron ranges (InvalidSpec)."""
    _, problems = admit(_spec(**spec))
    assert problems == []
    with pytest.raises(ValidationError):
        QuotaPolicy.model_validate(spec)


def test_a_valid_object_passes_the_cel_rules_with_fractional_percentages() -> None:
    _, problems = admit(_spec(discountPercent=12.5, dailyLimit=0, timeZone="UTC"))
    assert problems == []


def test_the_status_schema_holds_what_the_operator_writes() -> None:
    status = crd_schema.schema()["properties"]["status"]["properties"]
    assert set(status) == {"observedGeneration", "conditions", "quota", "cronJob"}
    assert set(status["quota"]["properties"]) == {"day", "limit", "used", "remaining"}
    obj = _spec()
    obj["status"] = {
        "observedGeneration": 2,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
             "observedGeneration": 2, "lastTransitionTime": "2025-01-01T00:00:00Z"}
        ],
        "quota": {"day": "2025-01-01", "limit": 5, "used": 1, "remaining": 4},
        "cronJob": {"name": "p-cleanup", "schedule": "* * * * *", "suspended": False,
                    "lastScheduleTime": "2025-01-01T00:00:00Z"},
    }  # fmt: skip
    _, problems = admit(obj)
    assert problems == []
