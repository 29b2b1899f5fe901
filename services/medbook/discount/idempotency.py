"""The discount worker's idempotency record, one Redis hash per booking.

States: ``claimed`` when a worker starts on the booking, ``done`` once its
result is stored. A redelivery of a ``done`` booking re-sends the stored result
byte for byte (same result id), so the booking service sees one result however
often the broker delivers. A ``claimed`` record left by a worker that died is
simply processed again: the quota reservation is keyed by booking id, so that
is safe. Completing is conditional: when two deliveries race, the first result
stored wins and both publish it. Records live for days, longer than a message
waits in the broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from redis.asyncio import Redis

RECORD_PREFIX: Final = "discount_processed:"


def record_key(booking_id: uuid.UUID | str) -> str:
    return f"{RECORD_PREFIX}{booking_id}"


class RecordState(StrEnum):
    NEW = "new"
    CLAIMED = "claimed"
    DONE = "done"


# KEYS: record. ARGV: now (ISO), ttl. Returns {previous state, stored result or false, attempts}.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1')
  return {'done', redis.call('HGET', KEYS[1], 'result'), attempts}
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'claimedAt', ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {state or 'new', false, attempts}
"""

# KEYS: record. ARGV: result, now (ISO), ttl. Returns the result in force (the first stored).
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  return redis.call('HGET', KEYS[1], 'result')
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[1], 'doneAt', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return ARGV[1]
"""


@dataclass(frozen=True, slots=True)
class Claim:
    previous: RecordState
    result: bytes | None
    attempts: int


class IdempotencyStore:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)

    async def claim(self, booking_id: uuid.UUID, now: str) -> Claim:
        state, result, attempts = await self._claim(
            keys=[record_key(booking_id)], args=[now, self.ttl]
        )
        return Claim(RecordState(_text(state)), result or None, int(attempts))

    async def complete(self, booking_id: uuid.UUID, result: bytes, now: str) -> bytes:
        """Store the result unless one is stored already; return the one in force."""
        stored = await self._complete(keys=[record_key(booking_id)], args=[result, now, self.ttl])
        return bytes(stored)

    async def state(self, booking_id: uuid.UUID) -> RecordState:
        state = await self.redis.hget(record_key(booking_id), "state")
        return RecordState(_text(state)) if state else RecordState.NEW


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
