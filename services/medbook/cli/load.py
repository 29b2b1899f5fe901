"""``medbook load``: load tests against a running system, on the benchmark's engine.

``medbook load`` runs users x requests per user from the seeded mix, with a
ramp-up and a live progress bar, then summarises create rate, saga
throughput, latency percentiles, outcomes, errors and stuck bookings.
``medbook load quota`` sends more eligible bookings than the day's quota has
room for and verifies that no more than the limit were discounted. Both use
:mod:`medbook.cli.loadgen`, as ``medbook bench`` does.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medbook.cli import common
from medbook.cli.api import BookingApi
from medbook.cli.common import PolicyView, Unreachable, UsageProblem
from medbook.cli.loadgen import DEFAULT_MIX, KINDS, LoadProfile, LoadReport, LoadRun, render
from medbook.cli.policyctl import daily_limit
from medbook.cli.scenarios import Outcome
from medbook.cli.scenarios import render as render_checks
from medbook.contracts import QUOTA_EXHAUSTED_REASON
from medbook.discount.maintenance import QuotaMaintenance
from medbook.discount.quota import QuotaStore

app = typer.Typer(help="Load tests on the benchmark's engine.", subcommand_metavar="[quota]")

ShowProgress = Annotated[bool, typer.Option(help="Live progress bars (on a terminal).")]


def parse_mix(text: str) -> dict[str, float]:
    """``birthday=0.4,plain=0.6`` -> weights (kinds: birthday, high_value, plain, blocked, male)."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, sep, weight = part.partition("=")
        kind = kind.strip().replace("-", "_")
        if not sep or kind not in KINDS:
            raise typer.BadParameter(
                f"{part!r}: write kind=weight with kinds {', '.join(KINDS)}", param_hint="--mix"
            )
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise typer.BadParameter(f"{part!r}: the weight is not a number") from None
    if not any(w > 0 for w in mix.values()):
        raise typer.BadParameter("give at least one kind a positive weight", param_hint="--mix")
    return mix


class LiveProgress:
    """Two bars on standard error: requests answered, bookings finished (counted live)."""

    def __init__(self, total: int, enabled: bool) -> None:
        console = common.err()
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.enabled,
        )
        self.total = total
        self.sent = self.progress.add_task("requests", total=total, extra="")
        self.done = self.progress.add_task("finished", total=total, extra="")
        self.created = self.failed = 0

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def _sent(self) -> None:
        extra = f"[red]{self.failed} failed[/red]" if self.failed else ""
        self.progress.update(self.sent, completed=self.created + self.failed, extra=extra)
        # A failed request makes no booking: the finished bar's end moves back.
        self.progress.update(self.done, total=self.total - self.failed)

    def on_created(self, n: int) -> None:
        self.created = n
        self._sent()

    def on_failed(self, n: int) -> None:
        self.failed = n
        self._sent()

    def on_settled(self, n: int) -> None:
        self.progress.update(self.done, completed=n)


async def policy_or_defaults(redis_url: str, quiet: bool) -> PolicyView:
    """The policy in force (for "today" and the blocked user); defaults when Redis is away."""
    try:
        async with common.redis_client(redis_url) as redis:
            return await common.current_policy(redis)
    except Unreachable as exc:
        from medbook.config import PolicyDefaults
        from medbook.discount.policy import QuotaPolicy

        if not quiet:
            common.err().print(f"[yellow]note:[/yellow] {exc}; policy from the environment")
        return PolicyView(QuotaPolicy.from_defaults(PolicyDefaults()), False, None)


def profile_for(view: PolicyView, **values: Any) -> LoadProfile:
    policy = view.policy
    return LoadProfile(
        time_zone=policy.time_zone,
        blocked_user=policy.blocked_users[0] if policy.blocked_users else "fail_test_user",
        **values,
    )


async def run_load(
    url: str,
    token: str | None,
    profile: LoadProfile,
    database_url: str | None,
    progress: bool,
) -> LoadReport:
    async with BookingApi(url, token):  # fail early, and clearly, when the API is away
        pass
    with LiveProgress(profile.bookings, progress) as bars:
        drawn = bars.enabled  # nothing to count when no bar is drawn
        run = LoadRun(
            url,
            profile,
            token=token,
            database_url=database_url,
            on_created=bars.on_created if drawn else None,
            on_failed=bars.on_failed if drawn else None,
            on_settled=bars.on_settled if drawn else None,
        )
        return await run.run()


@app.callback(invoke_without_command=True)
def load(
    ctx: typer.Context,
    users: Annotated[
        int, typer.Option("--users", "-u", help="Concurrent users.", min=1, metavar="N")
    ] = 10,
    requests_per_user: Annotated[
        int,
        typer.Option(
            "--requests-per-user",
            "-r",
            help="Bookings each user sends in turn.",
            min=1,
            metavar="N",
        ),
    ] = 10,
    ramp_up: Annotated[
        float,
        typer.Option(help="Seconds over which the users start, evenly.", min=0, metavar="SECONDS"),
    ] = 0.0,
    mix: Annotated[
        str,
        typer.Option(
            help="Weights of the booking kinds: birthday (eligible), high_value (eligible), "
            "plain, blocked, male (a man on his birthday: not eligible).",
            metavar="WEIGHTS",
        ),
    ] = ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()),
    seed: common.Seed = 42,
    settle_timeout: common.SettleTimeout = 120.0,
    url: common.ApiUrl = None,
    token: common.ApiToken = None,
    database_url: common.StatesDatabaseUrl = None,
    redis_url: common.RedisUrl = None,
    progress: ShowProgress = True,
    json_output: common.JsonOutput = False,
) -> None:
    """USERS concurrent users each send REQUESTS-PER-USER bookings from a seeded mix (the same
    seed sends the same requests), starting evenly over --ramp-up seconds; then wait for every
    booking to finish and report: create rate and latency, saga throughput, end-to-end latency
    (server-side, created -> final), outcomes and reasons, HTTP errors, stuck bookings.

    `medbook load quota` checks the daily limit under load instead.

    Exit status: 0 every booking created and finished, 1 a request failed or a booking is
    stuck, 2 the API cannot be reached or a bad option.
    """
    if ctx.invoked_subcommand is not None:
        return
    weights = parse_mix(mix)
    url = common.api_url(url)
    database_url = common.states_database(database_url)

    async def main() -> LoadReport:
        async with BookingApi(url, token):  # fail early, and clearly, when the API is away
            pass
        view = await policy_or_defaults(common.redis_dsn(redis_url), json_output)
        profile = profile_for(
            view,
            bookings=users * requests_per_user,
            concurrency=users,
            requests_per_user=requests_per_user,
            ramp_up=ramp_up,
            mix=weights,
            seed=seed,
            settle_timeout=settle_timeout,
        )
        if not json_output:
            common.err().print(
                f"{users} users x {requests_per_user} requests against {url} "
                f"(seed {seed}, mix {mix})"
            )
        return await run_load(url, token, profile, database_url, progress)

    report = common.run(main())
    typer.echo(report.to_json() if json_output else render(report))
    raise typer.Exit(common.EXIT_OK if report.ok else common.EXIT_FAILED)


def eligible_kind(view: PolicyView) -> str:
    """The mix's kind the policy discounts (birthday: a woman; high_value: an MRI scan)."""
    eligibility = view.policy.eligibility
    if eligibility.birthday.enabled and "Female" in {g.value for g in eligibility.birthday.genders}:
        return "birthday"
    if eligibility.high_value.enabled and eligibility.high_value.threshold < 5000:
        return "high_value"
    raise UsageProblem("the policy makes none of the load mix's bookings eligible")


@app.command("quota", short_help="More eligible bookings than the quota has room for.")
def load_quota(
    extra: Annotated[
        int,
        typer.Option(
            help="Bookings sent beyond the room left in today's quota.", min=1, metavar="N"
        ),
    ] = 20,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Set the daily limit to this for the run (through the policy's owner), then "
            "restore it (default: keep the limit).",
            min=0,
            show_default=False,
            metavar="N",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Concurrent clients.", min=1, metavar="N")
    ] = 16,
    seed: common.Seed = 42,
    settle_timeout: common.SettleTimeout = 120.0,
    policy_refresh: common.PolicyRefresh = None,
    url: common.ApiUrl = None,
    token: common.ApiToken = None,
    database_url: common.StatesDatabaseUrl = None,
    redis_url: common.RedisUrl = None,
    progress: ShowProgress = True,
    json_output: common.JsonOutput = False,
) -> None:
    """Send the room left in today's quota plus --extra eligible bookings at once (limit + 20 on
    a fresh day) and verify that no more than the limit were discounted, that the rest were
    rejected for the quota, and that the day's counter equals its reservations.

    Exit status: 0 verified, 1 a check failed or a booking is stuck, 2 a server cannot be
    reached or a bad option.
    """
    refresh = policy_refresh if policy_refresh is not None else common.policy_refresh_seconds()
    url = common.api_url(url)
    database_url = common.states_database(database_url)

    async def main() -> tuple[LoadReport, Outcome, dict[str, Any]]:
        say = common.err().print
        async with common.redis_client(common.redis_dsn(redis_url)) as redis:
            view = await common.current_policy(redis)
            kind = eligible_kind(view)
            changing = (
                daily_limit(redis, limit, worker_refresh=refresh, say=say)
                if limit is not None
                else contextlib.nullcontext()
            )
            async with changing:
                view = await common.current_policy(redis)
                policy = view.policy
                day = policy.today()
                store = QuotaStore(redis)
                used_before = await store.used(day)
                room = max(policy.daily_limit - used_before, 0)
                profile = profile_for(
                    view,
                    bookings=room + extra,
                    concurrency=concurrency,
                    mix={kind: 1.0},
                    seed=seed,
                    settle_timeout=settle_timeout,
                )
                if not json_output:
                    say(
                        f"quota day {day}: limit {policy.daily_limit}, used {used_before}; "
                        f"sending {profile.bookings} eligible ({kind}) bookings"
                    )
                started = time.monotonic()
                report = await run_load(url, token, profile, database_url, progress)
                seconds = time.monotonic() - started
                used_after = await store.used(day)
                reservations = await QuotaMaintenance(redis).reservations(day)
        discounted = report.reasons.get("discount applied", 0)
        refused = report.reasons.get(QUOTA_EXHAUSTED_REASON, 0)
        outcome = Outcome("load quota", f"{profile.bookings} eligible bookings, {room} left")
        outcome.seconds = seconds
        outcome.check(
            "no more than the limit discounted",
            f"at most {room} ({policy.daily_limit} less {used_before} used)",
            discounted,
            discounted <= room,
        )
        outcome.check(
            "the quota is used up",
            f"{room} discounted (the run sends {extra} more than there is room for)",
            discounted,
            discounted == room,
        )
        outcome.check(
            "the others are refused for the quota",
            f"{report.created - room} REJECTED: {QUOTA_EXHAUSTED_REASON}",
            refused,
            refused == report.created - discounted and report.created == profile.bookings,
        )
        ceiling = max(policy.daily_limit, used_before)
        outcome.check(
            "counter",
            f"at most {ceiling}, equal to the day's reservations",
            f"{used_after} (reservations {reservations})",
            used_after <= ceiling and used_after == reservations,
        )
        outcome.check("nothing stuck", "0 stuck", len(report.stuck), not report.stuck)
        quota = {
            "day": day.isoformat(),
            "limit": policy.daily_limit,
            "used_before": used_before,
            "used_after": used_after,
            "reservations": reservations,
            "discounted": discounted,
            "refused": refused,
        }
        return report, outcome, quota

    report, outcome, quota = common.run(main())
    if json_output:
        data = {
            "ok": outcome.ok,
            "quota": quota,
            "checks": [c.__dict__ for c in outcome.checks],
            "report": report.to_dict(),
        }
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(render(report))
        render_checks(outcome)
    raise typer.Exit(common.EXIT_OK if outcome.ok else common.EXIT_FAILED)
