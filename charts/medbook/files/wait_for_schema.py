"""Wait until the booking database's schema is at this image's migration head.

Run by the booking pods' init container: with the in-chart PostgreSQL the
migrations Job runs after the release's objects exist (post-install), so the
API must not start on an empty database. Exits 0 once the database is at the
head revision, or at a revision this image does not know (a newer release
migrated it: a rollback must not wait forever); keeps waiting while the
database is unreachable, empty or behind; exits 1 after --timeout seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool, text

from medbook.booking.migrations import alembic_config
from medbook.config import PostgresSettings


def schema_versions(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return {str(row[0]) for row in rows}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between checks")
    args = parser.parse_args(argv)
    url = PostgresSettings().sync_url
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    known = {revision.revision for revision in script.walk_revisions()}
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        try:
            versions = schema_versions(url)
        except Exception as exc:  # unreachable, or no alembic_version table yet
            state = f"database not ready or not migrated yet ({type(exc).__name__})"
        else:
            if head in versions:
                print(f"schema is at {head}", flush=True)
                return 0
            if versions - known:
                print(f"schema is at {sorted(versions)}, newer than this image: going on")
                return 0
            state = f"schema is at {sorted(versions) or 'nothing'}, waiting for {head}"
        if state != last:
            print(state, flush=True)
            last = state
        if time.monotonic() > deadline:
            print(f"gave up after {args.timeout:g}s: {state}", file=sys.stderr)
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
