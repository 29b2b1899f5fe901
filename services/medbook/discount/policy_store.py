"""Where the quota policy is published (a JSON document in Redis), and the worker's view of it.

Whoever owns the policy (the operator, from a ``QuotaPolicy`` object; or
``medbook quota``) publishes a validated policy under :data:`POLICY_KEY`; the
worker's :class:`PolicySource` re-reads it every second or so and falls back to
its defaults when the key is withdrawn.
"""

from __future__ import annotations

import logging
from typing import Final

from pydantic import ValidationError
from redis.asyncio import Redis

from medbook.discount.policy import QuotaPolicy, describe_error
from medbook.redis_connection import redis_call

log = logging.getLogger(__name__)

POLICY_KEY: Final = "medbook:policy"


class PolicyStore:
    """Where the published policy lives (a JSON document in Redis)."""

    def __init__(self, redis: Redis, key: str = POLICY_KEY) -> None:
        self.redis = redis
        self.key = key

    @redis_call
    async def raw(self) -> bytes | None:
        """The published document as stored (None: nothing is published)."""
        raw: bytes | str | None = await self.redis.get(self.key)
        return raw.encode() if isinstance(raw, str) else raw

    async def load(self) -> QuotaPolicy | None:
        raw = await self.raw()
        return None if raw is None else QuotaPolicy.from_json(raw)

    @property
    def owner_key(self) -> str:
        return f"{self.key}:owner"

    @redis_call
    async def publish(self, policy: QuotaPolicy, owner: str | None = None) -> None:
        """Publish; ``owner`` names who manages the policy (e.g. ``QuotaPolicy ns/name``)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key, policy.to_json())
            if owner:
                pipe.set(self.owner_key, owner)
            else:
                pipe.delete(self.owner_key)
            await pipe.execute()

    @redis_call
    async def owner(self) -> str | None:
        """Who manages the published policy (None: nobody in particular, edit the store)."""
        raw = await self.redis.get(self.owner_key)
        return raw.decode() if isinstance(raw, bytes) else raw

    @redis_call
    async def withdraw(self) -> bool:
        removed = await self.redis.delete(self.key, self.owner_key)
        return bool(removed)


class PolicySource:
    """The worker's view of the policy: the published one, else the environment's defaults.

    The worker calls :meth:`refresh` every ``interval`` seconds, so a new
    policy takes effect within that time without a restart. When the store
    cannot be read (Redis down) or holds an invalid document, the last good
    policy stays in force and the problem is logged once.
    """

    def __init__(self, store: PolicyStore, defaults: QuotaPolicy, interval: float = 1.0) -> None:
        self.store = store
        self.defaults = defaults
        self.interval = interval
        self.current = defaults
        self.published = False
        self._raw: bytes | None = None
        self._problem: str | None = None

    async def refresh(self) -> QuotaPolicy:
        try:
            raw = await self.store.raw()
        except Exception as exc:  # keep serving the last good policy
            self._report(f"cannot read the published policy: {exc!r}")
            return self.current
        if raw == self._raw:
            return self.current
        if raw is None:
            self.current, self.published = self.defaults, False
            log.info(
                "no published policy: using the defaults (daily limit %d)",
                self.defaults.daily_limit,
            )
        else:
            try:
                policy = QuotaPolicy.from_json(raw)
            except ValidationError as exc:
                self._report(
                    f"published policy is invalid, keeping the last good one: {describe_error(exc)}"
                )
                return self.current
            self.current, self.published = policy, True
            log.info(
                "policy updated: daily limit %d, discount %s%%, time zone %s",
                policy.daily_limit,
                policy.discount_percent,
                policy.time_zone,
            )
        self._raw = raw
        self._problem = None
        return self.current

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.warning(problem)
            self._problem = problem
