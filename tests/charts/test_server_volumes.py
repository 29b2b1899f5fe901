"""The in-chart servers start again after their pod restarts on a volume the kubelet manages.

Each restart mounts the data volume as the kubelet does (``kubelet_volumes``: the
rendered pod's ``fsGroup`` and ``fsGroupChangePolicy``), runs the rendered init
containers' own script on it (paths mapped to a temporary directory), and then
asks what the server asks: Erlang itself (the broker's runtime) reads the
cookie, and PostgreSQL's rule for its data directory is applied. The chart as it
was (fsGroup at every mount, the cookie made by the broker on its volume) fails
at the first restart, as it did on a real cluster.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.charts import kubelet_volumes
from tests.charts.rendering import one, pod_template, render, scenarios

COOKIE = "/var/lib/rabbitmq/.erlang.cookie"  # the image's HOME is /var/lib/rabbitmq


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Erlang:
    """Erlang/OTP's own check of a cookie file (what the broker runs when it starts)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()

    def reads_cookie(self, home: Path) -> tuple[bool, str]:
        done = subprocess.run(
            ["erl", "-noshell", "-sname", f"probe{uuid.uuid4().hex[:6]}@localhost",
             "-eval", 'io:format("cookie ~s~n", [erlang:get_cookie()]), halt().'],
            env={**os.environ, "HOME": str(home), "ERL_EPMD_PORT": str(self.port),
                 "ERL_EPMD_ADDRESS": "127.0.0.1"},
            cwd=self.workdir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        subprocess.run(["epmd", "-port", str(self.port), "-kill"], capture_output=True, timeout=30)


@pytest.fixture
def erlang(tmp_path: Path) -> Iterator[Erlang]:
    if shutil.which("erl") is None:
        pytest.skip("Erlang/OTP is not installed (scripts/install-system-deps --test)")
    runtime = Erlang(tmp_path)
    yield runtime
    runtime.stop()


def _statefulset(server: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render("medbook", values or {}), "StatefulSet", f"medbook-{server}")


# -- the chart's settings ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", scenarios("medbook"), ids=lambda s: s.id)
def test_fsgroup_is_applied_to_a_claim_only_when_its_root_does_not_match(scenario) -> None:
    for manifest in render("medbook", scenario.values):
        if manifest.kind != "StatefulSet" or not manifest.doc["spec"].get("volumeClaimTemplates"):
            continue
        security = pod_template(manifest.doc)["spec"]["securityContext"]
        assert "fsGroup" in security, manifest.name
        assert security["fsGroupChangePolicy"] == "OnRootMismatch", manifest.name


def test_the_erlang_cookie_comes_from_the_releases_secret() -> None:
    manifests = render("medbook")
    pod = pod_template(one(manifests, "StatefulSet", "medbook-rabbitmq"))["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "erlang-cookie"]
    assert volume["secret"]["secretName"] == "medbook-rabbitmq"
    assert volume["secret"]["items"] == [{"key": "erlang-cookie", "path": ".erlang.cookie"}]
    [init] = pod["initContainers"]
    assert init["securityContext"]["runAsUser"] == pod["securityContext"]["runAsUser"]
    [broker] = pod["containers"]
    assert "erlang-cookie" not in {m["name"] for m in broker["volumeMounts"]}
    secret = one(manifests, "Secret", "medbook-rabbitmq")["data"]
    cookie = base64.b64decode(secret["erlang-cookie"]).decode()
    assert len(cookie) == 32 and cookie.isalnum()


# -- restarts, played on a real directory -----------------------------------------------------


class Pod:
    """A server's pod on a temporary directory: its volumes, mounted as the kubelet would."""

    def __init__(self, statefulset: dict[str, Any], secret: dict[str, Any], root: Path) -> None:
        self.spec = pod_template(statefulset)["spec"]
        self.secret = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        self.root = root
        self.volumes = {}
        for volume in [*self.spec.get("volumes", []), {"name": "data"}]:
            path = root / volume["name"]
            path.mkdir(mode=0o755, exist_ok=True)  # a new volume: root's, 0755
            self.volumes[volume["name"]] = (path, volume)

    def start(self) -> None:
        """Mount every volume, then run the init containers' scripts on them."""
        security = self.spec["securityContext"]
        for path, volume in self.volumes.values():
            if "secret" in volume:
                files = {i["path"]: self.secret[i["key"]] for i in volume["secret"]["items"]}
                kubelet_volumes.secret_volume(
                    path, files, volume["secret"].get("defaultMode", 0o644), security
                )
            elif "emptyDir" not in volume:
                kubelet_volumes.mount(path, security)
        for init in self.spec.get("initContainers") or []:
            assert init["command"][:2] == ["sh", "-c"], init["name"]
            script = init["command"][2]
            mounts = sorted(init["volumeMounts"], key=lambda m: -len(m["mountPath"]))
            for mount in mounts:
                script = script.replace(mount["mountPath"], str(self.volumes[mount["name"]][0]))
            subprocess.run(["sh", "-c", script], check=True, timeout=30)

    def path(self, in_container: str, volume: str = "data") -> Path:
        [mount] = [
            m for c in self.spec["containers"] for m in c["volumeMounts"] if m["name"] == volume
        ]
        return self.volumes[volume][0] / Path(in_container).relative_to(mount["mountPath"])


def _rabbitmq_pod(root: Path, values: dict[str, Any] | None = None) -> Pod:
    manifests = render("medbook", values or {})
    return Pod(
        one(manifests, "StatefulSet", "medbook-rabbitmq"),
        one(manifests, "Secret", "medbook-rabbitmq"),
        root,
    )


def _broker_starts(pod: Pod, erlang: Erlang) -> tuple[bool, str]:
    """What RabbitMQ does first: make a cookie if there is none, and have Erlang read it."""
    cookie = pod.path(COOKIE)
    if not cookie.exists():  # the broker writes a new one, owner-only
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
    return erlang.reads_cookie(cookie.parent)


def test_rabbitmq_starts_again_after_restarts(tmp_path: Path, erlang: Erlang) -> None:
    pod = _rabbitmq_pod(tmp_path)
    for start in range(3):
        pod.start()
        started, output = _broker_starts(pod, erlang)
        assert started, f"start {start + 1}: {output}"
        assert stat.S_IMODE(pod.path(COOKIE).stat().st_mode) == 0o400
    assert f"cookie {pod.secret['erlang-cookie']}" in output  # the Secret's, not the broker's


def test_rabbitmq_starts_on_a_volume_whose_ownership_is_reapplied(
    tmp_path: Path, erlang: Erlang
) -> None:
    """A restored or moved volume gets the recursive change even with OnRootMismatch."""
    pod = _rabbitmq_pod(tmp_path)
    pod.start()
    pod.volumes["data"][0].chmod(0o755)  # the root no longer matches
    pod.start()
    started, output = _broker_starts(pod, erlang)
    assert started, output


def test_the_chart_as_it_was_crash_loops_after_a_restart(tmp_path: Path, erlang: Erlang) -> None:
    statefulset = copy.deepcopy(_statefulset("rabbitmq"))
    spec = pod_template(statefulset)["spec"]
    del spec["securityContext"]["fsGroupChangePolicy"], spec["initContainers"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "erlang-cookie"]
    pod = Pod(statefulset, {}, tmp_path)
    pod.start()
    assert _broker_starts(pod, erlang)[0]  # the first start is fine
    pod.start()  # the pod is rescheduled: fsGroup again
    started, output = _broker_starts(pod, erlang)
    assert not started
    assert f"Cookie file {pod.path(COOKIE)} must be accessible by owner only" in output


def _postgres_refuses(data_directory: Path) -> str | None:
    """PostgreSQL's check of its data directory (miscinit.c, checkDataDir), as it words it."""
    mode = stat.S_IMODE(data_directory.stat().st_mode)
    if mode & 0o027:  # PG_MODE_MASK_GROUP: group write, or anything for others
        return (
            f'data directory "{data_directory}" has invalid permissions: permissions should '
            "be u=rwx (0700) or u=rwx,g=rx (0750)"
        )
    return None


@pytest.mark.parametrize("policy", ["chart", "Always"])
def test_the_postgresql_data_directory_stays_private_across_restarts(
    tmp_path: Path, policy: str
) -> None:
    statefulset = copy.deepcopy(_statefulset("postgresql"))
    spec = pod_template(statefulset)["spec"]
    if policy == "Always":  # the chart as it was
        del spec["securityContext"]["fsGroupChangePolicy"]
    [server] = spec["containers"]
    pgdata = next(e["value"] for e in server["env"] if e["name"] == "PGDATA")
    pod = Pod(statefulset, {}, tmp_path)
    pod.start()
    data_directory = pod.path(pgdata)
    assert data_directory.parent == pod.volumes["data"][0]  # below the root fsGroup opens
    data_directory.mkdir(mode=0o700)  # initdb
    (data_directory / "PG_VERSION").write_text("15\n")
    pod.start()  # a restart
    refusal = _postgres_refuses(data_directory)
    if policy == "chart":
        assert refusal is None
    else:  # only the image's entrypoint (chmod 0700 $PGDATA) would save this one
        assert refusal is not None and "has invalid permissions" in refusal
