"""What each container of the charts does, as far as a pretend cluster can tell.

``tests/charts/cluster.py`` runs pods without running their images. For each
container it picks a :class:`Program` by the container's command: a program says
what the real process waits for before it is ready (or done), and what it leaves
behind (a migrated schema). The rules follow the real code:

- ``medbook-migrate wait`` (the booking pods' init container) ends once the
  database answers and its schema is at the image's revision;
- ``medbook-migrate`` (the migrations Job) waits for the database to answer,
  then migrates it to the image's revision;
- the booking API (the image's default command) is ready once the database
  answers (its readiness probe is ``/readyz?check=database``);
- the discount worker is ready once Redis and RabbitMQ answer (``/readyz``);
- ``medbook-operator`` is ready at once (it needs the API server only);
- the ``helm test`` pod succeeds once the booking Service has a ready pod;
- the in-chart servers' images (and their init containers) are ready at once;
  PostgreSQL and RabbitMQ keep the password they initialised their data with (in
  the pod's PersistentVolumeClaim), Redis takes its password at every start, and
  a client with another password waits ("password authentication failed").

A container nothing here knows fails, naming its command: a new kind of pod gets
a rule before a test relies on it. A test can put real code in place of a rule
(``Cluster(programs=...)``): the operator and its uninstall hook run for real in
``tests/operator/test_helm_uninstall.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from tests.charts.cluster import Cluster


@dataclass(frozen=True)
class Phase:
    state: str  # "waiting", "ready", "succeeded" or "failed"
    reason: str = ""


READY = Phase("ready")
SUCCEEDED = Phase("succeeded")


def waiting(reason: str) -> Phase:
    return Phase("waiting", reason)


def failed(reason: str) -> Phase:
    return Phase("failed", reason)


@dataclass
class Box:
    """A container of a pod, with its environment as the kubelet builds it."""

    cluster: Cluster
    namespace: str
    pod: str  # the pod's name
    owner: str  # e.g. "Deployment/medbook-booking"
    spec: dict[str, Any]
    env: dict[str, str]
    init: bool

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def image(self) -> str:
        return str(self.spec["image"])

    @property
    def command(self) -> list[str]:
        return [str(a) for a in [*(self.spec.get("command") or []), *(self.spec.get("args") or [])]]

    @property
    def ours(self) -> bool:
        """One of the medbook images (not a third-party server's)."""
        return self.image.rsplit("/", 1)[-1].startswith("medbook-")

    @property
    def claims(self) -> list[str]:
        """The PersistentVolumeClaims the pod mounts."""
        return [
            volume["persistentVolumeClaim"]["claimName"]
            for volume in self.cluster.pod_volumes(self.pod)
            if "persistentVolumeClaim" in volume
        ]

    def reachable(self, host: str | None, password: str | None = None) -> Phase | None:
        """``None`` when ``host`` answers (and takes ``password``), else why the process waits."""
        if not host:
            return waiting("no host configured")
        if not self.cluster.reachable(self.namespace, host):
            return waiting(f"{host} does not answer")
        expected = self.cluster.server_password(self.namespace, host)
        if password is not None and expected is not None and password != expected:
            return waiting(f"{host}: password authentication failed")
        return None


@dataclass
class Program:
    """A container's process. ``poll`` is called every tick until the pod goes."""

    box: Box
    started: bool = field(default=False, init=False)

    async def poll(self) -> Phase:
        raise NotImplementedError

    async def stop(self) -> None:
        """The pod is being deleted (SIGTERM)."""


class ThirdParty(Program):
    """An in-chart server's image (PostgreSQL, Redis, RabbitMQ) or its init container."""

    async def poll(self) -> Phase:
        return SUCCEEDED if self.box.init else READY

    def password(self) -> str | None:
        """The password clients must give (``None``: any, or none)."""
        return None


class DataServer(ThirdParty):
    """PostgreSQL or RabbitMQ: the password given when the data was initialised is the one.

    ``POSTGRES_PASSWORD`` and ``RABBITMQ_DEFAULT_PASS`` are read only when the server
    initialises an empty data directory; later starts keep the data's own credentials.
    """

    variable = ""

    async def poll(self) -> Phase:
        data = self.box.cluster.volume_data(self.box)
        data.setdefault("password", self.box.env.get(self.variable, ""))
        return READY

    def password(self) -> str | None:
        return self.box.cluster.volume_data(self.box).get("password")


class Postgres(DataServer):
    variable = "POSTGRES_PASSWORD"


class RabbitMQ(DataServer):
    variable = "RABBITMQ_DEFAULT_PASS"


class Redis(ThirdParty):
    """Redis takes its password at every start (``requirepass`` in a config it writes)."""

    def password(self) -> str | None:
        return self.box.env.get("REDIS_PASSWORD")


def _database(box: Box) -> tuple[str, Phase | None]:
    """The database's host, and why the process waits for it (``None``: it may go on)."""
    host = box.env.get("DB_HOST", "")
    return host, box.reachable(host, box.env.get("DB_PASSWORD"))


class Migrate(Program):
    """``medbook-migrate`` (upgrade): the database to the image's revision."""

    async def poll(self) -> Phase:
        host, blocked = _database(self.box)
        if blocked:
            return blocked
        self.box.cluster.migrate(self.box.namespace, host, self.box.image)
        return SUCCEEDED


class WaitForSchema(Program):
    """``medbook-migrate wait``: until the schema is at the image's revision."""

    async def poll(self) -> Phase:
        host, blocked = _database(self.box)
        if blocked or self.box.cluster.migrated(self.box.namespace, host, self.box.image):
            return blocked or SUCCEEDED
        return waiting(f"the schema of {host} is not at the revision of {self.box.image} yet")


class BookingApi(Program):
    async def poll(self) -> Phase:
        return _database(self.box)[1] or READY


class DiscountWorker(Program):
    async def poll(self) -> Phase:
        redis = self.box.env.get("REDIS_HOST")
        rabbit = urlsplit(self.box.env.get("MEDBOOK_RABBITMQ_URL", ""))
        return (
            self.box.reachable(redis, self.box.env.get("REDIS_PASSWORD"))
            or self.box.reachable(rabbit.hostname, unquote(rabbit.password or ""))
            or READY
        )


class Operator(Program):
    """``medbook-operator`` without real code: ready (it needs the API server only)."""

    async def poll(self) -> Phase:
        return READY


class SmokeTest(Program):
    """The ``helm test`` pod: books through the booking Service."""

    async def poll(self) -> Phase:
        url = urlsplit(self.box.env.get("MEDBOOK_API_URL", ""))
        return self.box.reachable(url.hostname) or SUCCEEDED


class Unknown(Program):
    async def poll(self) -> Phase:
        return failed(f"no program models {self.box.command or self.box.image!r}")


ProgramFactory = Callable[[Box], Program]


def default_program(box: Box) -> Program:
    command = box.command
    if not box.ours:
        image = box.image.rsplit("/", 1)[-1].split(":")[0]
        servers: dict[str, type[ThirdParty]] = {
            "postgres": Postgres, "rabbitmq": RabbitMQ, "redis": Redis,
        }  # fmt: skip
        return servers.get(image, ThirdParty)(box) if not box.init else ThirdParty(box)
    if command[:1] == ["medbook-migrate"]:
        if command[1:2] == ["wait"]:
            return WaitForSchema(box)
        if command[1:2] in ([], ["upgrade"]):
            return Migrate(box)
    if not command and "medbook-booking" in box.image:
        return BookingApi(box)
    if not command and "medbook-discount" in box.image:
        return DiscountWorker(box)
    if command == ["medbook-operator"]:
        return Operator(box)
    if any(part.endswith("smoke_test.py") for part in command):
        return SmokeTest(box)
    return Unknown(box)
