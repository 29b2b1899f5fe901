"""The quota operator reconciling QuotaPolicy objects: kmock as the API server, a real Redis,
and, where the policy matters, the real booking service and discount worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import zoneinfo
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import port_for
import yaml
from redis.asyncio import Redis

from medbook.contracts import QUOTA_EXHAUSTED_REASON
from medbook.devstack.servers import RedisServer
from medbook.discount.policy import QuotaPolicy
from medbook.discount.policy_store import PolicyStore
from medbook.discount.quota import QuotaStore
from tests.helpers import Infra, eligible_body, eventually, running_stack, today
from tests.operator.conftest import (
    CLEANUP_IMAGE,
    NAMESPACE,
    Kubectl,
    OperatorFactory,
    policy,
    published,
)
from tests.operator.crd_schema import EXAMPLES

BOOKING_WITH_DISCOUNT = 396  # 450 less 12%


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _pod(cron: dict[str, Any]) -> dict[str, Any]:
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


async def test_applying_a_policy_publishes_it_and_creates_the_cleanup_cronjob(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    example = _example("quotapolicy-berlin.yaml")
    async with start_operator():
        assert (await kubectl.apply(example)).status_code == 200
        obj = await kubectl.wait_ready("default", reason="Reconciled")

    assert await published(redis) == QuotaPolicy.model_validate(example["spec"]).to_spec()
    # The store names the policy's owner, so tools change the limit through the object.
    assert await PolicyStore(redis).owner() == f"QuotaPolicy {NAMESPACE}/default"

    cron = await kubectl.cronjob("default-cleanup")
    assert cron is not None
    assert kubernetes_validate.validate(cron, "1.30.0", strict=True)
    assert cron["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "medbook.io/v1alpha1",
            "kind": "QuotaPolicy",
            "name": "default",
            "uid": obj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = cron["spec"]
    assert spec["schedule"] == "*/10 * * * *"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["suspend"] is False
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    pod = _pod(cron)
    [container] = pod["containers"]
    assert container["command"] == ["medbook-cleanup", "--pending-timeout", "900"]
    assert container["image"] == CLEANUP_IMAGE
    assert container["envFrom"] == [
        {"configMapRef": {"name": "medbook-db"}},
        {"secretRef": {"name": "medbook-db-credentials"}},
    ]
    assert pod["serviceAccountName"] == "medbook-cleanup"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]

    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"] == 1
    berlin_today = dt.datetime.now(zoneinfo.ZoneInfo("Europe/Berlin")).date().isoformat()
    assert status["quota"] == {"day": berlin_today, "limit": 20, "used": 0, "remaining": 20}
    assert status["cronJob"]["name"] == "default-cleanup"
    assert status["cronJob"]["schedule"] == "*/10 * * * *"
    events = {e["reason"]: e for e in await kubectl.events()}
    assert {"PolicyPublished", "CronJobCreated", "Reconciled"} <= set(events)
    assert events["Reconciled"]["type"] == "Normal"
    assert events["Reconciled"]["involvedObject"]["uid"] == obj["metadata"]["uid"]


async def test_a_new_daily_limit_reaches_the_worker_and_patches_nothing_else(
    kubectl: Kubectl, start_operator: OperatorFactory, infra: Infra
) -> None:
    async with start_operator(), running_stack(infra) as stack:
        assert stack.worker is not None
        assert (await kubectl.apply(policy(dailyLimit=1))).status_code == 200
        await kubectl.wait_ready("default")
        await eventually(
            lambda: _current_limit(stack.worker), lambda limit: limit == 1, what="worker limit 1"
        )
        first = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
        second = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
        assert (first["status"], first["finalPrice"]) == ("CONFIRMED", BOOKING_WITH_DISCOUNT)
        assert (second["status"], second["failReason"]) == ("REJECTED", QUOTA_EXHAUSTED_REASON)

        cron_before = await kubectl.cronjob("default-cleanup")
        writes_before = len(kubectl.writes())
        assert (await kubectl.patch("default", {"dailyLimit": 3})).status_code == 200
        await eventually(
            lambda: _current_limit(stack.worker), lambda limit: limit == 3, what="worker limit 3"
        )
        third = await stack.wait_terminal((await stack.book(eligible_body())).json()["bookingId"])
        assert (third["status"], third["finalPrice"]) == ("CONFIRMED", BOOKING_WITH_DISCOUNT)

        # The status shows the usage the quota store holds after those real bookings.
        used_in_store = await QuotaStore(stack.redis).used(today())
        assert used_in_store == 2
        obj = await eventually(
            lambda: kubectl.get("default"),
            lambda o: (o or {}).get("status", {}).get("quota", {}).get("used") == used_in_store,
            what="status.quota.used == 2",
        )
        assert obj["status"]["quota"] == {
            "day": today().isoformat(), "limit": 3, "used": 2, "remaining": 1,
        }  # fmt: skip
        assert obj["status"]["observedGeneration"] == 2

        assert await kubectl.cronjob("default-cleanup") == cron_before
        after = kubectl.writes()[writes_before:]
        assert {r.resource.plural for r in after if r.resource} <= {"quotapolicies", "events"}
        # Besides the status it reports, nothing but the published policy changed.
        assert not [r for r in after if r.resource and r.resource.plural == "cronjobs"]


def _current_limit(worker: Any) -> Any:
    async def probe() -> int:
        return int(worker.policy.current.daily_limit)

    return probe()


async def test_a_new_schedule_or_timeout_patches_the_cronjob(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        await kubectl.apply(policy(dailyLimit=5))
        await kubectl.wait_ready("default")
        before = await kubectl.cronjob("default-cleanup")
        assert before is not None
        await kubectl.patch(
            "default", {"cleanup": {"schedule": "*/5 * * * *", "pendingTimeoutSeconds": 600}}
        )
        cron = await eventually(
            lambda: kubectl.cronjob("default-cleanup"),
            lambda c: c is not None and c["spec"]["schedule"] == "*/5 * * * *",
            what="CronJob schedule patched",
        )
        await kubectl.wait_event("CronJobUpdated")
        await kubectl.patch("default", {"cleanup": {"suspend": True}})
        suspended = await eventually(
            lambda: kubectl.cronjob("default-cleanup"),
            lambda c: c is not None and c["spec"]["suspend"] is True,
            what="CronJob suspended",
        )
    assert cron["metadata"]["uid"] == before["metadata"]["uid"]  # patched, not replaced
    assert _pod(cron)["containers"][0]["command"][-1] == "600"
    assert _pod(suspended)["containers"][0]["command"][-1] == "600"
    assert (await published(redis) or {})["cleanup"] == {
        "schedule": "*/5 * * * *", "pendingTimeoutSeconds": 600, "suspend": True,
    }  # fmt: skip


async def test_invalid_objects_are_refused_and_a_bad_zone_keeps_the_last_good_policy(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        refused = await kubectl.apply(policy(dailyLimit=-3, cleanup={"schedule": "hourly"}))
        assert refused.status_code == 422
        assert "dailyLimit: -3 is less than the minimum of 0" in refused.json()["message"]
        assert await kubectl.get("default") is None

        await kubectl.apply(policy(dailyLimit=7))
        await kubectl.wait_ready("default")
        refused = await kubectl.patch("default", {"discountPercent": 0})
        assert refused.status_code == 422
        assert "discountPercent is 0" in refused.json()["message"]

        # The CRD checks a zone's shape; the operator checks that the zone exists.
        assert (await kubectl.patch("default", {"timeZone": "Mars/Olympus"})).status_code == 200
        obj = await kubectl.wait_ready("default", status="False", reason="InvalidSpec")
        warning = await kubectl.wait_event("InvalidSpec")
    assert "timeZone: Value error, unknown time zone 'Mars/Olympus'" in warning["message"]
    assert warning["type"] == "Warning"
    assert obj["status"]["observedGeneration"] == 2
    assert (await published(redis) or {})["dailyLimit"] == 7  # the last good policy stays


async def test_deleting_the_policy_withdraws_it(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        await kubectl.apply(policy(dailyLimit=5))
        await kubectl.wait_ready("default")
        assert await kubectl.cronjob("default-cleanup") is not None
        assert await published(redis) is not None
        assert (await kubectl.delete("default")).status_code == 200
        await eventually(lambda: kubectl.get("default"), lambda o: o is None, what="deleted")
        await kubectl.wait_event("PolicyWithdrawn")
    assert await published(redis) is None  # the worker falls back to its defaults
    # Its CronJob goes at once (the garbage collector would follow the owner reference,
    # but later, or never in a namespace being deleted).
    assert await kubectl.cronjob("default-cleanup") is None
    [deleted] = [w for w in kubectl.writes() if w.method == "DELETE" and "cronjobs" in str(w.url)]
    assert deleted.name == "default-cleanup"


async def test_a_second_policy_gets_conflict_until_the_first_is_deleted(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        await kubectl.apply(policy("first", dailyLimit=5))
        await kubectl.wait_ready("first")
        await kubectl.apply(policy("second", dailyLimit=9))
        second = await kubectl.wait_ready("second", status="False", reason="Conflict")
        assert "'first' is the policy in force" in second["status"]["conditions"][0]["message"]
        assert "quota" not in second["status"] and "cronJob" not in second["status"]
        assert await kubectl.cronjob("second-cleanup") is None
        assert (await published(redis) or {})["dailyLimit"] == 5
        conflict = await kubectl.wait_event("Conflict")
        assert conflict["type"] == "Warning"
        assert conflict["involvedObject"]["name"] == "second"

        await kubectl.delete("first")
        second = await kubectl.wait_ready("second", reason="Reconciled")
        assert await kubectl.cronjob("second-cleanup") is not None
        assert (await published(redis) or {})["dailyLimit"] == 9
        assert second["status"]["quota"]["limit"] == 9


async def test_redis_stopped_during_a_reconcile_turns_the_condition_false_then_recovers(
    kubectl: Kubectl, start_operator: OperatorFactory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    try:
        async with start_operator(redis={"url": server.url, "timeout": 0.5}) as operator:
            await kubectl.apply(policy(dailyLimit=5))
            await kubectl.wait_ready("default")
            server.stop()
            await kubectl.patch("default", {"dailyLimit": 8})
            await kubectl.wait_ready("default", status="False", reason="RedisUnavailable")
            warning = await kubectl.wait_event("RedisUnavailable")
            assert warning["type"] == "Warning"
            # The status timer may hit the stopped Redis first (generation 1 still
            # observed); the reconcile of generation 2 then fails too, and says so.
            obj = await eventually(
                lambda: kubectl.get("default"),
                lambda o: o is not None and o["status"].get("observedGeneration") == 2,
                what="generation 2 observed",
            )
            condition = obj["status"]["conditions"][0]
            assert (condition["status"], condition["reason"]) == ("False", "RedisUnavailable")
            # Whichever of the two touched Redis last wrote the message.
            assert any(
                text in condition["message"]
                for text in ("cannot publish the policy", "cannot read today's usage")
            )

            server.start()  # no restart of the operator: its status timer retries
            obj = await kubectl.wait_ready("default", reason="Reconciled")
            assert operator.reconciler is not None
        assert (await published(client) or {})["dailyLimit"] == 8
        assert obj["status"]["quota"]["limit"] == 8
    finally:
        await client.aclose()
        server.stop()


async def test_a_restart_of_the_operator_changes_nothing_in_the_cluster(
    kubectl: Kubectl, start_operator: OperatorFactory, redis: Redis
) -> None:
    async with start_operator():
        await kubectl.apply(policy("first", dailyLimit=5))
        await kubectl.wait_ready("first")
        await kubectl.apply(policy("second", dailyLimit=6))
        await kubectl.wait_ready("second", status="False", reason="Conflict")
    objects = await _everything(kubectl)
    writes = len(kubectl.writes())
    policy_document = await redis.get("medbook:policy")

    async with start_operator(status_interval=0.2) as operator:
        # Let it resume both objects and run its status timer a few times.
        from medbook_operator import metrics

        def count(handler: str) -> float:
            return sum(
                s.value
                for m in metrics.REGISTRY.collect()
                if m.name == "medbook_operator_reconciliations"
                for s in m.samples
                if s.name.endswith("_total") and s.labels["handler"] == handler
            )

        resumed, ticks = count("resume"), count("timer")
        await eventually(
            lambda: _value(count("resume") >= resumed + 2 and count("timer") >= ticks + 4),
            what="resumed and refreshed",
        )
        assert operator is not None

    assert kubectl.writes()[writes:] == []
    assert await _everything(kubectl) == objects
    assert await redis.get("medbook:policy") == policy_document


async def _value(value: bool) -> bool:
    return value


async def _everything(kubectl: Kubectl) -> dict[str, Any]:
    return {
        "policies": (await kubectl.http.get("/apis/medbook.io/v1alpha1/quotapolicies")).json(),
        "cronjobs": (await kubectl.http.get("/apis/batch/v1/cronjobs")).json(),
        "events": (await kubectl.http.get("/api/v1/events")).json(),
    }


async def test_metrics_and_liveness_are_served(
    kubectl: Kubectl, start_operator: OperatorFactory
) -> None:
    async with start_operator() as operator:
        await kubectl.apply(policy(dailyLimit=5))
        await kubectl.wait_ready("default")
        settings = operator.settings
        async with httpx.AsyncClient(timeout=5) as http:
            metrics_page = await http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
            assert settings.liveness_endpoint is not None
            liveness = await http.get(settings.liveness_endpoint)
    assert metrics_page.status_code == 200
    text = metrics_page.text
    assert 'medbook_operator_reconciliations_total{handler="create",outcome="Reconciled"}' in text
    assert "medbook_operator_policies_published_total" in text
    assert "medbook_operator_errors_total" in text or "medbook_operator_errors" in text
    assert liveness.status_code == 200


async def test_the_console_script_logs_json_and_stops_on_sigterm(
    kubectl: Kubectl, redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    log_file = tmp_path / "operator.log"
    env = {
        **os.environ,
        "MEDBOOK_OPERATOR_NAMESPACE": "medbook",
        "MEDBOOK_OPERATOR_API_SERVER": str(kubectl.http.base_url).rstrip("/"),
        "MEDBOOK_REDIS_URL": redis_url,
        "MEDBOOK_OPERATOR_METRICS_PORT": str(port_for.select_random()),
        "MEDBOOK_OPERATOR_LIVENESS": f"http://127.0.0.1:{port_for.select_random()}/healthz",
        "MEDBOOK_OPERATOR_STATUS_INTERVAL": "0.5",
    }
    with log_file.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "medbook-operator"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            await kubectl.apply(policy(dailyLimit=4))
            await kubectl.wait_ready("default", timeout=20)
            assert (await published(redis) or {})["dailyLimit"] == 4
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    assert any("published" in line["message"] for line in lines)
    assert all({"message", "timestamp", "severity"} <= set(line) for line in lines)
