"""The daily discount quota in Redis, one atomic script per operation.

For each quota day (in the policy's time zone) a count and the set of bookings
holding a unit, and for each booking the day its unit came from (the layout is
``keys.py``). A booking reserves at most one unit (a second reservation is a
no-op), the count never passes the limit, the count always equals the set's
size, and a unit goes back at most once, and only when the release names the
result that granted it (the one stored in the booking's idempotency record):
a release nobody could have written without seeing that result. The day's keys
expire 48 h after the day's first reservation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

from medbook.discount.keys import (
    COUNTER_PREFIX,
    RESERVATION_PREFIX,
    counter_key,
    members_key,
    record_key,
    reservation_key,
)
from medbook.discount.replica_ack import ReplicaAck
from medbook.redis_connection import redis_call

__all__ = [
    "COUNTER_PREFIX",
    "DAY_TTL_SECONDS",
    "RESERVATION_PREFIX",
    "QuotaStore",
    "ReleaseOutcome",
    "Released",
    "counter_key",
    "members_key",
    "reservation_key",
]

DAY_TTL_SECONDS: Final = 48 * 3600


# The reservation itself, as a Lua function that other scripts embed (the
# discount worker reserves and records its result in one script: idempotency.py).
# Returns granted (0/1), the count after, already held (0/1).
RESERVE_FUNCTION = """
local function reserve(counter, members, reservation, booking, limit, ttl, day)
  if redis.call('SISMEMBER', members, booking) == 1 then
    return 1, tonumber(redis.call('GET', counter) or '0'), 1
  end
  local used = tonumber(redis.call('GET', counter) or '0')
  if used >= tonumber(limit) then
    return 0, used, 0
  end
  redis.call('SADD', members, booking)
  used = redis.call('INCR', counter)
  if redis.call('TTL', counter) < 0 then redis.call('EXPIRE', counter, ttl) end
  if redis.call('TTL', members) < 0 then redis.call('EXPIRE', members, ttl) end
  redis.call('SET', reservation, day, 'EX', ttl)
  return 1, used, 0
end
"""

# KEYS: reservation, counter, members (of the day), record. ARGV: booking id, day, result id.
# Returns 1: the unit went back; 0: the booking held none that day; -1: refused, the result
# id is not the one stored in the booking's record (the release is not vouched for).
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[2] then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local stored = redis.call('HGET', KEYS[4], 'result')
if not stored then return -1 end
local ok, result = pcall(cjson.decode, stored)
if not ok or type(result) ~= 'table' or result['resultId'] ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
local left = redis.call('DECR', KEYS[2])
if left < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
return 1
"""

# KEYS: counter, members. Drops the day's count and holders; returns the count it had.
_RESET = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
return used
"""

# KEYS: reservations. ARGV: day. Deletes those that still point at that day.
_FORGET = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

_FORGET_CHUNK = 500


class Released(StrEnum):
    RELEASED = "released"
    NOTHING_HELD = "nothing_held"
    REFUSED = "refused"  # the release does not name the result that holds the unit


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    verdict: Released
    day: dt.date | None


class QuotaStore:
    def __init__(self, redis: Redis, replicas: ReplicaAck | None = None) -> None:
        self.redis = redis
        # A unit given back counts once enough replicas have it (replica_ack.py).
        self.replicas = replicas or ReplicaAck()
        self._release = redis.register_script(_RELEASE)
        self._reset = redis.register_script(_RESET)
        self._forget = redis.register_script(_FORGET)

    @redis_call
    async def release(
        self, booking_id: uuid.UUID, result_id: uuid.UUID | None, day: dt.date | None = None
    ) -> ReleaseOutcome:
        """Give back the unit that result ``result_id`` reserved for this booking, once.

        The day comes from the booking's reservation (``day`` when it has none: the
        reservation may have expired before the day's keys did).
        """
        held = await self.redis.get(reservation_key(booking_id))
        if held is not None:
            day = dt.date.fromisoformat(held.decode() if isinstance(held, bytes) else held)
        if day is None:
            return ReleaseOutcome(Released.NOTHING_HELD, None)
        if result_id is None:
            return ReleaseOutcome(Released.REFUSED, day)
        outcome = int(
            await self.replicas.run(
                self.redis,
                self._release,
                [
                    reservation_key(booking_id),
                    counter_key(day),
                    members_key(day),
                    record_key(booking_id),
                ],
                [str(booking_id), day.isoformat(), str(result_id)],
            )
        )
        return ReleaseOutcome(
            {1: Released.RELEASED, 0: Released.NOTHING_HELD}.get(outcome, Released.REFUSED),
            day,
        )

    @redis_call
    async def used(self, day: dt.date) -> int:
        return int(await self.redis.get(counter_key(day)) or 0)

    @redis_call
    async def holders(self, day: dt.date) -> set[str]:
        members = await self.redis.smembers(members_key(day))
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    @redis_call
    async def reset(self, day: dt.date) -> int:
        """Drop every reservation of the day; returns the count it had."""
        holders = sorted(await self.holders(day))
        used = int(await self._reset(keys=[counter_key(day), members_key(day)]))
        for start in range(0, len(holders), _FORGET_CHUNK):
            chunk = holders[start : start + _FORGET_CHUNK]
            await self._forget(keys=[reservation_key(h) for h in chunk], args=[day.isoformat()])
        return used
