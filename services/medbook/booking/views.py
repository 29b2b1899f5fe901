"""The booking as the API answers it: the reference's fields, plus traceId and completedAt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from medbook.clock import js_iso


def _json_value(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def booking_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "userId": row["user_id"],
        "userName": row["user_name"],
        "gender": row["gender"],
        "dob": row["dob"].isoformat(),
        "services": _json_value(row["services"]),
        "basePrice": row["base_price"],
        "finalPrice": row["final_price"],
        "status": row["status"],
        "failReason": row["fail_reason"],
        "history": _json_value(row["history"]),
        "traceId": row["trace_id"],
        "createdAt": js_iso(row["created_at"]),
        "updatedAt": js_iso(row["updated_at"]),
        "completedAt": js_iso(row["completed_at"]) if row["completed_at"] else None,
    }
