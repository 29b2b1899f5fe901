"""Message signing, on real servers: signed sagas work, forged or unsigned messages do nothing."""

from __future__ import annotations

import uuid

import aio_pika
import pytest

from medbook import contracts
from medbook.config import RabbitSettings
from medbook.contracts import Event, QuotaReleased, ReleaseReason
from medbook.signing import KEY_ID_HEADER, SIGNATURE_HEADER, MessageSigner, parse_keys
from tests.helpers import Infra, eligible_body, running_stack, today
from tests.integration.test_dead_letters import next_dead_letter
from tests.integration.test_hostile_broker import used

OLD = "2025-q4:" + "o" * 40
NEW = "2026-q1:" + "n" * 40


def rabbit(infra: Infra, keys: str, signing_key_id: str | None = None) -> RabbitSettings:
    return RabbitSettings(
        url=infra.amqp_url,
        prefetch=16,
        max_tries=3,
        signing_keys=keys,
        signing_key_id=signing_key_id,
    )


# -- without a server --------------------------------------------------------------------------


def test_a_tampered_body_or_type_fails_verification() -> None:
    signer = MessageSigner(parse_keys(NEW))
    headers = signer.headers("booking_created", 1, b'{"a":1}')
    signer.verify("booking_created", 1, b'{"a":1}', headers)
    for event_type, version, body in [
        ("booking_created", 1, b'{"a":2}'),
        ("quota_released", 1, b'{"a":1}'),
        ("booking_created", 2, b'{"a":1}'),
    ]:
        with pytest.raises(Exception, match="bad signature"):
            signer.verify(event_type, version, body, headers)


def test_two_keys_are_accepted_at_once_and_the_signing_one_is_chosen() -> None:
    both = parse_keys(f"{OLD},{NEW}")
    old_signer = MessageSigner(both, "2025-q4")
    new_signer = MessageSigner(both, "2026-q1")
    body = b"{}"
    assert old_signer.headers("x", 1, body)[KEY_ID_HEADER] == "2025-q4"
    new_signer.verify("x", 1, body, old_signer.headers("x", 1, body))
    only_new = MessageSigner(parse_keys(NEW))
    with pytest.raises(Exception, match="unknown key id '2025-q4'"):
        only_new.verify("x", 1, body, old_signer.headers("x", 1, body))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nocolon", "kid:secret"),
        ("k:short", "shorter than 32"),
        (f"{NEW},{NEW}", "given twice"),
    ],
)
def test_bad_key_lists_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_keys(text)


def test_a_signing_key_id_must_be_one_of_the_keys(infra: Infra) -> None:
    with pytest.raises(ValueError, match="is not a given key"):
        rabbit(infra, NEW, "elsewhere")


# -- on real servers ---------------------------------------------------------------------------


async def test_a_signed_saga_confirms_while_keys_rotate(infra: Infra) -> None:
    """The booking service still signs with the old key, the worker already with the new."""
    booking = infra.booking_settings(rabbit=rabbit(infra, f"{OLD},{NEW}", "2025-q4"))
    worker = infra.discount_settings(rabbit=rabbit(infra, f"{OLD},{NEW}", "2026-q1"))
    async with running_stack(infra, booking_settings=booking, discount_settings=worker) as stack:
        created = (await stack.book(eligible_body())).json()
        done = await stack.wait_terminal(created["bookingId"])
        assert (done["status"], done["finalPrice"]) == ("CONFIRMED", 396)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "unsigned message (signing is required)"),
        ({SIGNATURE_HEADER: "v1=" + "0" * 64, KEY_ID_HEADER: "2026-q1"}, "bad signature"),
        ({SIGNATURE_HEADER: "v1=" + "0" * 64, KEY_ID_HEADER: "stolen"}, "unknown key id"),
    ],
    ids=["unsigned", "bad-signature", "unknown-key"],
)
async def test_with_signing_on_a_forged_release_is_dead_lettered_and_changes_nothing(
    infra: Infra, headers: dict[str, str], reason: str
) -> None:
    settings = rabbit(infra, NEW)
    async with running_stack(
        infra,
        booking_settings=infra.booking_settings(rabbit=settings),
        discount_settings=infra.discount_settings(rabbit=settings),
    ) as stack:
        created = (await stack.book(eligible_body())).json()
        assert (await stack.wait_terminal(created["bookingId"]))["finalPrice"] == 396
        assert await used(stack) == 1
        connection = await aio_pika.connect(infra.amqp_url)
        channel = await connection.channel()
        exchange = await channel.get_exchange(contracts.EXCHANGE)
        release = QuotaReleased(
            booking_id=uuid.UUID(created["bookingId"]), day=today(), reason=ReleaseReason.CANCELLED
        )
        await exchange.publish(
            aio_pika.Message(
                contracts.encode(release),
                type=Event.QUOTA_RELEASED.value,
                headers={contracts.CONTRACT_VERSION_HEADER: contracts.CONTRACT_VERSION, **headers},
            ),
            routing_key=Event.QUOTA_RELEASED.value,
        )
        dead = await next_dead_letter(channel, contracts.DISCOUNT_QUEUE)
        await connection.close()
        assert reason in dead.headers[contracts.DEAD_LETTER_REASON_HEADER]
        assert await used(stack) == 1
