"""Changing the daily limit for a run, through whoever owns the policy, and putting it back.

When the operator manages the policy, the store names its owner (``QuotaPolicy
<namespace>/<name>``): the limit is changed on that object with ``kubectl
patch`` (the operator re-publishes it; editing the store behind its back would
be undone at its next reconcile). Without an owner the published policy is
edited in the store directly; when nothing is published, this environment's
defaults are published for the run and withdrawn afterwards, so the worker
goes back to its own defaults. Either way the command then waits for the
worker to re-read the policy (``MEDBOOK_POLICY_REFRESH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError

from medbook.cli.common import UsageProblem, current_policy
from medbook.discount.policy import QuotaPolicy, describe_error
from medbook.discount.policy_store import PolicyStore

OWNER_PREFIX = "QuotaPolicy "


def parse_owner(owner: str) -> tuple[str, str] | None:
    """``QuotaPolicy ns/name`` -> (ns, name); None for an owner we cannot steer."""
    if not owner.startswith(OWNER_PREFIX):
        return None
    namespace, _, name = owner[len(OWNER_PREFIX) :].strip().partition("/")
    if not namespace or not name:
        return None
    return namespace, name


async def kubectl(*args: str) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            "kubectl",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise UsageProblem(
            "the policy is managed by the operator, and kubectl is not installed to change it"
        ) from None
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise UsageProblem(
            f"kubectl {' '.join(args)} failed (exit {process.returncode}): "
            f"{stderr.decode(errors='replace').strip()}"
        )
    return stdout.decode(errors="replace")


def with_limit(policy: QuotaPolicy, limit: int) -> QuotaPolicy:
    try:
        return QuotaPolicy.model_validate({**policy.to_spec(), "dailyLimit": limit})
    except ValidationError as exc:
        raise UsageProblem(f"daily limit {limit}: {describe_error(exc)}") from None


class LimitChange:
    """Sets the daily limit for a run and restores what was there before."""

    def __init__(
        self,
        redis: Any,
        *,
        worker_refresh: float,
        publish_timeout: float = 30.0,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.redis = redis
        self.store = PolicyStore(redis)
        self.worker_refresh = worker_refresh
        self.publish_timeout = publish_timeout
        self.say = say
        self._restore: Callable[[], Any] | None = None
        self._original_limit: int | None = None

    async def set(self, limit: int) -> None:
        view = await current_policy(self.redis)
        original: QuotaPolicy = view.policy
        self._original_limit = original.daily_limit
        with_limit(original, limit)  # a bad value fails here, before anything changes
        target = parse_owner(view.owner) if view.owner else None
        if view.owner and target is None:
            raise UsageProblem(f"the policy is managed by {view.owner}: change it there")
        if target is not None:
            namespace, name = target
            self.say(
                f"daily limit {original.daily_limit} -> {limit} on QuotaPolicy "
                f"{namespace}/{name} (kubectl patch)"
            )
            await self._kubectl_patch(namespace, name, limit)  # refused: nothing changed
            self._restore = lambda: self._patch(namespace, name, original.daily_limit)
            await self._wait_published(f"QuotaPolicy {namespace}/{name}", limit)
        elif view.published:
            self.say(f"daily limit {original.daily_limit} -> {limit} in the policy store")
            self._restore = lambda: self.store.publish(original)
            await self.store.publish(with_limit(original, limit))
        else:
            self.say(
                f"no policy published: publishing this environment's defaults with daily limit "
                f"{limit} for the run (withdrawn afterwards)"
            )
            self._restore = self.store.withdraw
            await self.store.publish(with_limit(original, limit))
        await self._worker_reread()

    async def restore(self) -> bool:
        """Put the policy back; on failure say how to do it by hand (never raises)."""
        if self._restore is None:
            return True
        restore, self._restore = self._restore, None
        try:
            await restore()
        except Exception as exc:
            self.say(
                f"[red]could not restore the policy ({exc}); restore the daily limit to "
                f"{self._original_limit} by hand[/red]"
            )
            return False
        await self._worker_reread()
        self.say("policy restored")
        return True

    async def _patch(self, namespace: str, name: str, limit: int) -> None:
        await self._kubectl_patch(namespace, name, limit)
        await self._wait_published(f"QuotaPolicy {namespace}/{name}", limit)

    async def _kubectl_patch(self, namespace: str, name: str, limit: int) -> None:
        patch = json.dumps({"spec": {"dailyLimit": limit}})
        await kubectl("-n", namespace, "patch", "quotapolicy", name, "--type", "merge", "-p", patch)

    async def _wait_published(self, owner: str, limit: int) -> None:
        """The operator re-publishes the patched object; wait until the store shows it."""
        deadline = time.monotonic() + self.publish_timeout
        while True:
            published = await self.store.load()
            if published is not None and published.daily_limit == limit:
                return
            if time.monotonic() > deadline:
                raise UsageProblem(
                    f"{owner} was patched but the operator did not publish daily limit "
                    f"{limit} within {self.publish_timeout:.0f}s"
                )
            await asyncio.sleep(0.1)

    async def _worker_reread(self) -> None:
        # Nothing tells us when the worker has re-read the store: wait out its interval twice.
        await asyncio.sleep(2 * self.worker_refresh + 0.2)


@contextlib.asynccontextmanager
async def daily_limit(
    redis: Any, limit: int, *, worker_refresh: float, say: Callable[[str], None]
) -> AsyncIterator[None]:
    """The daily limit set to ``limit`` inside the block, restored after (Ctrl-C included)."""
    change = LimitChange(redis, worker_refresh=worker_refresh, say=say)
    try:
        await change.set(limit)
        yield
    finally:
        # Shielded: a Ctrl-C during the run must not also cancel the restore.
        await asyncio.shield(change.restore())
