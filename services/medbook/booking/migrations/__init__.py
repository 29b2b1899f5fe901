"""Database migrations (alembic), and ``medbook-migrate`` that applies, checks and awaits them.

The migration scripts live beside this module; no ``alembic.ini`` is needed:
the configuration is built here from the same settings the services use.

``medbook-migrate`` is what the Helm chart runs from the booking image: the
migrations Job (``medbook-migrate``, i.e. ``upgrade``) and the booking pods'
init container (``medbook-migrate wait``), so that no booking pod serves before
the schema is at its image's revision.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from medbook.config import PostgresSettings

HERE = Path(__file__).resolve().parent
log = logging.getLogger("medbook.migrate")

# One migration at a time per database, whoever runs it (an install's Job, an upgrade's
# hook, a person): a session-level advisory lock, keyed by this name.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"medbook-migrate").digest()[:8], "big", signed=True)
CONNECT_TIMEOUT = 5  # seconds, for each attempt to reach the database
LOCK_POLL = 0.2  # seconds between tries for the migration lock


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Schema(enum.Enum):
    """Where a database's schema stands, seen from this version's migrations."""

    AT_HEAD = "at head"
    NEWER = "newer"  # a revision these migrations do not know: a newer release migrated it
    BEHIND = "behind"
    EMPTY = "empty"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class State:
    schema: Schema
    detail: str

    @property
    def serves(self) -> bool:
        """Whether this version's code may run on the database as it is."""
        return self.schema in (Schema.AT_HEAD, Schema.NEWER)


def _engine(url: str) -> Engine:
    return create_engine(
        url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT}
    )


def _reason(exc: DBAPIError) -> str:
    """The driver's first line (``password authentication failed for user ...``)."""
    original = exc.orig if exc.orig is not None else exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return lines[0] if lines else type(original).__name__


def schema_state(url: str) -> State:
    """Read the database's alembic revision and compare it with this version's head."""
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    known = {revision.revision for revision in script.walk_revisions()}
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT to_regclass('alembic_version')")).scalar()
            rows = (
                connection.execute(text("SELECT version_num FROM alembic_version")).all()
                if exists
                else []
            )
    except (OperationalError, InterfaceError) as exc:  # refused, unknown host, bad password
        return State(Schema.UNREACHABLE, f"the database cannot be reached: {_reason(exc)}")
    finally:
        engine.dispose()
    versions = {str(row[0]) for row in rows}
    if not versions:
        return State(
            Schema.EMPTY, f"the database is not migrated yet (this version's head: {head})"
        )
    if head in versions:
        return State(Schema.AT_HEAD, f"the schema is at {head}")
    if versions - known:
        newer = ", ".join(sorted(versions - known))
        return State(
            Schema.NEWER,
            f"the schema is at {newer}, which this version does not know (a newer release "
            f"migrated it); this version's head is {head}",
        )
    return State(Schema.BEHIND, f"the schema is at {', '.join(sorted(versions))}, behind {head}")


def wait_for_database(url: str, timeout: float, interval: float = 2.0) -> State:
    """Poll until the database answers (or ``timeout`` seconds pass); the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        state = schema_state(url)
        if state.schema is not Schema.UNREACHABLE or time.monotonic() >= deadline:
            return state
        log.info("%s; trying again in %gs", state.detail, interval)
        time.sleep(interval)


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``, one migrating process at a time."""
    engine = _engine(url)
    try:
        # Autocommit, and a migrator waits its turn between tries rather than in a statement:
        # a migration that builds an index CONCURRENTLY waits out every transaction open in
        # the database, a session idle in one or blocked in pg_advisory_lock included, so
        # either would make it (and them) wait forever.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
            while not lock.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}
            ).scalar():
                time.sleep(LOCK_POLL)
            try:
                command.upgrade(alembic_config(url), revision)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
    finally:
        engine.dispose()


# -- the command -------------------------------------------------------------------------------

SUBCOMMANDS = ("upgrade", "wait", "check")
EXIT_NOT_READY = 1  # check: behind or empty; wait: gave up
EXIT_UNREACHABLE = 2  # check, upgrade: the database cannot be reached


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medbook-migrate",
        description="Apply, check or wait for the booking database's migrations (alembic). "
        "Connection settings come from the environment (MEDBOOK_DATABASE_URL, or DB_HOST, "
        "DB_PORT, DB_USERNAME, DB_PASSWORD, DB_NAME). Without a subcommand: upgrade.",
        epilog="exit status: 0 done (or the schema is at this version's head, or newer); "
        "1 the schema is behind or empty (check), or the wait gave up; "
        "2 the database cannot be reached.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{upgrade,wait,check}")
    up = commands.add_parser(
        "upgrade",
        help="apply the migrations (the default)",
        description="Apply the migrations up to REVISION. A database already at a revision "
        "this version does not know (a newer release migrated it, e.g. before a rollback) is "
        "left as it is.",
    )
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    up.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    up.add_argument(
        "--wait-for-database",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for the database to answer before giving up (default: 0)",
    )
    wait = commands.add_parser(
        "wait",
        help="wait until the schema is at this version's head",
        description="Wait until the database answers and its schema is at this version's "
        "head revision, or at one it does not know (a newer release migrated it: a rollback "
        "must not wait forever). What it waits for is printed each time it changes.",
    )
    wait.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    wait.add_argument("--interval", type=float, default=3.0, help="seconds between checks")
    commands.add_parser(
        "check",
        help="tell where the schema stands",
        description="Print where the schema stands; exit 0 when this version may run on it.",
    )
    return parser


def _arguments(argv: Sequence[str]) -> list[str]:
    """``medbook-migrate [REVISION] [--sql]`` (the old form) is ``upgrade``."""
    if argv and argv[0] in (*SUBCOMMANDS, "-h", "--help"):
        return list(argv)
    return ["upgrade", *argv]


def _wait(url: str, timeout: float, interval: float) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        state = schema_state(url)
        if state.serves:
            print(state.detail, flush=True)
            return 0
        if state.detail != last:
            print(f"waiting: {state.detail}", flush=True)
            last = state.detail
        if time.monotonic() >= deadline:
            print(f"gave up after {timeout:g}s: {state.detail}", file=sys.stderr, flush=True)
            return EXIT_NOT_READY
        time.sleep(interval)


def _upgrade(url: str, revision: str, wait_for: float) -> int:
    state = wait_for_database(url, wait_for) if wait_for else schema_state(url)
    if state.schema is Schema.UNREACHABLE:
        log.error("%s", state.detail)
        return EXIT_UNREACHABLE
    if state.schema is Schema.NEWER:
        log.warning("%s: nothing to do (this version cannot downgrade it)", state.detail)
        return 0
    upgrade(url, revision)
    log.info("database is at revision %s: %s", revision, schema_state(url).detail)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_arguments(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = PostgresSettings().sync_url
    if args.command == "wait":
        return _wait(url, args.timeout, args.interval)
    if args.command == "check":
        state = schema_state(url)
        print(state.detail)
        if state.schema is Schema.UNREACHABLE:
            return EXIT_UNREACHABLE
        return 0 if state.serves else EXIT_NOT_READY
    if args.sql:
        command.upgrade(alembic_config(url), args.revision, sql=True)
        return 0
    return _upgrade(url, args.revision, args.wait_for_database)


if __name__ == "__main__":
    raise SystemExit(main())
