"""What counts as an outage: only a dependency that cannot be reached, and only for so long.

A statement timeout, a FileNotFoundError in a handler and a bug raised while
handling a network error are not outages: their messages spend counted tries
and are dead-lettered. A real outage is waited for in place, but only within
the outage budget; then the message is dead-lettered with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import aio_pika
import asyncpg
import pytest
import redis.exceptions

from medbook import contracts
from medbook.booking import database
from medbook.booking.database import create_database
from medbook.booking.domain import Transition
from medbook.booking.store import BookingStore
from medbook.config import RabbitSettings
from medbook.devstack.servers import RedisServer
from medbook.discount import decision
from medbook.failures import Dependency, DependencyBusy, DependencyUnavailable
from medbook.messaging import translate as amqp_translate
from medbook.redis_connection import translate as redis_translate
from tests.helpers import Infra, Stack, eligible_body, eventually, running_stack
from tests.integration.test_dead_letters import next_dead_letter


@pytest.fixture
async def channel(infra: Infra) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(infra.amqp_url)
    yield await connection.channel()
    await connection.close()


# -- each adapter's translation ------------------------------------------------------------


def _raised_while_handling_oserror() -> RuntimeError:
    try:
        try:
            raise ConnectionResetError("peer went away")
        except OSError:
            raise RuntimeError("a bug in the error path") from None
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize("translate", [database.translate, redis_translate, amqp_translate])
@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("/etc/medbook/missing.pem"),
        PermissionError("/var/run/secret"),
        _raised_while_handling_oserror(),
        ValueError("bad input"),
    ],
    ids=["file-not-found", "permission", "bug-in-except-oserror", "value-error"],
)
def test_what_is_not_an_outage_goes_through_untouched(translate, exc: Exception) -> None:
    assert translate(exc) is exc


@pytest.mark.parametrize(
    ("translate", "exc", "dependency"),
    [
        (database.translate, ConnectionRefusedError(111, "refused"), Dependency.DATABASE),
        (database.translate, asyncpg.CannotConnectNowError("starting up"), Dependency.DATABASE),
        (database.translate, asyncpg.ReadOnlySQLTransactionError("read-only"), Dependency.DATABASE),
        (redis_translate, redis.exceptions.ConnectionError("lost"), Dependency.REDIS),
        (redis_translate, redis.exceptions.ReadOnlyError("replica"), Dependency.REDIS),
        (amqp_translate, ConnectionResetError(104, "reset"), Dependency.BROKER),
    ],
)
def test_an_outage_names_its_dependency(translate, exc, dependency) -> None:
    translated = translate(exc)
    assert isinstance(translated, DependencyUnavailable)
    assert translated.dependency is dependency


def test_a_wrong_password_is_not_an_outage() -> None:
    exc = redis.exceptions.AuthenticationError("invalid password")
    assert redis_translate(exc) is exc


async def test_a_real_statement_timeout_is_busy_not_unavailable(infra: Infra) -> None:
    store = BookingStore(
        create_database(infra.database_url, max_size=2, connect_timeout=2, statement_timeout=0.2)
    )
    await store.connect()
    try:
        with pytest.raises(DependencyBusy) as raised:
            async with store.raw() as conn:
                await conn.execute("SELECT pg_sleep(2)")
        assert raised.value.dependency is Dependency.DATABASE
        assert "QueryCanceledError" in raised.value.detail
        await store.ping()  # the connection is fine afterwards
    finally:
        await store.disconnect()


# -- the consumer: counted tries for what is not an outage -----------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            FileNotFoundError("/etc/medbook/rules.yaml"),
            "FileNotFoundError: /etc/medbook/rules.yaml",
        ),
        (_raised_while_handling_oserror(), "RuntimeError: a bug in the error path"),
    ],
    ids=["file-not-found", "bug-in-except-oserror"],
)
async def test_a_handler_error_that_is_not_an_outage_is_dead_lettered_after_its_tries(
    stack: Stack, channel, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str
) -> None:
    real_plan = decision.plan

    def failing(booking, policy, now):
        if booking.user_name == "Poison Pill":
            raise error
        return real_plan(booking, policy, now)

    monkeypatch.setattr(decision, "plan", failing)
    await stack.book(eligible_body(name="Poison Pill"))
    message = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
    assert message.headers[contracts.DEAD_LETTER_REASON_HEADER] == reason
    assert message.headers[contracts.DEAD_LETTER_TRIES_HEADER] == 3  # max_tries in the tests


async def test_a_result_hitting_a_statement_timeout_spends_tries(
    infra: Infra, channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The booking side: a slow statement on every try is a counted failure, not an outage."""
    settings = infra.booking_settings()
    settings = settings.model_copy(
        update={"database": settings.database.model_copy(update={"statement_timeout": 0.3})}
    )
    real_apply = BookingStore.apply_pending

    async def slow(self: BookingStore, transitions: Sequence[Transition]):
        async with self.raw() as conn:
            await conn.execute("SELECT pg_sleep(1)")
        return await real_apply(self, transitions)

    monkeypatch.setattr(BookingStore, "apply_pending", slow)
    async with running_stack(infra, booking_settings=settings) as stack:
        await stack.book(eligible_body())
        message = await next_dead_letter(channel, contracts.BOOKING_QUEUE)
    assert message.headers[contracts.DEAD_LETTER_REASON_HEADER].startswith(
        "DependencyBusy: database: QueryCanceledError"
    )
    assert message.headers[contracts.DEAD_LETTER_TRIES_HEADER] == 3


# -- the consumer: an outage is waited for, within the budget --------------------------------


async def test_an_outage_longer_than_the_budget_dead_letters_with_the_reason(
    infra: Infra, redis_server: RedisServer, channel
) -> None:
    rabbit = RabbitSettings(url=infra.amqp_url, prefetch=8, max_tries=3, outage_budget=1.5)
    async with running_stack(
        infra, discount_settings=infra.discount_settings(rabbit=rabbit)
    ) as stack:
        redis_server.stop()
        try:
            booking_id = (await stack.book(eligible_body())).json()["bookingId"]
            message = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
        finally:
            redis_server.start()
        reason = message.headers[contracts.DEAD_LETTER_REASON_HEADER]
        assert reason.startswith(
            "Redis was unavailable for longer than the outage budget (1.5s): "
        ), reason
        assert contracts.decode(message.type, message.body).booking_id == uuid.UUID(booking_id)
        # The worker goes on once Redis is back.
        healthy = (await stack.book(eligible_body())).json()["bookingId"]
        assert (await stack.wait_terminal(healthy))["status"] == "CONFIRMED"


async def test_an_outage_shorter_than_the_budget_loses_no_message(
    infra: Infra, redis_server: RedisServer, channel
) -> None:
    rabbit = RabbitSettings(url=infra.amqp_url, prefetch=8, max_tries=3, outage_budget=60)
    async with running_stack(
        infra, discount_settings=infra.discount_settings(rabbit=rabbit)
    ) as stack:
        redis_server.stop()
        try:
            ids = [(await stack.book(eligible_body())).json()["bookingId"] for _ in range(5)]
            await eventually(
                lambda: _retries(stack), lambda n: n > 0, what="retries while Redis is down"
            )
        finally:
            redis_server.start()
        for booking_id in ids:
            assert (await stack.wait_terminal(booking_id, timeout=30))["status"] == "CONFIRMED"
    dlq = await channel.declare_queue(
        contracts.dead_letter_queue(contracts.DISCOUNT_QUEUE), passive=True
    )
    assert dlq.declaration_result.message_count == 0


async def _retries(stack: Stack) -> float:
    from medbook import metrics

    return metrics.MESSAGES_RETRIED.labels(contracts.DISCOUNT_QUEUE, "unavailable")._value.get()
