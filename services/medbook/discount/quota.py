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

# KEYS: reservation. ARGV: booking id, day hint ('' if unknown), counter prefix.
# Returns the day released from, or false when no unit was held.
_RELEASE = """
local day = redis.call('GET', KEYS[1])
if not day then
  if ARGV[2] == '' then return false end
  day = ARGV[2]
end
redis.call('DEL', KEYS[1])
local counter = ARGV[3] .. day
if redis.call('SREM', counter .. ':bookings', ARGV[1]) == 1 then
  local left = redis.call('DECR', counter)
  if left < 0 then redis.call('SET', counter, 0, 'KEEPTTL') end
  return day
end
return false
"""

# KEYS: counter, members. Deletes the day's reservations; returns how many there were.
_RESET = """
local ids = redis.call('SMEMBERS', KEYS[2])
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  if redis.call('GET', key) == ARGV[2] then redis.call('DEL', key) end
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
return used
"""


class QuotaStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._release = redis.register_script(_RELEASE)
        self._reset = redis.register_script(_RESET)

    async def release(self, booking_id: uuid.UUID, day: dt.date | None = None) -> dt.date | None:
        """Give back the unit held for this booking; the day it came from, or None if none."""
        released = await self._release(
            keys=[reservation_key(booking_id)],
            args=[str(booking_id), day.isoformat() if day else "", COUNTER_PREFIX],
        )
        if not released:
            return None
        return dt.date.fromisoformat(released.decode() if isinstance(released, bytes) else released)

    async def used(self, day: dt.date) -> int:
        return int(await self.redis.get(counter_key(day)) or 0)

    async def holders(self, day: dt.date) -> set[str]:
        members = await self.redis.smembers(members_key(day))
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    async def reset(self, day: dt.date) -> int:
        """Drop every reservation of the day; returns the count it had."""
        return int(
            await self._reset(
                keys=[counter_key(day), members_key(day)],
                args=[RESERVATION_PREFIX, day.isoformat()],
            )
        )
