"""The reference's HTTP contract, through real HTTP on real servers, and where medbook is stricter."""

from __future__ import annotations

import uuid

import pytest

from medbook.contracts import is_trace_id
from tests.helpers import Stack, booking_body, eventually


async def count_rows(stack: Stack, table: str) -> int:
    return await stack.booking.db.fetch_val(f"SELECT count(*) FROM {table}")


async def test_catalog_for_each_gender(stack: Stack) -> None:
    everything = (await stack.api.get("/booking/services")).json()
    assert {s["name"]: s["price"] for s in everything} == {
        "General Consultation": 500,
        "Blood Test": 300,
        "X-Ray": 1200,
        "MRI Scan": 5000,
        "Dental Cleaning": 800,
        "Vaccination": 150,
        "Mammogram": 2000,
        "Prostate Exam": 1500,
    }
    female = {
        s["name"]
        for s in (await stack.api.get("/booking/services", params={"gender": "Female"})).json()
    }
    male = {
        s["name"]
        for s in (await stack.api.get("/booking/services", params={"gender": "Male"})).json()
    }
    other = {
        s["name"]
        for s in (await stack.api.get("/booking/services", params={"gender": "Other"})).json()
    }
    assert "Mammogram" in female and "Prostate Exam" not in female
    assert "Prostate Exam" in male and "Mammogram" not in male
    assert "Mammogram" not in other and "Prostate Exam" not in other and len(other) == 6
    bad = await stack.api.get("/booking/services", params={"gender": "Robot"})
    assert bad.status_code == 400
    assert bad.json()["message"] == "Validation failed"


async def test_create_answers_201_pending_with_a_trace_id(stack: Stack) -> None:
    response = await stack.book(booking_body(serviceNames=["General Consultation", "Blood Test"]))
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Booking request received. Processing..."
    assert body["status"] == "PENDING"
    assert is_trace_id(body["traceId"])
    uuid.UUID(body["bookingId"])
    booking = await stack.get(body["bookingId"])
    assert booking["basePrice"] == 800
    assert booking["services"] == [
        {"name": "General Consultation", "price": 500},
        {"name": "Blood Test", "price": 300},
    ]
    assert booking["traceId"] == body["traceId"]
    assert booking["history"][0].endswith("] Booking Created (Pending)")
    for field in (
        "id",
        "userId",
        "userName",
        "gender",
        "dob",
        "services",
        "basePrice",
        "finalPrice",
        "status",
        "failReason",
        "history",
        "createdAt",
        "updatedAt",
    ):
        assert field in booking


async def test_user_id_is_stable_per_name_unless_given(stack: Stack) -> None:
    first = await stack.get((await stack.book(booking_body(userName="Meera"))).json()["bookingId"])
    second = await stack.get((await stack.book(booking_body(userName="Meera"))).json()["bookingId"])
    other = await stack.get(
        (await stack.book(booking_body(userName="Meera", userId="patient-7"))).json()["bookingId"]
    )
    assert first["userId"] == second["userId"]
    assert uuid.UUID(first["userId"]).version == 5
    assert other["userId"] == "patient-7"


async def test_unknown_booking_is_404_in_the_reference_shape(stack: Stack) -> None:
    missing = uuid.uuid4()
    response = await stack.api.get(f"/booking/{missing}")
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 404
    assert body["message"] == f"Booking with ID {missing} not found"
    assert body["error"] == "Not Found"
    assert body["path"] == f"/booking/{missing}"
    assert body["timestamp"]


async def test_id_that_is_not_a_uuid_is_400(stack: Stack) -> None:
    response = await stack.api.get("/booking/not-a-uuid")
    assert response.status_code == 400
    assert response.json()["code"] == 400


BAD_BODIES = [
    ({"userName": 123}, "userName must be a string"),
    ({"userName": ""}, "userName should not be empty"),
    ({"gender": "Robot"}, "gender must be one of the following values: Male, Female, Other"),
    ({"dob": "1990-02-30"}, "dob 1990-02-30 is not a real calendar date"),
    ({"dob": "yesterday"}, "dob must be a valid ISO 8601 date string (YYYY-MM-DD)"),
    ({"serviceNames": []}, "serviceNames must contain at least 1 elements"),
    (
        {"serviceNames": ["Blood Test", "Blood Test"]},
        "serviceNames must not contain the same service twice",
    ),
    ({"basePrice": 1}, "property basePrice should not exist"),
]


@pytest.mark.parametrize(("change", "problem"), BAD_BODIES)
async def test_bad_input_is_a_clear_400_and_creates_nothing(
    stack: Stack, change: dict, problem: str
) -> None:
    response = await stack.book(booking_body(**change))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400
    assert body["message"] == "Validation failed"
    assert problem in body["error"]
    assert await count_rows(stack, "bookings") == 0
    assert await count_rows(stack, "outbox") == 0


@pytest.mark.parametrize(
    ("services", "gender", "message"),
    [
        (["Mammogram"], "Male", "Service 'Mammogram' is not available for gender 'Male'"),
        (
            ["Prostate Exam"],
            "Female",
            "Service 'Prostate Exam' is not available for gender 'Female'",
        ),
        (["Prostate Exam"], "Other", "Service 'Prostate Exam' is not available for gender 'Other'"),
        (["Brain Transplant"], "Male", "Service 'Brain Transplant' does not exist"),
    ],
)
async def test_service_not_offered_is_400(
    stack: Stack, services: list[str], gender: str, message: str
) -> None:
    response = await stack.book(booking_body(gender=gender, serviceNames=services))
    assert response.status_code == 400
    assert response.json()["message"] == message
    assert await count_rows(stack, "bookings") == 0


async def test_body_over_64_kib_is_413(stack: Stack) -> None:
    response = await stack.book(booking_body(userName="x" * (70 * 1024)))
    assert response.status_code == 413
    assert response.json()["code"] == 413
    assert await count_rows(stack, "bookings") == 0


async def test_body_over_64_kib_without_content_length_is_413(stack: Stack) -> None:
    async def chunks():  # chunked transfer encoding: no Content-Length to look at
        for _ in range(70):
            yield b" " * 1024

    response = await stack.api.post(
        "/booking", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_non_json_body_is_415_and_bad_json_400(stack: Stack) -> None:
    response = await stack.api.post(
        "/booking", content=b"userName=x", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["error"] == "Unsupported Media Type"
    broken = await stack.api.post(
        "/booking", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"] == ["request body must be valid JSON"]


async def test_unknown_route_and_wrong_method_are_json(stack: Stack) -> None:
    missing = await stack.api.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["message"] == "Cannot GET /nowhere"
    wrong = await stack.api.delete("/booking")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert wrong.json()["code"] == 405


async def test_health_readiness_and_openapi(stack: Stack) -> None:
    assert (await stack.api.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    document = (await stack.api.get("/openapi.json")).json()
    assert set(document["paths"]) >= {
        "/booking",
        "/booking/{id}",
        "/booking/services",
        "/booking/{id}/cancel",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert "ValidationError" in document["components"]["schemas"]


async def test_readiness_reports_a_missing_broker(infra, monkeypatch) -> None:
    from tests.helpers import running_stack

    async with running_stack(infra) as stack:
        await stack.booking.connection.close()
        response = await eventually(
            lambda: stack.api.get("/readyz"), lambda r: r.status_code == 503, what="readyz 503"
        )
        assert response.json()["checks"]["broker"] == "down"
        assert (await stack.api.get("/readyz", params={"check": "database"})).status_code == 200


async def test_idempotency_key_replays_the_same_booking(stack: Stack) -> None:
    headers = {"Idempotency-Key": "order-123"}
    first = await stack.book(booking_body(), headers=headers)
    again = await stack.book(booking_body(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["bookingId"] == again.json()["bookingId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count_rows(stack, "bookings") == 1
    booking_id = first.json()["bookingId"]
    assert (await stack.api.post(f"/booking/{booking_id}/cancel")).status_code == 200
    after_cancel = await stack.book(booking_body(), headers=headers)
    assert after_cancel.json()["status"] == "CANCELLED"
    assert after_cancel.json()["message"] == (
        "Booking request already received: the booking is CANCELLED"
    )
    other = await stack.book(booking_body(serviceNames=["X-Ray"]), headers=headers)
    assert other.status_code == 422
    assert "different request body" in other.json()["message"]
    assert await count_rows(stack, "bookings") == 1


async def test_concurrent_retries_with_one_key_make_one_booking(stack: Stack) -> None:
    import asyncio

    responses = await asyncio.gather(
        *(stack.book(booking_body(), headers={"Idempotency-Key": "burst"}) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["bookingId"] for r in responses}) == 1
    assert await count_rows(stack, "bookings") == 1


async def test_auth_on_protects_everything_but_probes(infra) -> None:
    from tests.helpers import running_stack

    settings = infra.booking_settings(api_token="s3cret")
    async with running_stack(infra, booking_settings=settings) as stack:
        anonymous = await stack.book()
        assert anonymous.status_code == 401
        assert anonymous.json()["message"] == "Missing bearer token"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = await stack.book(headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["message"] == "Invalid bearer token"
        assert (await stack.api.get("/booking/services")).status_code == 401
        assert (await stack.api.get("/openapi.json")).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await stack.api.get(open_path)).status_code == 200
        good = await stack.book(headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 201
        assert await count_rows(stack, "bookings") == 1


async def test_auth_off_by_default(stack: Stack) -> None:
    assert stack.booking.settings.api_token is None
    assert (await stack.book()).status_code == 201


async def test_database_down_gives_a_quick_json_503(infra) -> None:
    import time

    from tests.helpers import running_stack

    settings = infra.booking_settings()
    settings = settings.model_copy(
        update={
            "database": settings.database.model_copy(
                update={"url": "postgresql://postgres@127.0.0.1:1/none"}
            )
        }
    )
    async with running_stack(infra, booking_settings=settings, start_worker=False) as stack:
        started = time.monotonic()
        response = await stack.book()
        assert response.status_code == 503
        assert time.monotonic() - started < 3
        assert response.json()["code"] == 503
        assert response.headers["retry-after"]
        ready = await stack.api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "down"
