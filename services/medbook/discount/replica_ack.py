"""The rule that keeps the daily quota exact across a Redis failover: a write counts once a
replica has it.

Redis replicates asynchronously: the master acknowledges a write before any
replica has it, and a replica promoted by Sentinel after the master died can
lack its last writes. For the quota that would mean a unit granted (and its
discount published) that the new master does not know about: the day would
end above its limit, and the counter below the discounted bookings.

So each write the saga acts on (storing a decision with its reservation,
giving a unit back) is sent in one pipeline with ``WAIT <replicas> <timeout>``
on the same connection, and only counts when at least ``replicas`` replicas
acknowledged it: only then does the worker publish the result (or ack the
release). ``WAIT`` covers the writes of its own connection, and the
replication stream is one ordered log, so the pipeline also makes one small
write of its own (:data:`BARRIER_KEY`) before ``WAIT``: once a replica has
that, it has everything written before it, by any connection. That is what
makes a script that found its work already done (a decision another delivery
stored, a unit already given back) safe to act on, and :meth:`ReplicaAck.barrier`
does the same for a result read back, not written.

If the replicas do not acknowledge in time, :class:`ReplicaNotConfirmed` (a redis-py
``TimeoutError``, so an outage of Redis to the rest of the worker) makes the
message wait and try again; the write is idempotent (a second try finds the
decision stored and re-sends it, a second release finds nothing to release),
so the try only repeats the ``WAIT``. A result is therefore never published
from a write that a failover can lose: Sentinel promotes the replica with the
most data, which has every write acknowledged this way.

The price is one replication round trip per decision (measured by ``medbook
bench --local --redis-replicas 1``: docs/high-availability.md), and that
discounts wait while no replica is connected: exactness over availability,
for a quota whose promise is exactness. ``replicas=0`` turns the rule off
(a single Redis, or a deployment that accepts the risk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_exceptions
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, KeyT

BARRIER_KEY = "medbook:replica_barrier"
"""Written before each ``WAIT`` (see above); its value is of no use, it expires."""
_BARRIER_TTL = 3600


class ReplicaNotConfirmed(redis_exceptions.TimeoutError):
    """Fewer replicas than required acknowledged a write within the timeout."""

    def __init__(self, wanted: int, acknowledged: int, timeout_ms: int) -> None:
        super().__init__(
            f"{acknowledged} of {wanted} Redis replica(s) acknowledged the write within "
            f"{timeout_ms} ms: it does not count until a replica has it"
        )
        self.wanted = wanted
        self.acknowledged = acknowledged


class ReplicaAck:
    """Runs scripts whose writes must reach ``replicas`` replicas before they count."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 1000) -> None:
        if replicas < 0:
            raise ValueError("replicas must be 0 or more")
        if timeout_ms < 1:
            raise ValueError("timeout_ms must be at least 1 ms")
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    @property
    def enabled(self) -> bool:
        return self.replicas > 0

    def __repr__(self) -> str:
        return f"ReplicaAck(replicas={self.replicas}, timeout_ms={self.timeout_ms})"

    async def run(
        self,
        redis: Redis,
        script: AsyncScript,
        keys: Sequence[KeyT],
        args: Sequence[EncodableT],
    ) -> Any:
        """``script(keys, args)``; with the rule on, followed by ``WAIT`` on the same connection
        (one round trip), raising :class:`ReplicaNotConfirmed` when too few replicas have it."""
        if not self.enabled:
            return await script(keys=keys, args=args)
        (outcome,) = await self.run_many(redis, script, [(keys, args)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def run_many(
        self,
        redis: Redis,
        script: AsyncScript,
        calls: Sequence[tuple[Sequence[KeyT], Sequence[EncodableT]]],
    ) -> list[Any]:
        """``script`` once per call, all in one pipeline (one round trip, with the rule on one
        ``WAIT`` for them all); each call's result, or the exception its call raised.

        A connection lost, or replicas that do not acknowledge, raise for every call (none
        of them counts)."""
        outcomes: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):  # a second round only for calls that found the script missing
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                if self.enabled:
                    pipe.set(BARRIER_KEY, "1", ex=_BARRIER_TTL)
                    pipe.wait(self.replicas, self.timeout_ms)
                replies = await pipe.execute(raise_on_error=False)
            if self.enabled:
                *replies, barrier, acknowledged = replies
                for outcome in (barrier, acknowledged):
                    if isinstance(outcome, BaseException):
                        raise outcome
                self._check(acknowledged)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, redis_exceptions.NoScriptError):
                    missing.append(i)
                outcomes[i] = reply
            if not missing:
                return outcomes
            # A new master (after a failover, or a restart) has an empty script cache.
            await redis.script_load(script.script)
            todo = missing
        return outcomes  # (each call still missing the script has its NoScriptError)

    async def barrier(self, redis: Redis) -> None:
        """Return once enough replicas have everything written so far (by any connection):
        for a result read back (a redelivery of a booking already decided) before it is
        published."""
        if not self.enabled:
            return
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(BARRIER_KEY, "1", ex=_BARRIER_TTL)
            pipe.wait(self.replicas, self.timeout_ms)
            _, acknowledged = await pipe.execute()
        self._check(acknowledged)

    def _check(self, acknowledged: object) -> None:
        count = int(acknowledged)  # type: ignore[call-overload]  # WAIT answers an integer
        if count < self.replicas:
            raise ReplicaNotConfirmed(self.replicas, count, self.timeout_ms)
