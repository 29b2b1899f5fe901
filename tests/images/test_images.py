"""Every image is built (scripts/build-images, buildah) and run.

The images run as their non-root user; their entrypoints start; the booking and discount
images serve against this session's real PostgreSQL, Redis and RabbitMQ until /readyz
answers 200, carry a booking through the saga together, and drain on SIGTERM.

Skipped only when buildah cannot work here (not installed, not root, no base image and
no debootstrap); a build that fails is a failure.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import port_for
import pytest

from tests.helpers import booking_body
from tests.images import buildah
from tests.images.buildah import IMAGES, Container, entrypoint, image_config, signal_service

ROOT = Path(__file__).resolve().parents[2]
UID = "10001"


@pytest.fixture(scope="module")
def built() -> float:
    reason = buildah.unusable_reason()
    if reason is not None:
        pytest.skip(f"cannot build images here: {reason}")
    seconds = buildah.build()
    print(f"\nscripts/build-images (both images, {buildah.storage_driver()}): {seconds:.1f} s")
    return seconds


# Each image's lock file, the modules its processes run, and what must not be in it.
IMAGE_LOCK = {"booking": "requirements-booking.lock", "discount": "requirements-discount.lock"}
IMAGE_MODULES = {
    "booking": "medbook.booking.main, medbook.booking.sweep, medbook.booking.migrations",
    "discount": "medbook.discount.main, medbook_operator.main",
}
NOT_IN_IMAGE = {
    "booking": {"kopf", "redis", "hiredis", "typer", "rich", "mirakuru", "psutil", "port-for",
                "aiohttp"},
    "discount": {"asyncpg", "databases", "sqlalchemy", "alembic", "psycopg", "typer", "rich",
                 "mirakuru", "psutil", "port-for"},
}  # fmt: skip


PATCH_RELEASE_DEPENDENT: set[str] = set()  # installed or not, by the base's Python release


def _lock(image: str) -> dict[str, str]:
    """The image's lock file pins that apply on Linux (markers for other platforms skipped)."""
    pins = {}
    for line in (ROOT / IMAGE_LOCK[image]).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line)
        if not match:
            continue
        name, version, marker = match.groups()
        if marker and ("win32" in marker or "cygwin" in marker) and "!=" not in marker:
            continue
        if marker and "python_full_version < '3.11.3'" in marker:
            PATCH_RELEASE_DEPENDENT.add(re.sub(r"[-_.]+", "-", name).lower())
            continue  # depends on the base image's patch release
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_is_configured_to_run_unprivileged(built: float, image: str) -> None:
    config = image_config(image)["OCIv1"]["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == [f"medbook-{image}"]
    assert not config.get("Cmd")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    port = {"booking": "3000/tcp", "discount": "9464/tcp"}[image]
    assert set(config["ExposedPorts"]) == {port}


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_holds_only_its_locked_dependencies_and_no_build_tools(
    built: float, image: str
) -> None:
    script = (
        "import importlib.metadata as m, json, os, shutil, zoneinfo\n"
        "zoneinfo.ZoneInfo('Asia/Kolkata')\n"
        f"import {IMAGE_MODULES[image]}\n"
        "print(json.dumps({\n"
        "  'uid': os.getuid(), 'gid': os.getgid(),\n"
        "  'tools': [t for t in ('pip', 'pip3', 'gcc', 'cc', 'make') if shutil.which(t)],\n"
        "  'caches': [p for p in ('/root/.cache', '/tmp/pip', '/src') if os.path.exists(p)],\n"
        "  'writable': os.access('/opt/venv/lib', os.W_OK),\n"
        "  'dists': {d.metadata['Name']: d.version for d in m.distributions()}}))\n"
    )
    with Container(image) as container:
        code, output = container.run("python", "-c", script)
    assert code == 0, output
    facts = json.loads(output.strip().splitlines()[-1])
    assert (facts["uid"], facts["gid"]) == (int(UID), int(UID))
    assert facts["tools"] == [] and facts["caches"] == []
    assert facts["writable"] is False  # the code belongs to root
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in facts["dists"].items()}
    expected = _lock(image)
    wrong = {name: (version, installed.get(name)) for name, version in expected.items()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    assert not wrong, f"(lock, image) versions differ: {wrong}"
    assert installed.pop("medbook") == "0.1.0"
    extra = set(installed) - set(expected) - PATCH_RELEASE_DEPENDENT
    assert not extra, f"installed beyond the image's lock file: {extra}"
    assert not NOT_IN_IMAGE[image] & set(installed)
    assert not {"pip", "setuptools"} & set(installed)


@pytest.mark.parametrize(
    ("image", "command", "expected"),
    [
        ("booking", ("medbook-booking", "--help"), "usage: medbook-booking"),
        ("booking", ("medbook-migrate", "--help"), "usage: medbook-migrate"),
        ("booking", ("medbook-cleanup", "--help"), "usage: medbook-cleanup"),
        ("discount", ("medbook-discount", "--help"), "usage: medbook-discount"),
    ],
)
def test_each_command_runs_in_its_image(
    built: float, image: str, command: tuple[str, ...], expected: str
) -> None:
    with Container(image) as container:
        code, output = container.run(*command)
    assert code == 0, output
    assert expected in output


def test_the_operator_runs_from_the_discount_image(built: float) -> None:
    with Container("discount") as container:
        code, output = container.run("medbook-operator")
    # Outside a cluster it stops at once, and says why.
    assert code != 0
    assert "cannot tell which namespace to watch" in output


def test_the_one_shot_commands_run_against_the_database(built: float, database_url: str) -> None:
    env = {"MEDBOOK_DATABASE_URL": database_url}
    with Container("booking") as container:
        code, output = container.run("medbook-migrate", env=env)
        assert code == 0, output
        assert "database is at revision head" in output
        code, output = container.run("medbook-cleanup", "--pending-timeout", "60", env=env)
        assert code == 0, output
        assert "sweep rejected 0 booking(s)" in output


def _wait_ready(
    url: str, process: subprocess.Popen[str], log: Path, timeout: float = 90
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = httpx.get(url, timeout=3)
            if response.status_code == 200:
                return response
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready ({last!r}):\n{log.read_text()[-3000:]}")


def test_the_images_serve_the_saga_against_real_servers(
    built: float, database_url: str, redis_url: str, amqp_url: str, tmp_path: Path
) -> None:
    http_port, metrics_port = port_for.select_random(), port_for.select_random()
    common = {
        "MEDBOOK_DATABASE_URL": database_url,
        "MEDBOOK_REDIS_URL": redis_url,
        "MEDBOOK_RABBITMQ_URL": amqp_url,
        "MEDBOOK_SHUTDOWN_GRACE": "10",
    }
    booking_log, discount_log = tmp_path / "booking.log", tmp_path / "discount.log"
    with Container("booking") as booking, Container("discount") as discount:
        # The images' own entrypoints (nothing given after the container).
        assert entrypoint("booking") == ["medbook-booking"]
        api = booking.start(
            env={**common, "MEDBOOK_HOST": "127.0.0.1", "MEDBOOK_PORT": str(http_port)},
            log=booking_log,
        )
        worker = discount.start(
            env={
                **common,
                "MEDBOOK_METRICS_HOST": "127.0.0.1",
                "MEDBOOK_METRICS_PORT": str(metrics_port),
            },
            log=discount_log,
        )
        base = f"http://127.0.0.1:{http_port}"
        ready = _wait_ready(f"{base}/readyz", api, booking_log)
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        _wait_ready(f"http://127.0.0.1:{metrics_port}/readyz", worker, discount_log)

        created = httpx.post(f"{base}/booking", json=booking_body(), timeout=10)
        assert created.status_code == 201, created.text
        booking_id = created.json()["bookingId"]
        deadline = time.monotonic() + 30
        status = "PENDING"
        while status == "PENDING" and time.monotonic() < deadline:
            status = httpx.get(f"{base}/booking/{booking_id}", timeout=5).json()["status"]
            time.sleep(0.2)
        assert status == "CONFIRMED", discount_log.read_text()[-2000:]

        # SIGTERM: each service drains and exits 0 (buildah run passes the code on).
        for process, name, log in (
            (api, "medbook-booking", booking_log),
            (worker, "medbook-discount", discount_log),
        ):
            signal_service(process, name, signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()[-2000:]
            assert "SIGTERM received" in log.read_text()
    lines = booking_log.read_text().splitlines()
    assert any(line.startswith("{") and '"service": "medbook-booking"' in line for line in lines)
