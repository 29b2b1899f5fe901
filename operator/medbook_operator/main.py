"""``medbook-operator``: run the quota operator in the namespace it lives in.

One replica is the supported deployment (see docs/operator.md, "Running it"): kopf
has no leader election, and a second active instance would reconcile and post
Events twice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from medbook.redis_sentinel import redis_from_url
from medbook_operator import metrics
from medbook_operator.handlers import register
from medbook_operator.kube import KubeApi
from medbook_operator.reconcile import Reconciler
from medbook_operator.settings import OperatorSettings

log = logging.getLogger("medbook.operator")


def make_login(settings: OperatorSettings, namespace: str) -> Callable[[], kopf.ConnectionInfo]:
    """Credentials for kopf and for our client: a fixed URL, the service account, or kubeconfig."""

    def login() -> kopf.ConnectionInfo:
        if settings.api_server:
            return kopf.ConnectionInfo(
                server=settings.api_server, insecure=True, default_namespace=namespace
            )
        kopf_settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=kopf_settings) or (
            kopf.login_with_kubeconfig(settings=kopf_settings)
        )
        if info is None:
            raise kopf.LoginError(
                "no service account token and no kubeconfig; set MEDBOOK_OPERATOR_API_SERVER "
                "to talk to `kubectl proxy`"
            )
        return info

    return login


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(obj), type=type_, reason=reason, message=message)  # type: ignore[arg-type]


class QuotaOperator:
    """The reconciler, its clients and kopf's registry, ready to :meth:`run`."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.namespace = settings.watched_namespace()
        self.login = make_login(settings, self.namespace)
        self.api = KubeApi(self.login)
        self.redis = redis_from_url(
            settings.redis.dsn,
            socket_connect_timeout=settings.redis.timeout,
            socket_timeout=settings.redis.timeout,
        )
        self.reconciler = Reconciler(settings, self.namespace, self.api, self.redis, post_event)
        self.registry = kopf.OperatorRegistry()
        register(self.registry, self.reconciler, settings)

        @kopf.on.login(id="login", registry=self.registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return self.login()

    async def run(
        self,
        stop_flag: asyncio.Event | None = None,
        ready_flag: asyncio.Event | None = None,
    ) -> None:
        server = (
            metrics.MetricsServer(self.settings.metrics_host, self.settings.metrics_port)
            if self.settings.metrics_port
            else None
        )
        if server is not None:
            await server.start()
        log.info("watching QuotaPolicies in namespace %s", self.namespace)
        try:
            await kopf.operator(
                registry=self.registry,
                namespaces=[self.namespace],
                liveness_endpoint=self.settings.liveness_endpoint,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        finally:
            await self.api.close()
            await self.redis.aclose()
            if server is not None:
                await server.stop()


class _QuietStatusTimer(logging.Filter):
    """Drop kopf's line for every successful status refresh (one per policy every few seconds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and record.getMessage() == _TIMER_DONE)


_TIMER_DONE = "Timer 'status' succeeded."


def setup_logging(settings: OperatorSettings) -> None:
    """kopf's formatter (JSON lines carry the object's namespace and name), at our level."""
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format, log_refkey="object")
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    for handler in root.handlers:
        handler.addFilter(_QuietStatusTimer())
    for noisy in ("aiohttp.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(
        prog="medbook-operator",
        description="The quota operator: reconciles the QuotaPolicy objects of its namespace. "
        "Settings come from the environment (MEDBOOK_OPERATOR_*, the Redis settings, "
        "MEDBOOK_CLEANUP_*; see docs/operator.md).",
    )
    sub = commands.add_subparsers(dest="command", metavar="{run,uninstall}")
    sub.add_parser("run", help="run the operator (the default)")
    release = sub.add_parser(
        "uninstall",
        help="stop the operator and release its namespace (the chart's pre-delete hook)",
        description="Scale the operator's Deployment to 0 and wait for its pods, delete the "
        "cleanup CronJobs, remove the operator's finalizer from every QuotaPolicy (marking "
        "them not in force), and withdraw the policy this namespace published. QuotaPolicy "
        "objects stay. Exit 0 when done, 1 with the reason otherwise.",
    )
    release.add_argument(
        "--deployment", required=True, help="the operator's Deployment, in the same namespace"
    )
    release.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the operator's pods"
    )
    return commands


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = OperatorSettings()
    setup_logging(settings)
    if args.command == "uninstall":
        from medbook_operator.uninstall import uninstall

        return asyncio.run(uninstall(settings, args.deployment, args.timeout))
    asyncio.run(QuotaOperator(settings).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
