"""The local stack's processes end with it, however it ends.

``medbook dev`` can die without a chance to stop what it started: a SIGKILL,
its process group killed, a closed terminal. Two mechanisms cover that:

- every process the stack starts asks the kernel for a signal when the
  stack's process dies (``PR_SET_PDEATHSIG``, set between fork and exec by
  :func:`die_with_parent`): the servers get the signal their own ``stop()``
  sends, so they shut down cleanly;
- a watchdog (``python -m medbook.devstack.lifetime TAG``), in a session of
  its own so that a signal to the stack's group does not reach it, holds a
  pipe from the stack: when the pipe closes it waits for the processes that
  carry the stack's tag in their environment to go, then kills what is left.
  That catches what detached from the process tree: Erlang's epmd daemon,
  which outlives its RabbitMQ node by design.

The tag is the stack's data folder, so a later start can also find, by the
same tag, what an earlier run of that folder left behind (:func:`tagged`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Final

import psutil  # type: ignore[import-untyped]  # no stubs in the lock (types-psutil)

TAG_ENV: Final = "MEDBOOK_DEV_STACK"
"""Environment variable naming the stack (its data folder) in every process it starts."""

_PR_SET_PDEATHSIG: Final = 1
_DAEMONS: Final = frozenset({"epmd"})  # never exit by themselves
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(signum: int, *, new_session: bool = False) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``signum`` when the process that starts it dies.

    The kernel sends it when the *thread* that forked the child ends, so start
    children from a thread that lives as long as the process (the main one).
    It runs between fork and exec: like every ``preexec_fn`` it is only safe in
    a process with no other thread running (no rich live display, for one).
    """
    parent = os.getpid()

    def preexec() -> None:
        if new_session:
            os.setsid()
        if _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)  # the parent died before the prctl: the kernel would never tell

    return preexec


# The data servers rewrite their process title over their environment (redis-server,
# postgres), so the tag is gone from theirs; they run in their data folder, though.
_SERVERS: Final = frozenset({"postgres", "redis-server", "beam.smp"})


def tagged(tag: str, *, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Living processes of the stack whose data folder is ``tag``: those whose environment
    names it, and the data servers running in it (zombies are not ours to reap)."""
    skip = {os.getpid(), *exclude}
    folder = tag.rstrip("/") + "/"
    found = []
    for proc in psutil.process_iter(["environ", "status", "name"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid in skip or proc.info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            env = proc.info.get("environ") or {}
            if env.get(TAG_ENV) == tag or (
                proc.info.get("name") in _SERVERS and (proc.cwd() + "/").startswith(folder)
            ):
                found.append(proc)
    return found


def name_of(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return str(proc.name())
    return "?"


def stop_processes(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; returns once all of them are gone."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def watch(tag: str, grace: float) -> None:
    """Block until standard input closes, then end every process of the stack."""
    with contextlib.suppress(OSError):
        sys.stdin.buffer.read()
    deadline = time.monotonic() + grace
    while True:
        left = tagged(tag)
        if not left:
            return
        # The servers got their stop signal from the kernel: give them time to stop cleanly;
        # a daemon left alone (epmd) is only waited for as long as its server lives.
        if all(name_of(p) in _DAEMONS for p in left) or time.monotonic() > deadline:
            stop_processes(left, grace=5)
            return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m medbook.devstack.lifetime TAG GRACE_SECONDS", file=sys.stderr)
        return 2
    # The stack's terminal closing (SIGHUP) or Ctrl-C must not end the watchdog first.
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    watch(args[0], float(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
