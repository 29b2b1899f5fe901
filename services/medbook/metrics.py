"""Prometheus metrics of both services, in one place.

Each service serves its own registry, so a dashboard summing a gauge never
adds a zero exported by the other service. Label values are bounded sets
(routes, statuses, reasons as short codes): never a booking id or a name.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# A `<name>_created` series beside every counter and histogram doubles the series count and
# no dashboard or alert reads it (Prometheus tracks resets itself).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

BOOKING = CollectorRegistry(auto_describe=True)
DISCOUNT = CollectorRegistry(auto_describe=True)

for _registry in (BOOKING, DISCOUNT):
    ProcessCollector(registry=_registry)
    PlatformCollector(registry=_registry)
    GCCollector(registry=_registry)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


_M = TypeVar("_M", Counter, Gauge, Histogram)


def _shared(metric: _M) -> _M:
    BOOKING.register(metric)
    DISCOUNT.register(metric)
    return metric


# Messaging, in both services (labelled by queue, so no series until used).
MESSAGES_CONSUMED = _shared(
    Counter(
        "medbook_messages_consumed",
        "Messages taken off a queue, by how they were settled.",
        ["queue", "event", "outcome"],
        registry=None,
    )
)
MESSAGES_RETRIED = _shared(
    Counter(
        "medbook_messages_retried",
        "Processing attempts repeated: 'unavailable' (a dependency was down) or 'failed'.",
        ["queue", "cause"],
        registry=None,
    )
)
MESSAGES_DEAD_LETTERED = _shared(
    Counter(
        "medbook_messages_dead_lettered",
        "Messages sent to a dead-letter queue, by reason code.",
        ["queue", "reason"],
        registry=None,
    )
)
DUPLICATES_DETECTED = _shared(
    Counter(
        "medbook_duplicate_messages",
        "Deliveries recognised as duplicates and not applied again.",
        ["queue"],
        registry=None,
    )
)
MESSAGES_PUBLISHED = _shared(
    Counter(
        "medbook_messages_published",
        "Events published and confirmed by the broker.",
        ["event"],
        registry=None,
    )
)

# Booking service.
HTTP_REQUESTS = Counter(
    "medbook_http_requests",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
    registry=BOOKING,
)
HTTP_DURATION = Histogram(
    "medbook_http_request_duration_seconds",
    "HTTP request latency, by route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=BOOKING,
)
BOOKINGS_CREATED = Counter(
    "medbook_bookings_created", "Bookings created (PENDING).", registry=BOOKING
)
SAGA_OUTCOMES = Counter(
    "medbook_saga_outcomes",
    "Bookings reaching a final status, by status and reason code.",
    ["status", "reason"],
    registry=BOOKING,
)
SAGA_DURATION = Histogram(
    "medbook_saga_duration_seconds",
    "Time from a booking's creation to its first final status.",
    ["status"],
    buckets=SAGA_BUCKETS,
    registry=BOOKING,
)
OUTBOX_BACKLOG = Gauge(
    "medbook_outbox_backlog", "Events waiting in the outbox to be published.", registry=BOOKING
)
OUTBOX_OLDEST_AGE = Gauge(
    "medbook_outbox_oldest_age_seconds",
    "Age of the oldest event waiting in the outbox.",
    registry=BOOKING,
)
OUTBOX_PUBLISH_LATENCY = Histogram(
    "medbook_outbox_publish_latency_seconds",
    "Time from an outbox row's commit to the broker's confirm of its event.",
    buckets=LATENCY_BUCKETS,
    registry=BOOKING,
)
CONFLICTING_RESULTS = Counter(
    "medbook_conflicting_results",
    "Results ignored because their booking holds another result (a forged message, or a bug).",
    registry=BOOKING,
)
QUOTA_RELEASE_REQUESTS = Counter(
    "medbook_quota_release_requests",
    "quota_released events emitted, by trigger (cancelled, late_result, orphan_result).",
    ["trigger"],
    registry=BOOKING,
)
OLDEST_PENDING_AGE = Gauge(
    "medbook_oldest_pending_booking_age_seconds",
    "Age of the oldest booking still PENDING (0 when none).",
    registry=BOOKING,
)
ADMISSION_WAIT = Histogram(
    "medbook_admission_wait_seconds",
    "Time a create request waited for the saga's backlog to drain (admission control).",
    buckets=LATENCY_BUCKETS,
    registry=BOOKING,
)
PENDING_BOOKINGS = Gauge(
    "medbook_pending_bookings", "Bookings currently PENDING.", registry=BOOKING
)
QUEUE_MESSAGES = Gauge(
    "medbook_queue_messages",
    "Messages ready in a queue (the saga's queues and their dead-letter queues).",
    ["queue"],
    registry=BOOKING,
)

# Discount worker.
DISCOUNT_DECISIONS = Counter(
    "medbook_discount_decisions",
    "Discount decisions, by outcome (discounted, no_discount, blocked, quota_exhausted).",
    ["outcome"],
    registry=DISCOUNT,
)
DISCOUNT_PROCESSING = Histogram(
    "medbook_discount_processing_seconds",
    "Time the worker spends on one booking_created, to the confirmed result.",
    buckets=LATENCY_BUCKETS,
    registry=DISCOUNT,
)
QUOTA_USED = Gauge(
    "medbook_quota_used", "Discount units used today (policy time zone).", registry=DISCOUNT
)
QUOTA_LIMIT = Gauge(
    "medbook_quota_limit", "Today's discount limit from the policy in force.", registry=DISCOUNT
)
QUOTA_RELEASED = Counter(
    "medbook_quota_units_released",
    "Quota units given back (compensations), by trigger (cancelled, late_result, orphan_result).",
    ["trigger"],
    registry=DISCOUNT,
)
POLICY_PUBLISHED = Gauge(
    "medbook_policy_published",
    "1 when a published policy is in force, 0 when the environment's defaults are.",
    registry=DISCOUNT,
)
QUOTA_RELEASES_REFUSED = Counter(
    "medbook_quota_releases_refused",
    "Releases refused because they do not name the result that holds the unit (forged, stale).",
    registry=DISCOUNT,
)
RECOVERED_CLAIMS = Counter(
    "medbook_discount_recovered_claims",
    "Bookings decided on a redelivery that found no stored result (their first worker stopped).",
    registry=DISCOUNT,
)
