"""Redis with Sentinel: lose the master, and keep the day's quota exact.

The worker and the CLI are given the sentinels (``redis+sentinel://...``) and
follow a failover by themselves. Redis replicates asynchronously, so a
promoted replica can lack the master's last writes; the worker counts a quota
write only once a replica acknowledged it (``WAIT``, replica_ack.py), so no
result is ever published from a write a failover can lose.

A Redis Cluster is refused, with the reason (redis_address.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from medbook.cli.main import app as medbook_cli
from medbook.config import DiscountSettings, RedisSettings
from medbook.devstack.servers import RedisServer
from medbook.discount.worker import DiscountWorker
from medbook.redis_address import RedisClusterUnsupported
from tests.failover.conftest import DRILL_LIMIT, HaBackends
from tests.failover.drill import Drill
from tests.helpers import Infra, ProcessServices

pytestmark = [pytest.mark.failover, pytest.mark.slow]


async def test_drill_master_killed_sentinels_promote_the_replica(
    ha_backends: HaBackends, ha_infra: Infra, ha_services: ProcessServices, tmp_path: Path
) -> None:
    group = ha_backends.redis

    async def fault(drill: Drill) -> None:
        old = await asyncio.to_thread(group.kill_master)
        drill.note(f"SIGKILL the master {old.data_dir.name}")
        new = await asyncio.to_thread(group.wait_failover, old)
        drill.note(f"the sentinels promoted {new.data_dir.name}")
        await asyncio.to_thread(group.restart, old)
        drill.note(f"{old.data_dir.name} back, as the new master's replica")

    drill = Drill("redis: master killed, sentinels fail over", ha_infra, ha_services,
                  limit=DRILL_LIMIT, out_dir=tmp_path)  # fmt: skip
    await drill.run(fault, fault_after=300)
    report = await drill.verify()
    assert not report.problems, report.render()


async def test_drill_promoted_replica_lacks_the_last_writes_and_the_quota_stays_exact(
    ha_backends: HaBackends, ha_infra: Infra, ha_services: ProcessServices, tmp_path: Path
) -> None:
    """The worst case of asynchronous replication, made certain: the replica is paused and
    its link cut, the master takes writes for two seconds, dies, and the replica that never
    saw those writes is promoted. Without the WAIT rule, results published from the lost
    reservations would leave the day's counter below the discounted bookings (and the day
    above its limit once later bookings reuse the lost units)."""
    group = ha_backends.redis

    async def fault(drill: Drill) -> None:
        master, replica = group.master(), group.replicas()[0]
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)
        with redis.Redis(host="127.0.0.1", port=master.port) as client:
            client.client_kill_filter(_type="replica")
        drill.note(f"{replica.data_dir.name} paused (SIGSTOP) and its replication link cut")
        await asyncio.sleep(2.0)  # the master alone takes the writes
        await asyncio.to_thread(group.kill_master)
        os.kill(replica.pid, signal.SIGCONT)
        drill.note(f"SIGKILL the master {master.data_dir.name}; {replica.data_dir.name} resumed")
        new = await asyncio.to_thread(group.wait_failover, master)
        drill.note(f"the sentinels promoted {new.data_dir.name}, without the master's last writes")
        await asyncio.to_thread(group.restart, master)
        drill.note(f"{master.data_dir.name} back, as the new master's replica")

    drill = Drill("redis: promoted replica lacks the last writes", ha_infra, ha_services,
                  limit=DRILL_LIMIT, out_dir=tmp_path)  # fmt: skip
    await drill.run(fault, fault_after=300)
    report = await drill.verify()
    assert not report.problems, report.render()


async def test_cli_reads_the_quota_through_the_sentinels(
    ha_backends: HaBackends, ha_infra: Infra
) -> None:
    group = ha_backends.redis
    result = await asyncio.to_thread(
        CliRunner().invoke, medbook_cli, ["quota", "get", "--json", "--redis-url", group.url]
    )
    assert result.exit_code == 0, result.output
    assert '"used": 0' in result.output


@pytest.fixture(scope="module")
def cluster_mode_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        tmp_path_factory.mktemp("redis-cluster-node"),
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
    )
    server.start()
    yield server
    server.stop()


async def test_a_redis_cluster_is_refused_with_the_reason(cluster_mode_redis: RedisServer) -> None:
    settings = DiscountSettings(redis=RedisSettings(url=cluster_mode_redis.url))
    worker = DiscountWorker(settings)
    try:
        with pytest.raises(RedisClusterUnsupported, match="does not support Redis Cluster"):
            await worker.start()
    finally:
        await worker.stop()
    result = await asyncio.to_thread(
        CliRunner().invoke, medbook_cli, ["quota", "get", "--redis-url", cluster_mode_redis.url]
    )
    assert result.exit_code == 2, result.output
    assert "does not support Redis Cluster" in result.output
    with pytest.raises(ValueError, match="Redis Cluster URL"):
        RedisSettings(url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
