"""Database migrations (alembic), and ``medbook-migrate`` that applies them.

The migration scripts live beside this module; no ``alembic.ini`` is needed:
the configuration is built here from the same settings the services use.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from medbook.config import PostgresSettings

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medbook-migrate",
        description="Apply the booking database's migrations (alembic). Connection settings come "
        "from the environment (MEDBOOK_DATABASE_URL or DB_HOST, DB_PORT, DB_USERNAME, "
        "DB_PASSWORD, DB_NAME).",
    )
    parser.add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head)"
    )
    parser.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = PostgresSettings().sync_url
    if args.sql:
        command.upgrade(alembic_config(url), args.revision, sql=True)
    else:
        upgrade(url, args.revision)
        logging.getLogger("medbook.migrate").info("database is at revision %s", args.revision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
