"""The discount worker's decisions in one Redis pipeline per loop turn (idempotency.py with
group_commit.py), against a real Redis: each decision stays its own atomic script with its
own answer, the quota stays exact, and an outage fails the batch once, as a whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from redis.asyncio import Redis

from medbook import contracts
from medbook.devstack.servers import RedisServer
from medbook.discount import decision
from medbook.discount.idempotency import IdempotencyStore
from medbook.discount.keys import counter_key
from medbook.discount.policy import QuotaPolicy
from medbook.discount.quota import QuotaStore, Released
from medbook.discount.replica_ack import ReplicaAck
from medbook.failures import Dependency, DependencyUnavailable
from medbook.redis_connection import redis_client
from tests.unit.test_rules import booking

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
async def redis(redis_url: str):
    client = redis_client(redis_url)
    yield client
    await client.aclose()


def _plans(count: int, limit: int) -> list[decision.Plan]:
    policy = QuotaPolicy(daily_limit=limit, time_zone="UTC")
    birthday = NOW.date().replace(year=1992).isoformat()  # (1992 has a 29 February)
    return [decision.plan(booking(dob=birthday), policy, NOW) for _ in range(count)]


async def test_concurrent_decisions_share_a_pipeline_and_the_quota_stays_exact(
    redis: Redis,
) -> None:
    store = IdempotencyStore(redis, ttl_seconds=3600)
    plans = _plans(60, limit=25)
    calls = []
    original = store.replicas.run_many

    async def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return await original(*args, **kwargs)

    store.replicas.run_many = counting  # type: ignore[method-assign]
    completions = await asyncio.gather(
        *(store.complete(p.result.booking_id, p, NOW.isoformat()) for p in plans)
    )
    assert sum(calls) == 60 and len(calls) < 10, calls  # batched, not one round trip each
    assert all(c.fresh for c in completions)
    assert sum(bool(c.granted) for c in completions) == 25
    assert int(await redis.get(counter_key(NOW.date()))) == 25
    # Each got its own result: the granted ones their discount, the others the denial.
    for plan, completion in zip(plans, completions, strict=True):
        result, _ = plan.resolve(bool(completion.granted))
        assert completion.result == contracts.encode(result)


async def test_repeats_in_one_batch_get_the_first_stored_result(redis: Redis) -> None:
    store = IdempotencyStore(redis, ttl_seconds=3600)
    (plan,) = _plans(1, limit=5)
    completions = await asyncio.gather(
        *(store.complete(plan.result.booking_id, plan, NOW.isoformat()) for _ in range(5))
    )
    assert [c.fresh for c in completions].count(True) == 1
    assert len({c.result for c in completions}) == 1
    assert int(await redis.get(counter_key(NOW.date()))) == 1


async def test_a_flushed_script_cache_is_reloaded_for_the_batch(redis: Redis) -> None:
    """A new master (a failover, a restart) knows no script: the batch loads it and goes on."""
    store = IdempotencyStore(redis, ttl_seconds=3600)
    await redis.script_flush()
    plans = _plans(8, limit=5)
    completions = await asyncio.gather(
        *(store.complete(p.result.booking_id, p, NOW.isoformat()) for p in plans)
    )
    assert all(c.fresh for c in completions)
    assert sum(bool(c.granted) for c in completions) == 5


async def test_unacknowledged_replicas_fail_the_whole_batch(redis: Redis) -> None:
    """With a replica required and none connected, no decision of the batch counts."""
    store = IdempotencyStore(redis, ttl_seconds=3600, replicas=ReplicaAck(1, timeout_ms=50))
    plans = _plans(4, limit=5)
    outcomes = await asyncio.gather(
        *(store.complete(p.result.booking_id, p, NOW.isoformat()) for p in plans),
        return_exceptions=True,
    )
    assert all(isinstance(o, DependencyUnavailable) for o in outcomes), outcomes
    assert all(o.dependency is Dependency.REDIS for o in outcomes)  # type: ignore[union-attr]


async def test_an_outage_fails_the_batch_once_not_item_by_item(
    redis: Redis, redis_server: RedisServer
) -> None:
    store = IdempotencyStore(redis, ttl_seconds=3600)
    plans = _plans(6, limit=5)
    redis_server.stop()
    try:
        outcomes = await asyncio.gather(
            *(store.complete(p.result.booking_id, p, NOW.isoformat()) for p in plans),
            return_exceptions=True,
        )
    finally:
        redis_server.start()
    assert all(isinstance(o, DependencyUnavailable) for o in outcomes), outcomes


async def test_a_release_goes_through_the_same_replica_rule(redis: Redis) -> None:
    """A release (``ReplicaAck.run``: one call of the batch path) gives the unit back once;
    with a replica required and none connected it does not count, and after a flushed script
    cache it is loaded again."""
    store = IdempotencyStore(redis, ttl_seconds=3600)
    (plan,) = _plans(1, limit=5)
    completion = await store.complete(plan.result.booking_id, plan, NOW.isoformat())
    assert completion.granted
    result_id = plan.result.result_id
    strict = QuotaStore(redis, ReplicaAck(1, timeout_ms=50))
    await redis.script_load(strict._release.script)
    with pytest.raises(DependencyUnavailable):  # written, but it does not count: retried
        await strict.release(plan.result.booking_id, result_id)
    assert int(await redis.get(counter_key(NOW.date()))) == 0
    await redis.script_flush()  # the retry meets a Redis that lost its scripts
    again = await QuotaStore(redis).release(plan.result.booking_id, result_id, NOW.date())
    assert again.verdict is Released.NOTHING_HELD  # given back once, not twice
    assert int(await redis.get(counter_key(NOW.date()))) == 0
