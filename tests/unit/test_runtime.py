"""The services' process plumbing: a service's full garbage collections do not walk what
its imports made (they paused the booking service for 60-70 ms, one every few seconds
under load, enough to set the end-to-end p99)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from medbook.runtime import GC_YOUNG_THRESHOLD

_PROBE = textwrap.dedent(
    """
    import gc, json

    import medbook.booking.app  # what a service imports
    from medbook.runtime import run

    async def main():
        return 0

    before = len(gc.get_objects(generation=2))
    run(main)
    print(json.dumps({
        "old_before": before,
        "old_after": len(gc.get_objects(generation=2)),
        "frozen": gc.get_freeze_count(),
        "threshold": gc.get_threshold(),
    }))
    """
)


def test_a_service_freezes_what_it_imported_and_collects_the_young_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    # The imports' objects are out of the collector's reach: a full collection walks only
    # what the service made since (here almost nothing).
    assert probe["frozen"] > 50_000, probe
    assert probe["frozen"] >= probe["old_before"], probe
    assert probe["old_after"] < probe["old_before"] / 20, probe
    assert probe["threshold"][0] == GC_YOUNG_THRESHOLD
