"""Dashboards parse as Grafana models; alert rules pass promtool; a real Prometheus scraping
a real run returns data for every panel's and every alert's expression."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import kmock
import pytest
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard
from grafana_foundation_sdk.models.prometheus import Dataquery as PrometheusQuery

from medbook import contracts
from tests.helpers import Infra, ProcessServices, eligible_body, eventually, service_env
from tests.observability.prometheus import PrometheusServer
from tests.operator.apiserver import ApiServer
from tests.operator.conftest import Kubectl, operator_settings, policy, running_operator

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "charts/medbook/dashboards").glob("*.json"))
ALERTS = ROOT / "charts/medbook/alerts/medbook-alerts.yaml"
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "5s"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((path.stem, panel["title"], expr))
    return found


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules (the recording rules they read are checked through them)."""
    return [
        rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


# A threshold: a number, or a parenthesised scalar expression such as (14.4 * (1 - 0.999)).
_THRESHOLD = r"(>=|<=|==|!=|>|<)\s*(\((?:[^()]|\([^()]*\))*\)|-?\d+(\.\d+)?(?![\w\[]))"


def without_thresholds(expr: str) -> str:
    """The alert's expression without its thresholds, to see that its series exist whatever
    their values (a ratio over a window without traffic is NaN, which no comparison keeps)."""
    return re.sub(r"\s+", " ", re.sub(_THRESHOLD, "", expr)).strip()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_grafana_models_with_datasource_and_unit_on_every_panel(path: Path) -> None:
    register_default_plugins()  # so targets parse as their data source's query models
    raw = json.loads(path.read_text())
    model = Dashboard.from_json(raw)
    assert model.title and model.uid == raw["uid"]
    assert [v["name"] for v in raw["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in panels(raw)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in model.panels or []:
        assert panel.datasource is not None and panel.datasource.type_val == "prometheus", (
            panel.title
        )
        assert panel.datasource.uid == "${datasource}", panel.title
        assert panel.field_config and panel.field_config.defaults.unit, f"{panel.title}: no unit"
        assert panel.targets, f"{panel.title}: no query"
        for target in panel.targets:
            assert isinstance(target, PrometheusQuery), panel.title
            assert target.expr and target.datasource["uid"] == "${datasource}", panel.title


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (make test installs it)"
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = Path(__file__).with_name("alerts-test.yaml")
    unit = subprocess.run(
        [promtool, "test", "rules", tests.name], capture_output=True, text=True, cwd=tests.parent
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a unit test"


def test_every_alert_has_a_summary_severity_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


async def test_prometheus_scraping_a_real_run_has_data_for_every_panel_and_alert(
    infra: Infra, tmp_path: Path
) -> None:
    services = ProcessServices(
        infra, tmp_path / "logs", extra_env={"MEDBOOK_DAILY_LIMIT": "5"}
    ).start()
    try:
        async with ApiServer() as server, kmock.Server(server) as endpoint:
            server.declare()
            async with httpx.AsyncClient(base_url=str(endpoint.url), timeout=5) as http:
                kubectl = Kubectl(server, http)
                settings = operator_settings(kubectl, infra.redis_url)
                async with running_operator(settings):
                    await kubectl.apply(policy(dailyLimit=5))
                    await kubectl.wait_ready("default")
                    prometheus = PrometheusServer(
                        tmp_path / "prometheus",
                        {
                            "booking": f"127.0.0.1:{services.http_port}",
                            "discount": f"127.0.0.1:{services.metrics_port}",
                            "operator": f"127.0.0.1:{settings.metrics_port}",
                        },
                        rule_files=(ALERTS,),  # the SLO alerts read its recording rules
                    ).start()
                    try:
                        await exercise_the_saga(infra, services)
                        await eventually(
                            prometheus.targets_up,
                            lambda up: len(up) == 3 and all(up.values()),
                            what="all three targets up",
                        )
                        await asyncio.sleep(6)  # a few more scrapes of the final state
                        missing = []
                        for source, title, expr in dashboard_queries():
                            if not await prometheus.query(expr):
                                missing.append(f"{source} / {title}: {expr}")
                        for rule in alert_rules():
                            expr = without_thresholds(rule["expr"])
                            if not await prometheus.query(expr):
                                missing.append(f"alert {rule['alert']}: {expr}")
                        assert not missing, "no data for:\n" + "\n".join(missing)
                    finally:
                        prometheus.stop()
    finally:
        services.stop()


async def exercise_the_saga(infra: Infra, services: ProcessServices) -> None:
    """Every kind of event the panels show: discounts, quota exhausted, blocked, cancel, DLQ, sweep."""
    async with httpx.AsyncClient(base_url=services.api_url, timeout=10) as api:

        async def book(body: dict[str, Any]) -> str:
            booking_id = (await api.post("/booking", json=body)).json()["bookingId"]
            await eventually(
                lambda: api.get(f"/booking/{booking_id}"),
                lambda r: r.json()["status"] != "PENDING",
                what="final",
            )
            return booking_id

        first = await book(eligible_body())
        assert (await api.post(f"/booking/{first}/cancel")).status_code == 200
        for _ in range(7):  # the limit is 5: the last ones find the quota spent
            await book(eligible_body())
        await book(eligible_body(name="fail_test_user"))
        await api.get("/booking/not-a-uuid")
    connection = await aio_pika.connect(infra.amqp_url)  # a malformed event: a dead letter
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(contracts.EXCHANGE)
        await exchange.publish(
            aio_pika.Message(b"garbage", type="booking_created"), routing_key="booking_created"
        )
    sweep = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "medbook.booking.sweep", env=service_env(infra)
    )
    assert await sweep.wait() == 0


def test_thresholds_are_opened_up_whatever_their_form() -> None:
    assert without_thresholds("max(x) > 420") == "max(x)"
    assert without_thresholds("a:ratio_rate1h > (14.4 * (1 - 0.999)) and b > (6 * (1 - 0.99))") == (
        "a:ratio_rate1h and b"
    )
    assert without_thresholds("rate(x[5m]) > 0 and y >= max(z)") == "rate(x[5m]) and y >= max(z)"
