"""The discount worker's idempotency record, one Redis hash per booking.

A booking's record is written once, when its result is stored (state
``done``), in the same atomic script that reserves its quota unit: there is
never a unit held without its result recorded, nor a result stored twice. A
redelivery of a booking that is done gets the stored result back, byte for byte
(same result id), so the booking service sees one result however often the
broker delivers; a delivery whose worker died before the script ran finds no
record and is simply decided again. When two deliveries race, the first result
stored wins and both publish it. Records live for days, longer than a message
waits in the broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from medbook import contracts
from medbook.discount.decision import Plan
from medbook.discount.keys import (
    RECORD_PREFIX,
    counter_key,
    members_key,
    record_key,
    reservation_key,
)
from medbook.discount.quota import DAY_TTL_SECONDS, RESERVE_FUNCTION

__all__ = ["RECORD_PREFIX", "Completion", "IdempotencyStore", "record_key"]
from medbook.discount.replica_ack import ReplicaAck
from medbook.group_commit import GroupCommit
from medbook.redis_connection import redis_call, redis_errors

# Stores the booking's result, reserving its quota unit in the same atomic step
# when it is eligible, so there is never a unit held without its result recorded.
# KEYS: record, counter, members, reservation (the last three only when reserving).
# ARGV: result (or the result if granted), now (ISO), ttl, reserve ('0'/'1'),
#       [result if denied, booking id, limit, day ttl, day].
# Returns {result in force, granted (1/0, -1 when already done), count (-1 if no reservation)}.
_COMPLETE = (
    RESERVE_FUNCTION
    + """
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  return {redis.call('HGET', KEYS[1], 'result'), -1, -1}
end
local result, granted, used = ARGV[1], 1, -1
if ARGV[4] == '1' then
  granted, used = reserve(KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
  if granted == 0 then result = ARGV[5] end
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', result, 'doneAt', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {result, granted, used}
"""
)


@dataclass(frozen=True, slots=True)
class Completion:
    result: bytes  # the result in force (published as is)
    fresh: bool  # stored now (False: another delivery stored one first)
    granted: bool | None  # the reservation's outcome, when one was made now
    used: int | None  # the day's count after it


_Call = tuple[list[str], list[bytes | str | int]]


def complete_arguments(booking_id: uuid.UUID, plan: Plan, now: str, ttl: int) -> _Call:
    """The keys and arguments of ``_COMPLETE`` for this booking's plan."""
    unit = plan.unit
    if unit is None:
        return [record_key(booking_id)], [contracts.encode(plan.result), now, ttl, "0"]
    assert plan.if_denied is not None
    keys = [record_key(booking_id), counter_key(unit.day), members_key(unit.day)]
    keys.append(reservation_key(booking_id))
    args: list[bytes | str | int] = [contracts.encode(plan.result), now, ttl, "1"]
    args += [contracts.encode(plan.if_denied), str(booking_id), unit.limit]
    args += [DAY_TTL_SECONDS, unit.day.isoformat()]
    return keys, args


class IdempotencyStore:
    def __init__(self, redis: Redis, ttl_seconds: int, replicas: ReplicaAck | None = None) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        # A stored decision counts once enough replicas have it (replica_ack.py).
        self.replicas = replicas or ReplicaAck()
        self._complete = redis.register_script(_COMPLETE)
        # Decisions taken in the same loop turn go to Redis in one pipeline (one round trip,
        # one WAIT with replicas): each is still its own atomic script, with its own answer.
        self._decisions: GroupCommit[_Call, Any] = GroupCommit(
            self._complete_many, max_batch=128, name="quota decisions"
        )

    async def _complete_many(self, calls: Sequence[_Call]) -> list[Any]:
        with redis_errors():  # an outage fails the batch (it is not retried item by item)
            return await self.replicas.run_many(self.redis, self._complete, calls)

    @redis_call
    async def complete(self, booking_id: uuid.UUID, plan: Plan, now: str) -> Completion:
        """Store the plan's result (reserving its quota unit first, if it needs one),
        unless a result is stored already; return the one in force."""
        reply = await self._decisions.submit(complete_arguments(booking_id, plan, now, self.ttl))
        if isinstance(reply, BaseException):  # this script's own error, not the batch's
            raise reply
        stored, granted, used = reply
        if plan.unit is None:
            return Completion(bytes(stored), int(granted) != -1, None, None)
        fresh = int(granted) != -1
        return Completion(
            bytes(stored),
            fresh,
            bool(int(granted)) if fresh else None,
            int(used) if fresh else None,
        )


async def stored_result(redis: Redis, booking_id: uuid.UUID | str) -> bytes | str | None:
    """The result stored for the booking (what a redelivery re-sends), None until there is one."""
    stored: bytes | str | None = await redis.hget(record_key(booking_id), "result")
    return stored.encode() if isinstance(stored, str) else stored
