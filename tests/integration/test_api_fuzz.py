"""The API fuzzed from its own OpenAPI document: every answer must match the document.

schemathesis generates valid and invalid requests for each operation and
checks status codes, content types and response bodies against the schema,
and that nothing answers 5xx. The services run as real processes against the
session's real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from medbook.booking.openapi import openapi_document
from medbook.devstack.servers import PostgresServer, RabbitMQServer, RedisServer
from tests.conftest import TEMPLATE_DB
from tests.helpers import Infra, ProcessServices, reset_broker

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def api_url(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    rabbit_server: RabbitMQServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    postgres_server.create_database("fuzz", template=TEMPLATE_DB)
    asyncio.run(reset_broker(rabbit_server.url))
    infra = Infra(postgres_server.url_for("fuzz"), redis_server.url, rabbit_server.url)
    services = ProcessServices(infra, tmp_path_factory.mktemp("fuzz-logs")).start()
    try:
        yield services.api_url
    finally:
        services.stop()
        postgres_server.drop_database("fuzz")


# Requests valid for the schema may still be refused by rules JSON Schema cannot
# state (a service not offered to that gender, a date of birth in the future, an
# Idempotency-Key reused with another body); test_booking_api.py asserts those.
EXCLUDED = [positive_data_acceptance]


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_openapi_document(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url, timeout=10, excluded_checks=EXCLUDED)


def test_document_is_served_as_json(api_url: str) -> None:
    import httpx

    response = httpx.get(f"{api_url}/openapi.json")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()
