"""One trace per booking, across both services; logs carry it; no personal data in either."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medbook.discount import rules
from tests.helpers import Infra, ProcessServices, Stack, eligible_body, eventually


def trace_of(spans: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    wanted = int(trace_id, 16)
    return [s for s in spans.get_finished_spans() if s.context.trace_id == wanted]


def parent_name(span: ReadableSpan, trace: list[ReadableSpan]) -> str | None:
    by_id = {s.context.span_id: s.name for s in trace}
    return by_id.get(span.parent.span_id) if span.parent else None


async def finished_trace(
    spans: InMemorySpanExporter, trace_id: str, last: str
) -> list[ReadableSpan]:
    import asyncio

    return await eventually(
        lambda: asyncio.sleep(0, trace_of(spans, trace_id)),
        lambda t: any(s.name == last for s in t),
        what=f"span {last}",
    )


async def test_one_trace_crosses_both_services_through_the_outbox(stack: Stack, spans) -> None:
    created = (await stack.book(eligible_body())).json()
    await stack.wait_terminal(created["bookingId"])
    trace = await finished_trace(spans, created["traceId"], "results (group commit)")
    names = [s.name for s in trace]
    expected_parents = {
        "POST /booking": None,
        "booking.create": "POST /booking",
        "create (group commit)": "booking.create",
        "medbook.saga,booking_created send": "booking.create",  # the outbox relay, in the stored context
        "discount.process": "medbook.saga receive",
        "medbook.saga,discount_processed send": "discount.process",
        "booking.apply_result": "medbook.saga receive",
        "results (group commit)": "booking.apply_result",
    }
    for name, parent in expected_parents.items():
        assert name in names, names
        span = next(s for s in trace if s.name == name)
        assert parent_name(span, trace) == parent, (name, parent_name(span, trace))
    receives = [s for s in trace if s.name == "medbook.saga receive"]
    assert {parent_name(s, trace) for s in receives} == {
        "medbook.saga,booking_created send",
        "medbook.saga,discount_processed send",
    }
    redis_calls = [s for s in trace if s.attributes.get("db.system") == "redis"]
    assert redis_calls and all(parent_name(s, trace) == "discount.process" for s in redis_calls)
    roots = [s for s in trace if s.parent is None]
    assert [r.name for r in roots] == ["POST /booking"]
    # The batched INSERT is a trace of its own, linked to this booking's span.
    group = next(s for s in trace if s.name == "create (group commit)")
    flush = [
        s
        for s in spans.get_finished_spans()
        if s.name == "create flush"
        and any(link.context.span_id == group.context.span_id for link in s.links)
    ]
    assert len(flush) == 1
    assert any(
        s.attributes.get("db.system") == "postgresql"
        and s.parent is not None
        and s.parent.span_id == flush[0].context.span_id
        for s in spans.get_finished_spans()
    )


async def test_a_retried_message_stays_in_the_booking_trace(
    stack: Stack, spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = rules.decide
    failures = []

    def flaky(booking, policy, today):
        if not failures:
            failures.append(booking.booking_id)
            raise RuntimeError("transient bug")
        return real(booking, policy, today)

    monkeypatch.setattr(rules, "decide", flaky)
    created = (await stack.book(eligible_body())).json()
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["status"] == "CONFIRMED"
    trace = await finished_trace(spans, created["traceId"], "results (group commit)")
    processing = [s for s in trace if s.name == "discount.process"]
    assert len(processing) == 2  # the failed try and the retry, in the same trace
    assert sorted(s.status.status_code.name for s in processing) == ["ERROR", "UNSET"]


async def test_spans_carry_no_personal_data(stack: Stack, spans) -> None:
    created = (
        await stack.book(eligible_body(name="Priya Secret-Surname", dob="1977-03-14"))
    ).json()
    await stack.wait_terminal(created["bookingId"])
    await stack.api.get(f"/booking/{created['bookingId']}")
    await finished_trace(spans, created["traceId"], "results (group commit)")
    for span in spans.get_finished_spans():
        dumped = json.dumps(
            {
                "name": span.name,
                "attributes": dict(span.attributes or {}),
                "events": [dict(e.attributes or {}) for e in span.events],
            },
            default=str,
        )
        assert "Secret-Surname" not in dumped
        assert "1977-03-14" not in dumped


async def test_logs_are_json_with_the_trace_id_and_without_personal_data(
    infra: Infra, tmp_path: Path
) -> None:
    services = ProcessServices(infra, tmp_path, extra_env={"MEDBOOK_LOG_LEVEL": "DEBUG"}).start()
    try:
        async with httpx.AsyncClient(base_url=services.api_url) as api:
            created = (
                await api.post(
                    "/booking", json=eligible_body(name="Priya Secret-Surname", dob="1977-03-14")
                )
            ).json()
            await eventually(
                lambda: api.get(f"/booking/{created['bookingId']}"),
                lambda r: r.json()["status"] != "PENDING",
                what="final",
            )
    finally:
        services.stop()
    lines = []
    for name in ("booking", "discount"):
        text = (tmp_path / f"{name}.log").read_text()
        assert "Secret-Surname" not in text and "1977-03-14" not in text
        lines += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not [line for line in lines if "color_message" in line or "\x1b[" in json.dumps(line)]
    about = [line for line in lines if created["bookingId"] in line["message"]]
    assert {line["service"] for line in about} == {"medbook-booking", "medbook-discount"}
    assert all(line.get("trace_id") == created["traceId"] for line in about), about
    assert all(len(line.get("span_id", "")) == 16 for line in about)
