"""Where a running ``medbook dev`` is: a small file in its data folder, read by every command.

``medbook dev`` writes ``<data folder>/stack.json`` as it starts (its pid, and
the URLs of the API, the worker's metrics, PostgreSQL, Redis and RabbitMQ once
they are up) and deletes it when it stops. A ``medbook`` command that is given
no flag and no variable for a server reads it: from the folder that
``MEDBOOK_DEV_DATA`` names, else from the nearest ``.data`` folder in the
current directory or above it (the checkout ``make dev`` ran in). A file left
by a stack that died is recognised (its pid is gone, or belongs to a later
process) and ignored.

This module is read on every start of the ``medbook`` command, which may be
installed without the dev stack's dependencies: it imports only the standard
library (a process is told apart from a later one with the same pid by its
start time in ``/proc``, Linux as the dev stack itself).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

FILE_NAME: Final = "stack.json"
DATA_ENV: Final = "MEDBOOK_DEV_DATA"
DEFAULT_DATA_DIR: Final = ".data"


@dataclass(frozen=True)
class StackInfo:
    """A ``medbook dev`` process and what it serves (the URLs are empty while it starts)."""

    pid: int
    started: int  # the process's start time (/proc/PID/stat, clock ticks), against pid reuse
    data_dir: str
    state: str = "starting"  # starting, running
    api_url: str = ""
    worker_metrics_url: str = ""
    database_url: str = ""
    redis_url: str = ""
    amqp_url: str = ""
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.data_dir) / FILE_NAME

    def alive(self) -> bool:
        """Is the process that wrote the file still running (and the same process)?"""
        state = _stat(self.pid)
        return state is not None and state[1] == self.started and state[0] not in "ZX"

    def exports(self) -> dict[str, str]:
        """The variables that point a shell (and every ``medbook`` command) at this stack."""
        return {
            "MEDBOOK_API_URL": self.api_url,
            "MEDBOOK_WORKER_METRICS_URL": self.worker_metrics_url,
            "MEDBOOK_DATABASE_URL": self.database_url,
            "MEDBOOK_REDIS_URL": self.redis_url,
            "MEDBOOK_RABBITMQ_URL": self.amqp_url,
        }


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) ": state is field 3
    return fields[0], int(fields[19])  # starttime is field 22


def this_process(data_dir: Path) -> StackInfo:
    """The record of a stack run by the current process."""
    state = _stat(os.getpid())
    assert state is not None  # our own /proc entry
    return StackInfo(pid=os.getpid(), started=state[1], data_dir=str(data_dir.absolute()))


def write(info: StackInfo) -> None:
    """Write atomically: a reader never sees half a file."""
    path = info.path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(info), indent=2) + "\n")
    partial.replace(path)


def remove(info: StackInfo) -> None:
    """Delete the file if it is still this stack's."""
    current = read(Path(info.data_dir))
    if current is not None and (current.pid, current.started) == (info.pid, info.started):
        with contextlib.suppress(FileNotFoundError):
            info.path.unlink()


def read(data_dir: Path) -> StackInfo | None:
    """The record in this data folder, alive or not; None when there is none (or it is bad)."""
    try:
        data = json.loads((data_dir / FILE_NAME).read_text())
        return StackInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def data_dirs(start: Path | None = None) -> list[Path]:
    """Where to look: ``MEDBOOK_DEV_DATA``, else ``.data`` here and in every parent folder."""
    named = os.environ.get(DATA_ENV)
    if named:
        return [Path(named).absolute()]
    here = (start or Path.cwd()).absolute()
    return [folder / DEFAULT_DATA_DIR for folder in (here, *here.parents)]


def find(start: Path | None = None) -> StackInfo | None:
    """The running stack the commands should use, None when there is none."""
    for folder in data_dirs(start):
        info = read(folder)
        if info is not None and info.state == "running" and info.alive():
            return info
    return None
