"""`medbook dev`'s supervision, on real processes: a crashed service comes back with backoff, a
crash loop is reported and left stopped while the rest keeps running; options are checked
against the services' own bounds before anything starts."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medbook.cli.main import app
from medbook.devstack.stack import ServiceProcess
from medbook.devstack.supervisor import Supervisor
from tests.cli.conftest import explain


def service(tmp_path: Path, name: str, code: str) -> ServiceProcess:
    return ServiceProcess(name, [sys.executable, "-c", code], {}, tmp_path / f"{name}.log")


def supervise(supervisor: Supervisor, until: float, *, stop_when_given_up: bool = False) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline and not (stop_when_given_up and supervisor.given_up):
        supervisor.check()
        time.sleep(0.02)


def test_a_crash_loop_is_left_stopped_and_the_rest_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crasher = service(tmp_path, "crasher", "raise SystemExit(3)")
    steady = service(tmp_path, "steady", "import time; time.sleep(60)")
    supervisor = Supervisor(stable_after=2.0, first_delay=0.05, max_delay=0.2, give_up_after=4)
    crasher.start()
    steady.start()
    assert steady.process is not None
    steady_pid = steady.process.pid
    supervisor.watch([crasher, steady])
    try:
        with caplog.at_level(logging.INFO, logger="medbook.devstack.supervisor"):
            supervise(supervisor, until=10.0, stop_when_given_up=True)
        supervise(supervisor, until=0.3)  # and nothing happens after that
        assert supervisor.given_up == ["crasher"]
        assert steady.running and steady.process.pid == steady_pid  # never touched
        lines = [r.getMessage() for r in caplog.records]
        restarts = [line for line in lines if "restarting it" in line]
        assert len(restarts) == 3  # restarted 3 times, then given up at the 4th exit
        assert restarts[0].startswith("crasher exited (exit 3) after ")
        assert "restarting it in 0.05s (restart 1)" in restarts[0]
        assert "restarting it in 0.2s (restart 3" in restarts[2]  # 0.05, 0.1, then the cap
        assert "quick exits in a row" in restarts[-1]
        assert any(
            "crasher exited (exit 3) 4 times in a row" in line and "left stopped" in line
            for line in lines
        )
    finally:
        steady.stop()
        crasher.stop()


def test_a_killed_service_is_restarted_after_a_delay_that_grows_only_while_it_keeps_dying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sleeper = service(tmp_path, "sleeper", "import time; time.sleep(60)")
    supervisor = Supervisor(stable_after=0.2, first_delay=0.1, max_delay=1.0, give_up_after=3)
    sleeper.start()
    supervisor.watch([sleeper])
    try:
        with caplog.at_level(logging.INFO, logger="medbook.devstack.supervisor"):
            for _ in range(4):  # each kill after a stable run: never a crash loop
                supervise(supervisor, until=0.45)
                assert sleeper.process is not None
                sleeper.process.kill()
            supervise(supervisor, until=0.3)
        assert sleeper.running and supervisor.given_up == []
        exits = [r.getMessage() for r in caplog.records if "exited" in r.getMessage()]
        assert len(exits) == 4
        assert all("killed by SIGKILL" in line and "in 0.1s" in line for line in exits)
        assert "(restart 4)" in exits[-1]
    finally:
        sleeper.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pending-timeout", "10"], "--pending-timeout"),  # the worker's policy needs >= 30
        (["--http-port", "70000"], "--http-port"),
        (["--sweep-every", "0"], "--sweep-every"),
        (["--ready-timeout", "-1"], "--ready-timeout"),
    ],
)
def test_options_out_of_the_services_bounds_are_refused_before_anything_starts(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["dev", "--data-dir", str(tmp_path / "data"), *argv])
    assert result.exit_code == 2, explain(result)
    assert message in result.output
    assert not (tmp_path / "data").exists()


def test_dev_env_without_a_running_stack_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "--data-dir", str(tmp_path), "env"])
    assert result.exit_code == 1
    assert "no medbook dev is running" in result.output


class FakeUnit:
    """A unit whose exits the test decides, on a clock the test moves."""

    name = "fake"
    log_path = Path("fake.log")

    def __init__(self) -> None:
        self.running = True
        self.starts = 0

    def start(self) -> None:
        self.running, self.starts = True, self.starts + 1

    def exit_status(self) -> str:
        return "exit 1"


def test_only_exits_soon_after_a_start_count_toward_giving_up() -> None:
    now = [0.0]
    unit = FakeUnit()
    supervisor = Supervisor(
        stable_after=10, first_delay=1, max_delay=30, give_up_after=3, clock=lambda: now[0]
    )
    supervisor.watch([unit])

    def exit_after(seconds: float) -> None:
        now[0] += seconds
        unit.running = False
        supervisor.check()  # notices the exit, schedules the restart
        now[0] += 60
        supervisor.check()  # restarts it

    exit_after(100)  # a long run, then a crash: not part of a crash loop
    exit_after(1)
    exit_after(1)
    assert supervisor.given_up == [] and unit.starts == 3
    exit_after(1)  # the third quick exit in a row
    assert supervisor.given_up == ["fake"] and unit.starts == 3
