"""The current time, and the timestamp form the reference's clients read.

Domain code never reads the clock: it is given ``now``. The adapters and the
services read it here, so "now" means one thing everywhere (aware, UTC).
"""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def js_iso(moment: dt.datetime) -> str:
    """``2026-01-30T10:00:00.123Z``, the reference's (JavaScript) timestamp form."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
