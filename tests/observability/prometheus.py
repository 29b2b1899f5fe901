"""A real Prometheus (Debian's package) for the tests, scraping the services every second
(in OpenMetrics, as it asks for it by default) and evaluating the rule files it is given."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import port_for
import yaml


class PrometheusServer:
    def __init__(
        self, data_dir: Path, targets: dict[str, str], rule_files: tuple[Path, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.targets = targets  # job -> host:port
        self.rule_files = rule_files  # evaluated every second, like the scrapes
        self.port = port_for.select_random()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.targets.items()
            ],
            "rule_files": [str(path) for path in self.rule_files],
        }
        config_path = self.data_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.data_dir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready; see {self.data_dir / 'prometheus.log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", (expr, body)
        return body["data"]["result"]

    async def targets_up(self) -> dict[str, bool]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            active = (await client.get("/api/v1/targets")).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] == "up" for t in active}
