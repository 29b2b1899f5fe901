"""One trace per booking, across both services; logs carry it; no personal data in either.
Messaging spans follow the RabbitMQ conventions; sampling is the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)

from medbook.contracts import BOOKING_QUEUE, DISCOUNT_QUEUE, EXCHANGE
from medbook.discount import rules
from medbook.telemetry import sampling_from_environment
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
    return await eventually(
        lambda: asyncio.sleep(0, trace_of(spans, trace_id)),
        lambda t: any(s.name == last for s in t),
        what=f"span {last}",
    )


async def test_one_trace_crosses_both_services_through_the_outbox(stack: Stack, spans) -> None:
    created = (await stack.book(eligible_body())).json()
    await stack.wait_terminal(created["bookingId"])
    trace = await finished_trace(spans, created["traceId"], "booking.apply_result")
    names = [s.name for s in trace]
    expected_parents = {
        "POST /booking": None,
        "booking.create": "POST /booking",
        "discount.process": "publish medbook.saga",
        "booking.apply_result": "publish medbook.saga",
    }
    for name, parent in expected_parents.items():
        assert name in names, names
        span = next(s for s in trace if s.name == name)
        assert parent_name(span, trace) == parent, (name, parent_name(span, trace))
    publishes = {
        s.attributes["messaging.rabbitmq.destination.routing_key"]: s
        for s in trace
        if s.name == "publish medbook.saga"
    }
    # The outbox relay publishes in the request's stored context; the worker in its handler's.
    assert parent_name(publishes["booking_created"], trace) == "booking.create"
    assert parent_name(publishes["discount_processed"], trace) == "discount.process"
    roots = [s for s in trace if s.parent is None]
    assert [r.name for r in roots] == ["POST /booking"]
    # The batched INSERT, the worker's pipelined decisions and the batched result UPDATE are
    # each a trace of their own, linked to this booking's step that joined the batch (the wait
    # is no span of its own): the statement's and the Redis script's spans are there.
    assert not [s for s in trace if "group commit" in s.name]
    for batch, flush_name, system in (
        ("booking.create", "create flush", "postgresql"),
        ("discount.process", "quota decisions flush", "redis"),
        ("booking.apply_result", "results flush", "postgresql"),
    ):
        group = next(s for s in trace if s.name == batch)
        flush = [
            s
            for s in spans.get_finished_spans()
            if s.name == flush_name
            and any(link.context.span_id == group.context.span_id for link in s.links)
        ]
        assert len(flush) == 1, batch
        assert any(
            s.attributes.get("db.system") == system
            and s.parent is not None
            and s.parent.span_id == flush[0].context.span_id
            for s in spans.get_finished_spans()
        ), batch


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
    trace = await finished_trace(spans, created["traceId"], "booking.apply_result")
    processing = [s for s in trace if s.name == "discount.process"]
    assert len(processing) == 2  # the failed try and the retry, in the same trace
    assert sorted(s.status.status_code.name for s in processing) == ["ERROR", "UNSET"]


async def test_spans_carry_no_personal_data(stack: Stack, spans) -> None:
    created = (
        await stack.book(eligible_body(name="Priya Secret-Surname", dob="1977-03-14"))
    ).json()
    await stack.wait_terminal(created["bookingId"])
    await stack.api.get(f"/booking/{created['bookingId']}")
    await finished_trace(spans, created["traceId"], "booking.apply_result")
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


def scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


async def test_messaging_spans_follow_the_rabbitmq_conventions(stack: Stack, spans) -> None:
    created = (await stack.book(eligible_body())).json()
    await stack.wait_terminal(created["bookingId"])
    saga = await finished_trace(spans, created["traceId"], "booking.apply_result")
    # The cancel is a request (a trace) of its own; its quota_released goes the same way.
    assert (await stack.api.post(f"/booking/{created['bookingId']}/cancel")).status_code == 200
    [release] = await eventually(
        lambda: asyncio.sleep(
            0,
            [
                s
                for s in spans.get_finished_spans()
                if s.name == "discount.release"
                and s.attributes.get("medbook.booking_id") == created["bookingId"]
            ],
        ),
        what="the release's process span",
    )
    trace = saga + trace_of(spans, format(release.context.trace_id, "032x"))

    sends = {
        s.attributes["messaging.rabbitmq.destination.routing_key"]: s
        for s in trace
        if s.kind is SpanKind.PRODUCER
    }
    assert set(sends) == {"booking_created", "discount_processed", "quota_released"}
    for send in sends.values():
        assert scope(send) == "medbook.messaging"
        assert send.name == f"publish {EXCHANGE}"
        assert send.attributes["messaging.system"] == "rabbitmq"
        assert send.attributes["messaging.destination.name"] == EXCHANGE
        assert send.attributes["messaging.operation.type"] == "send"
        assert send.attributes["messaging.operation.name"] == "publish"
        assert send.attributes["messaging.message.id"]
        assert send.attributes["messaging.message.body.size"] > 0
        assert send.attributes["server.address"] == "127.0.0.1"
        assert isinstance(send.attributes["server.port"], int)
    # No library's delivery span sits in between: a message's process span is the child of
    # the publish that created it (and linked to it, below).
    consumers = [s for s in trace if s.kind is SpanKind.CONSUMER]
    assert {s.name for s in consumers} == {
        "discount.process",
        "booking.apply_result",
        "discount.release",
    }

    # Each handler's span is the message's process span, linked to where it was created.
    for name, routing_key, queue in (
        ("discount.process", "booking_created", DISCOUNT_QUEUE),
        ("booking.apply_result", "discount_processed", BOOKING_QUEUE),
        ("discount.release", "quota_released", DISCOUNT_QUEUE),
    ):
        [process] = [s for s in trace if s.name == name]
        assert process.kind is SpanKind.CONSUMER, name
        attributes = process.attributes
        assert attributes["messaging.system"] == "rabbitmq", name
        assert attributes["messaging.operation.type"] == "process", name
        assert attributes["messaging.destination.name"] == EXCHANGE, name
        assert attributes["messaging.rabbitmq.destination.routing_key"] == routing_key, name
        assert attributes["messaging.consumer.group.name"] == queue, name
        assert attributes["messaging.message.id"], name
        assert attributes["messaging.rabbitmq.message.delivery_tag"] >= 1, name
        assert attributes["messaging.message.body.size"] > 0, name
        [link] = process.links
        assert process.parent.span_id == sends[routing_key].context.span_id, name
        assert link.context.span_id == sends[routing_key].context.span_id, name
        assert link.context.trace_id == sends[routing_key].context.trace_id, name


def tracing_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """setup_tracing in a process of its own (this one's provider is set once, by conftest)."""
    script = (
        "from medbook import telemetry\n"
        "provider = telemetry.setup_tracing('probe')\n"
        "print(provider.sampler.get_description(), telemetry.recording())\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", script], env=clean | env, capture_output=True, text=True, timeout=60
    )


def test_sampling_is_the_standard_variables_and_a_bad_ratio_stops_the_process() -> None:
    ratio = tracing_setup(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    )
    assert ratio.returncode == 0, ratio.stderr
    assert ratio.stdout.startswith("ParentBased{root:TraceIdRatioBased{0.1},"), ratio.stdout
    assert ratio.stdout.split()[-1] == "True"
    off = tracing_setup({})  # no exporter, no sampler: nothing recorded
    assert off.stdout.split() == ["AlwaysOffSampler", "False"]
    exported = tracing_setup({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert exported.stdout.startswith("ParentBased{root:AlwaysOnSampler,"), exported.stdout
    assert exported.stdout.split()[-1] == "True"
    never = tracing_setup({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    assert never.stdout.split() == ["TraceIdRatioBased{0.0}", "False"]
    for arg in ("ten percent", "1.5", "-0.1"):
        bad = tracing_setup(
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": arg}
        )
        assert bad.returncode != 0
        assert "is not a sampling ratio from 0 to 1" in bad.stderr, bad.stderr
    unknown = tracing_setup({"OTEL_TRACES_SAMPLER": "sometimes"})
    assert unknown.returncode != 0 and "is not one of" in unknown.stderr


def test_a_ratio_sampler_keeps_that_share_of_new_traces_and_follows_the_caller() -> None:
    chosen = sampling_from_environment(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    )
    assert chosen is not None and chosen.ratio == 0.1 and chosen.parent_based
    sampler = chosen.sampler()
    rng = random.Random(3)
    kept = sum(
        sampler.should_sample(None, rng.getrandbits(128), "x").decision
        is Decision.RECORD_AND_SAMPLE
        for _ in range(20_000)
    )
    assert 1700 < kept < 2300  # 10 % of 20,000 (the binomial's sd is 42)

    def child_of(sampled: bool) -> Decision:
        parent = SpanContext(
            rng.getrandbits(128),
            rng.getrandbits(64),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        )
        context = set_span_in_context(NonRecordingSpan(parent))
        return sampler.should_sample(context, parent.trace_id, "x").decision

    assert all(child_of(True) is Decision.RECORD_AND_SAMPLE for _ in range(200))
    assert all(child_of(False) is Decision.DROP for _ in range(200))
    assert sampling_from_environment({}) is None
    assert sampling_from_environment({"OTEL_TRACES_SAMPLER": "traceidratio"}).ratio == 1.0


@pytest.mark.parametrize("kept", [False, True], ids=["dropped", "sampled"])
async def test_a_trace_the_sampler_dropped_costs_no_span_of_ours_and_keeps_its_id(
    spans, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """At 10 % sampling, nine bookings in ten are in a dropped trace: their steps and group
    commits make no span (not even a non-recording one), and the trace id and parent still
    go into the headers of what they publish; a sampled trace gets its step, and the batch's
    flush span links to it."""
    from medbook import group_commit, telemetry

    parent = SpanContext(
        trace_id=random.getrandbits(128),
        span_id=random.getrandbits(64),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if kept else TraceFlags.DEFAULT),
    )
    started: list[str] = []
    real = group_commit.tracer.start_as_current_span

    def counting(name: str, *args, **kwargs):
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(group_commit.tracer, "start_as_current_span", counting)

    async def flush(items):
        return [item * 2 for item in items]

    commit = group_commit.GroupCommit(flush, name="probe")
    context = set_span_in_context(NonRecordingSpan(parent))
    with telemetry.use_context(context), telemetry.span(group_commit.tracer, "probe.step") as step:
        assert (step.get_span_context() == parent) is not kept  # no child when dropped
        assert await commit.submit(21) == 42
        headers = telemetry.inject_headers()
    _, trace_id, _, _ = headers["traceparent"].split("-")
    assert int(trace_id, 16) == parent.trace_id
    if kept:
        assert "probe flush" in started and headers["traceparent"].endswith("-01")
        finished = {s.name: s for s in spans.get_finished_spans()}
        [link] = finished["probe flush"].links
        assert link.context == finished["probe.step"].context
    else:
        assert started == []
        assert headers["traceparent"] == f"00-{parent.trace_id:032x}-{parent.span_id:016x}-00"


async def test_a_booking_in_a_dropped_trace_starts_no_span_anywhere(
    stack: Stack, spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking whose caller's trace the sampler dropped (nine in ten at 10 %) crosses HTTP,
    PostgreSQL, the outbox, RabbitMQ both ways and Redis without the sampler being asked once
    for it: not by the server span, not by a library instrumentation, not by our steps. Its
    trace id still comes back from the API and is followed by both services."""
    from opentelemetry import trace

    sampler = trace.get_tracer_provider().sampler
    trace_id = random.getrandbits(128)
    asked: list[str] = []
    real = sampler.should_sample

    def counting(parent_context, tid, name, *args, **kwargs):
        if tid == trace_id:
            asked.append(name)
        return real(parent_context, tid, name, *args, **kwargs)

    monkeypatch.setattr(sampler, "should_sample", counting)
    dropped = {"traceparent": f"00-{trace_id:032x}-{random.getrandbits(64):016x}-00"}
    response = await stack.book(eligible_body(), headers=dropped)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["traceId"] == f"{trace_id:032x}"
    booking = await stack.wait_terminal(created["bookingId"])
    assert booking["status"] == "CONFIRMED"
    assert (await stack.api.get(f"/booking/{created['bookingId']}", headers=dropped)).is_success
    assert asked == []
    assert trace_of(spans, created["traceId"]) == []


async def test_the_server_span_has_the_http_conventions_and_no_query(stack: Stack, spans) -> None:
    created = (await stack.book(eligible_body())).json()
    await stack.wait_terminal(created["bookingId"])
    found = await stack.api.get(f"/booking/{created['bookingId']}?name=Priya+Secret")
    missing = await stack.api.get("/no/such/route")
    probe = await stack.api.get("/healthz")
    assert (found.status_code, missing.status_code, probe.status_code) == (200, 404, 200)
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    by_trace = {f"{s.context.trace_id:032x}": s for s in servers}
    post = by_trace[created["traceId"]]
    assert post.name == "POST /booking" and post.parent is None
    assert post.attributes["http.route"] == "/booking"
    assert post.attributes["http.response.status_code"] == 201
    get = next(s for s in servers if s.name == "GET /booking/{id}")
    assert get.attributes["url.path"] == f"/booking/{created['bookingId']}"
    assert get.attributes["http.request.method"] == "GET"
    assert get.attributes["http.response.status_code"] == 200
    assert "Secret" not in json.dumps(dict(get.attributes))
    unmatched = next(s for s in servers if s.attributes.get("url.path") == "/no/such/route")
    assert unmatched.name == "GET" and "http.route" not in unmatched.attributes
    assert unmatched.attributes["http.response.status_code"] == 404
    assert unmatched.status.status_code.name == "UNSET"  # a client error is not the server's
    assert not any(s.attributes.get("url.path") == "/healthz" for s in servers)
