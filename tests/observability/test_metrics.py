"""After a real saga run the metrics moved exactly as the bookings did; the end-to-end
histogram carries the sampled traces as exemplars, in OpenMetrics."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry

from medbook import metrics
from medbook.config import PolicyDefaults
from tests.helpers import (
    Infra,
    ProcessServices,
    booking_body,
    eligible_body,
    eventually,
    running_stack,
)


class Sampler:
    """Reads samples and their change since the sampler was made."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.before = self._all()

    def _all(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in self.registry.collect()
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self._all().get((name, tuple(sorted(labels.items()))), 0.0)

    def delta(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self._all().get(key, 0.0) - self.before.get(key, 0.0)


async def test_metrics_follow_a_saga_run_exactly(infra: Infra) -> None:
    booking, discount = Sampler(metrics.BOOKING), Sampler(metrics.DISCOUNT)
    settings = infra.discount_settings(policy=PolicyDefaults(daily_limit=2))
    async with running_stack(infra, discount_settings=settings) as stack:
        bodies = [
            eligible_body(),
            eligible_body(),
            eligible_body(),
            eligible_body(name="fail_test_user"),
            booking_body(gender="Male", serviceNames=["Blood Test"]),
        ]
        ids = []
        for body in bodies:  # one after the other: the third eligible one finds the quota spent
            ids.append((await stack.book(body)).json()["bookingId"])
            await stack.wait_terminal(ids[-1])
        first = await stack.get(ids[0])
        assert first["finalPrice"] == 396
        assert (await stack.api.post(f"/booking/{ids[0]}/cancel")).status_code == 200
        await eventually(
            lambda: asyncio.sleep(
                0, discount.delta("medbook_quota_units_released_total", trigger="cancelled")
            ),
            lambda n: n == 1,
            what="unit released",
        )

        assert booking.delta("medbook_bookings_created_total") == 5
        assert (
            booking.delta(
                "medbook_http_requests_total", method="POST", route="/booking", status="201"
            )
            == 5
        )
        assert (
            booking.delta(
                "medbook_http_requests_total",
                method="POST",
                route="/booking/{id}/cancel",
                status="200",
            )
            == 1
        )
        assert (
            booking.delta(
                "medbook_http_request_duration_seconds_count", method="POST", route="/booking"
            )
            == 5
        )
        outcomes = {
            ("CONFIRMED", "discount_applied"): 2,
            ("REJECTED", "quota_exhausted"): 1,
            ("REJECTED", "blocked_user"): 1,
            ("CONFIRMED", "no_discount"): 1,
        }
        for (status, reason), count in outcomes.items():
            assert (
                booking.delta("medbook_saga_outcomes_total", status=status, reason=reason) == count
            )
        assert (
            sum(
                booking.delta("medbook_saga_duration_seconds_count", status=s)
                for s in ("CONFIRMED", "REJECTED")
            )
            == 5
        )
        assert booking.delta("medbook_quota_release_requests_total", trigger="cancelled") == 1
        assert booking.delta("medbook_messages_published_total", event="booking_created") == 5
        assert booking.delta("medbook_messages_published_total", event="quota_released") == 1
        assert (
            booking.delta(
                "medbook_messages_consumed_total",
                queue="booking_queue",
                event="discount_processed",
                outcome="acked",
            )
            == 5
        )
        assert booking.delta("medbook_outbox_publish_latency_seconds_count") == 6

        for outcome, count in (
            ("discounted", 2),
            ("quota_exhausted", 1),
            ("blocked", 1),
            ("no_discount", 1),
        ):
            assert discount.delta("medbook_discount_decisions_total", outcome=outcome) == count
        assert (
            discount.delta(
                "medbook_messages_consumed_total",
                queue="discount_queue",
                event="booking_created",
                outcome="acked",
            )
            == 5
        )
        assert discount.delta("medbook_messages_published_total", event="discount_processed") == 5
        assert discount.delta("medbook_discount_processing_seconds_count") == 5
        assert discount.value("medbook_quota_limit") == 2
        await eventually(
            lambda: asyncio.sleep(0, discount.value("medbook_quota_used")),
            lambda v: v == 1,
            what="quota gauge back to 1 after the cancel",
            timeout=10,
        )

        await stack.booking.monitor.refresh()
        assert booking.value("medbook_pending_bookings") == 0
        assert booking.value("medbook_oldest_pending_booking_age_seconds") == 0
        assert booking.value("medbook_queue_messages", queue="discount_queue.dlq") == 0


async def test_metrics_endpoints_use_prometheus_names_and_no_unbounded_labels(infra: Infra) -> None:
    async with running_stack(infra) as stack:
        created = (await stack.book(eligible_body(name="Zoe Unique-Name"))).json()
        await stack.wait_terminal(created["bookingId"])
        await stack.api.get(f"/booking/{created['bookingId']}")
        await stack.booking.monitor.refresh()
        text = (await stack.api.get("/metrics")).text
        assert created["bookingId"] not in text
        assert "Zoe" not in text
        assert 'route="/booking/{id}"' in text
        assert "medbook_sweep_runs_total" in text
        for line in text.splitlines():
            if line.startswith("# TYPE medbook_") and line.endswith(" counter"):
                name = line.split()[2]
                assert name.endswith("_total") or f"{name}_total" in text, name


def test_no_created_series_beside_counters_and_histograms() -> None:
    from medbook_operator import metrics as operator_metrics

    for registry in (metrics.BOOKING, metrics.DISCOUNT, operator_metrics.REGISTRY):
        names = {s.name for family in registry.collect() for s in family.samples}
        assert "medbook_bookings_created_total" in names or registry is not metrics.BOOKING
        assert sorted(n for n in names if n.endswith("_created")) == []


OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def test_the_saga_histogram_carries_the_trace_as_an_exemplar_in_openmetrics(
    infra: Infra,
) -> None:
    async with running_stack(infra) as stack:  # spans are recorded in this process
        created = (await stack.book(eligible_body())).json()
        await stack.wait_terminal(created["bookingId"])
        # Prometheus's own Accept header: OpenMetrics first, the text format as a fallback.
        scraped = await stack.api.get(
            "/metrics",
            headers={
                "Accept": "application/openmetrics-text;version=1.0.0,"
                "application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            },
        )
        plain = await stack.api.get("/metrics")
    assert scraped.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert scraped.text.rstrip().endswith("# EOF")
    exemplars = [
        line
        for line in scraped.text.splitlines()
        if line.startswith("medbook_saga_duration_seconds_bucket") and " # {" in line
    ]
    assert any(f'trace_id="{created["traceId"]}"' in line for line in exemplars), exemplars
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert " # {" not in plain.text  # the text format has no exemplars
    assert "medbook_saga_duration_seconds_bucket" in plain.text


async def test_no_exemplar_points_at_a_trace_that_was_not_sampled(infra: Infra, tmp_path) -> None:
    services = ProcessServices(infra, tmp_path).start()  # tracing off: nothing is sampled
    try:
        async with httpx.AsyncClient(base_url=services.api_url) as api:
            created = (await api.post("/booking", json=eligible_body())).json()
            await eventually(
                lambda: api.get(f"/booking/{created['bookingId']}"),
                lambda r: r.json()["status"] != "PENDING",
                what="final",
            )
            scraped = await api.get("/metrics", headers={"Accept": OPENMETRICS})
    finally:
        services.stop()
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert "medbook_saga_duration_seconds_bucket" in scraped.text
    assert " # {" not in scraped.text
