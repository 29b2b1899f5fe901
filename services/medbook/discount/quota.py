"""The daily discount quota in Redis, one atomic script per operation.

For each quota day (in the policy's time zone) there are two keys:
``discount_quota:<YYYY-MM-DD>`` holds the day's count (as the reference's did,
so ``redis-cli get`` still answers) and ``discount_quota:<YYYY-MM-DD>:bookings``
is the set of booking ids holding a unit that day. ``discount_reservation:<id>``
remembers the day a booking's unit was taken from, so a release needs only the
booking id. A booking reserves at most one unit (a second reservation is a
no-op), the count never passes the limit, the count always equals the set's
size, and a unit goes back at most once. The day's keys expire 48 h after the
day's first reservation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

from redis.asyncio import Redis

from medbook.redis_connection import redis_call

COUNTER_PREFIX: Final = "discount_quota:"
RESERVATION_PREFIX: Final = "discount_reservation:"
DAY_TTL_SECONDS: Final = 48 * 3600


def counter_key(day: dt.date) -> str:
    return f"{COUNTER_PREFIX}{day.isoformat()}"


def members_key(day: dt.date) -> str:
    return f"{COUNTER_PREFIX}{day.isoformat()}:bookings"


def reservation_key(booking_id: uuid.UUID | str) -> str:
    return f"{RESERVATION_PREFIX}{booking_id}"


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

# KEYS: reservation, counter, members (of the day). ARGV: booking id, day.
# Returns 1 when the booking's unit of that day went back, 0 when it held none.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('SREM', KEYS[3], ARGV[1]) == 1 then
  local left = redis.call('DECR', KEYS[2])
  if left < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
  return 1
end
return 0
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


class QuotaStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._release = redis.register_script(_RELEASE)
        self._reset = redis.register_script(_RESET)
        self._forget = redis.register_script(_FORGET)

    @redis_call
    async def release(self, booking_id: uuid.UUID, day: dt.date | None = None) -> dt.date | None:
        """Give back the unit held for this booking; the day it came from, or None if none.

        Without ``day``, the booking's reservation tells it.
        """
        if day is None:
            held = await self.redis.get(reservation_key(booking_id))
            if held is None:
                return None
            day = dt.date.fromisoformat(held.decode() if isinstance(held, bytes) else held)
        released = await self._release(
            keys=[reservation_key(booking_id), counter_key(day), members_key(day)],
            args=[str(booking_id), day.isoformat()],
        )
        return day if int(released) else None

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
