"""`helm test`: book through the API and wait until the saga reaches a terminal state.

Environment: MEDBOOK_API_URL (the booking Service), MEDBOOK_API_TOKEN (when the
API wants one), MEDBOOK_TEST_TIMEOUT (seconds, default 120). Prints the booking
and exits 0 when it ends CONFIRMED or REJECTED; exits 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import httpx

TERMINAL = {"CONFIRMED", "REJECTED", "CANCELLED"}


def main() -> int:
    base_url = os.environ["MEDBOOK_API_URL"].rstrip("/")
    token = os.environ.get("MEDBOOK_API_TOKEN", "")
    deadline = time.monotonic() + float(os.environ.get("MEDBOOK_TEST_TIMEOUT", "120"))
    headers = {"Idempotency-Key": f"helm-test-{uuid.uuid4()}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "userName": "helm test",
        "gender": "Female",
        "dob": "1990-06-15",
        "serviceNames": ["Blood Test", "Vaccination"],
    }
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as client:
        booking_id = None
        while booking_id is None:
            try:
                response = client.post("/booking", json=body)
            except httpx.HTTPError as exc:
                response = None
                problem = repr(exc)
            else:
                if response.status_code == 201:
                    booking_id = response.json()["bookingId"]
                    print(f"booked {booking_id}", flush=True)
                    break
                problem = f"{response.status_code} {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    print(f"the API refused the booking: {problem}", file=sys.stderr)
                    return 1
            if time.monotonic() > deadline:
                print(f"could not book: {problem}", file=sys.stderr)
                return 1
            time.sleep(2)
        status = "PENDING"
        while time.monotonic() < deadline:
            response = client.get(f"/booking/{booking_id}")
            if response.status_code == 200:
                booking = response.json()
                status = booking["status"]
                if status in TERMINAL:
                    print(f"booking {booking_id} is {status}: {booking}", flush=True)
                    return 0 if status in {"CONFIRMED", "REJECTED"} else 1
            time.sleep(1)
    print(f"booking {booking_id} still {status} after the timeout", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
