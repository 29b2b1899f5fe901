"""`medbook scenario`: pass on a healthy system, fail clearly on a broken one; the quota
scenario changes the limit through the policy's owner (kubectl, or the store) and restores it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from medbook.discount.policy import QuotaPolicy
from medbook.discount.policy_store import PolicyStore
from tests.cli.conftest import Medbook, explain
from tests.helpers import Stack


async def test_every_scenario_passes_on_a_healthy_system(medbook: Medbook, stack: Stack) -> None:
    result = await medbook("scenario", "all")
    assert result.exit_code == 0, explain(result)
    out = result.stdout
    for name in ("positive", "blocked", "no-discount", "quota", "edge"):
        assert f"PASS {name}:" in out
    assert "FAIL" not in out
    assert "5 scenario(s)" in out and "5 passed" in out
    # Each check says what a correct system does and what this one did.
    assert "ok   status: expected CONFIRMED; saw CONFIRMED at 396 (base 450)" in out
    assert "duplicate event at the broker (2 extra copies of booking_created)" in out
    assert "cancel racing the discount" in out
    # No policy was published before: the one published for the quota run is withdrawn.
    assert await PolicyStore(stack.redis).load() is None
    assert "publishing this environment's defaults with daily limit" in result.stderr


async def test_scenarios_fail_clearly_when_the_worker_is_stopped(
    medbook: Medbook, stack: Stack
) -> None:
    await stack.stop_worker()
    result = await medbook("scenario", "positive", "--timeout", "1")
    assert result.exit_code == 1, explain(result)
    out = result.stdout
    assert "FAIL positive:" in out
    assert "FAIL status: expected CONFIRMED; saw PENDING (no result yet)" in out
    assert "FAIL final status" not in out  # only the checks a positive booking makes
    assert "FAILED: positive" in out

    result = await medbook("scenario", "no-discount", "--timeout", "0.5", "--json")
    assert result.exit_code == 1, explain(result)
    report = json.loads(result.stdout)
    assert report["ok"] is False
    failed = [c for c in report["scenarios"][0]["checks"] if not c["ok"]]
    assert {
        "name": "status",
        "expected": "CONFIRMED",
        "seen": "PENDING (no result yet)",
    }.items() <= failed[0].items()


async def test_quota_scenario_edits_a_published_policy_in_the_store_and_restores_it(
    medbook: Medbook, stack: Stack
) -> None:
    store = PolicyStore(stack.redis)
    await store.publish(QuotaPolicy(daily_limit=50, discount_percent=12))
    result = await medbook("scenario", "quota")
    assert result.exit_code == 0, explain(result)
    assert "daily limit 50 -> 2 in the policy store" in result.stderr
    restored = await store.load()
    assert restored is not None and restored.daily_limit == 50
    assert await store.owner() is None


FAKE_KUBECTL = """#!{python}
import json, sys
import redis
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
if {fail!r}:
    print('Error from server (Forbidden): quotapolicies.medbook.io "default" is forbidden',
          file=sys.stderr)
    sys.exit(1)
namespace, name = args[args.index("-n") + 1], args[args.index("quotapolicy") + 1]
patch = json.loads(args[args.index("-p") + 1])
client = redis.Redis.from_url({redis_url!r})
policy = json.loads(client.get("medbook:policy"))
policy.update(patch["spec"])  # what the operator does: validate and publish the new spec
client.set("medbook:policy", json.dumps(policy))
client.set("medbook:policy:owner", f"QuotaPolicy {{namespace}}/{{name}}")
print(f"quotapolicy.medbook.io/{{name}} patched")
"""


def fake_kubectl(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    script = bin_dir / "kubectl"
    script.write_text(
        FAKE_KUBECTL.format(python=sys.executable, log=str(log), redis_url=redis_url, fail=fail)
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    return log


async def test_quota_scenario_patches_the_quota_policy_object_when_the_operator_owns_it(
    medbook: Medbook, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PolicyStore(stack.redis)
    await store.publish(QuotaPolicy(daily_limit=100), owner="QuotaPolicy medbook/default")
    log = fake_kubectl(tmp_path, stack.infra.redis_url, monkeypatch, fail=False)
    result = await medbook("scenario", "quota")
    assert result.exit_code == 0, explain(result)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    patch = ["-n", "medbook", "patch", "quotapolicy", "default", "--type", "merge", "-p"]
    assert calls == [
        [*patch, '{"spec": {"dailyLimit": 2}}'],  # 0 used today: room for 2 more
        [*patch, '{"spec": {"dailyLimit": 100}}'],  # restored
    ]
    assert "daily limit 100 -> 2 on QuotaPolicy medbook/default (kubectl patch)" in result.stderr
    restored = await store.load()
    assert restored is not None and restored.daily_limit == 100
    assert await store.owner() == "QuotaPolicy medbook/default"


async def test_quota_scenario_reports_a_refused_kubectl_patch(
    medbook: Medbook, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await PolicyStore(stack.redis).publish(QuotaPolicy(), owner="QuotaPolicy medbook/default")
    fake_kubectl(tmp_path, stack.infra.redis_url, monkeypatch, fail=True)
    result = await medbook("scenario", "quota")
    assert result.exit_code == 2, explain(result)
    assert "failed (exit 1)" in result.stderr and "is forbidden" in result.stderr
    assert "could not restore" not in result.stderr  # nothing was changed
    assert "Traceback" not in result.output
