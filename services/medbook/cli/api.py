"""A small client of the booking API, for the commands that talk to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from medbook.cli.common import Unreachable, UsageProblem
from medbook.contracts import TERMINAL_STATUSES


@dataclass(frozen=True)
class Created:
    status_code: int
    body: dict[str, Any]
    replayed: bool

    @property
    def booking_id(self) -> str | None:
        return self.body.get("bookingId") if self.status_code == 201 else None

    @property
    def problem(self) -> str:
        message = self.body.get("message")
        details = self.body.get("error")
        if isinstance(details, list):
            return f"{message}: {'; '.join(map(str, details))}"
        return str(message or self.body)


def result_lines(booking: dict[str, Any]) -> int:
    """How many outcomes the booking's history records (a correct saga: exactly one)."""
    return sum(
        "Status: CONFIRMED" in line or "Status: REJECTED" in line
        for line in booking.get("history", [])
        if "Late discount result ignored" not in line
    )


class BookingApi:
    """``async with BookingApi(url, token) as api``: checks the API answers, then serves calls."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> BookingApi:
        try:
            response = await self.client.get("/healthz", timeout=5)
        except httpx.HTTPError as exc:
            await self.client.aclose()
            raise Unreachable("the booking API", self.url, exc) from None
        if response.status_code != 200:
            await self.client.aclose()
            raise Unreachable(
                "the booking API", self.url, f"/healthz answered {response.status_code}"
            )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    def _check_auth(self, response: httpx.Response) -> None:
        if response.status_code == 401:
            raise UsageProblem(
                f"the booking API at {self.url} refused us ({response.json().get('message')}): "
                "give --token or set MEDBOOK_API_TOKEN"
            )

    async def services(self, gender: str | None = None) -> list[dict[str, Any]]:
        params = {"gender": gender} if gender else None
        response = await self.client.get("/booking/services", params=params)
        self._check_auth(response)
        response.raise_for_status()
        catalog: list[dict[str, Any]] = response.json()
        return catalog

    async def create(self, body: dict[str, Any], idempotency_key: str | None = None) -> Created:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self.client.post("/booking", json=body, headers=headers)
        self._check_auth(response)
        return Created(
            response.status_code,
            response.json(),
            response.headers.get("Idempotent-Replayed") == "true",
        )

    async def get(self, booking_id: str) -> dict[str, Any] | None:
        response = await self.client.get(f"/booking/{booking_id}")
        self._check_auth(response)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        booking: dict[str, Any] = response.json()
        return booking

    async def cancel(self, booking_id: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(f"/booking/{booking_id}/cancel")
        self._check_auth(response)
        return response.status_code, response.json()

    async def wait(
        self,
        booking_id: str,
        within: float,
        *,
        until: Callable[[dict[str, Any]], bool] | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll the booking until ``until`` holds (default: a final status), ``within`` seconds.

        Returns the last state seen (check its status: it may still be PENDING).
        """
        done = until or (lambda b: b["status"] in TERMINAL_STATUSES)
        deadline = time.monotonic() + within
        last: dict[str, Any] | None = None
        while True:
            booking = await self.get(booking_id)
            if booking is None:
                raise UsageProblem(f"booking {booking_id} does not exist (purged?)")
            if on_change is not None and booking != last:
                on_change(booking)
            last = booking
            if done(booking) or time.monotonic() > deadline:
                return booking
            await asyncio.sleep(interval)
