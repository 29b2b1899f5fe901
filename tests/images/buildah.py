"""Build the images with scripts/build-images and run commands in them with buildah.

``buildah from`` makes a working container of an image; ``buildah run`` runs a command
in it as the image's USER, on the host network, so a process in the image reaches the
tests' servers on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-images"
TAG = "test"
IMAGES = ("booking", "discount")


def unusable_reason() -> str | None:
    """Why buildah cannot build and run images here, or None when it can."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (scripts/install-system-deps --test installs it)"
    if os.geteuid() != 0:
        return "building and running images with buildah here needs root"
    probe = subprocess.run(
        ["buildah", "--storage-driver", storage_driver(), "images"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"buildah cannot open its storage: {probe.stderr.strip()[-300:]}"
    if shutil.which("debootstrap") is None and not base_image_present():
        return "no base image in buildah's storage and no debootstrap to make one"
    return None


def storage_driver() -> str:
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--storage-driver"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def buildah(*args: str, check: bool = True, timeout: float = 300) -> str:
    result = subprocess.run(
        ["buildah", "--storage-driver", storage_driver(), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def base_image_present() -> bool:
    base = next(
        line.split()[1]
        for line in (ROOT / "Dockerfile.booking").read_text().splitlines()
        if line.upper().startswith("FROM ")
    )
    return bool(buildah("images", "--quiet", base, check=False).strip())


def build(timeout: float = 1500) -> float:
    """Build both images tagged TAG; return the seconds it took."""
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--tag", TAG],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-images failed:\n{result.stderr[-4000:]}")
    return time.monotonic() - started


def image_config(image: str) -> dict[str, Any]:
    return json.loads(buildah("inspect", "--type", "image", f"localhost/medbook-{image}:{TAG}"))


@dataclass
class Container:
    """A working container of one of the images."""

    image: str
    id: str = ""
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> Container:
        self.id = buildah("from", "--pull=never", f"localhost/medbook-{self.image}:{TAG}").strip()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                stop_tree(process)
        buildah("rm", self.id, check=False)

    def _command(self, command: tuple[str, ...], env: dict[str, str]) -> list[str]:
        args = ["buildah", "--storage-driver", storage_driver(), "run", "--network", "host"]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        return [*args, self.id, "--", *command]

    def run(self, *command: str, env: dict[str, str] | None = None, timeout: float = 120):
        """Run ``command`` to its end; return (exit code, output)."""
        result = subprocess.run(
            self._command(command, env or {}),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
        )
        return result.returncode, result.stdout + result.stderr

    def start(self, *command: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
        """Start ``command`` in the background; with none, the image's ENTRYPOINT and CMD
        (``buildah run`` itself always wants the command spelled out)."""
        if not command:
            config = image_config(self.image)["OCIv1"]["config"]
            command = (*config["Entrypoint"], *(config.get("Cmd") or []))
        handle = log.open("w")
        process = subprocess.Popen(
            self._command(command, env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
        )
        handle.close()
        self.processes.append(process)
        return process


def entrypoint(image: str) -> list[str]:
    return image_config(image)["OCIv1"]["config"]["Entrypoint"]


def signal_service(process: subprocess.Popen[str], name: str, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` to the service ``name`` running under ``buildah run`` (buildah itself
    does not forward signals); return the service's pid on the host."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmdline = child.cmdline()
                    if cmdline[0].startswith("buildah"):
                        continue  # buildah's own chroot helpers
                    if any(part.endswith(name) for part in cmdline[:2]):
                        child.send_signal(sig)
                        return child.pid
        time.sleep(0.1)
    raise AssertionError(f"no {name} process under buildah run {process.pid}")


def stop_tree(process: subprocess.Popen[str]) -> None:
    """Stop ``buildah run`` and what runs under it: killing buildah alone leaves its chroot
    helper and the service running, re-parented to init. The service gets SIGTERM first."""
    try:
        root = psutil.Process(process.pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        tree = []
    services = []
    for member in tree:
        with contextlib.suppress(psutil.Error):
            if not member.cmdline()[0].startswith("buildah"):
                member.terminate()
                services.append(member)
    psutil.wait_procs(services, timeout=15)
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait(10)
