"""The scenarios of issues 6 and 12, each on a fresh database cloned from the migrated template.

Every scenario returns a dict of figures (JSON-ready); ``all_success`` where deliveries were
made. Sizes come from ``Config`` (full defaults, or ``Config.small()`` for CI).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.ceiling import pg_ceiling, run_http_ceiling
from bench.drain import BenchError, Drain
from bench.floor import REAL
from bench.floor_latency import FloorProcess
from bench.infra import (
    BENCH_ROLE,
    FLOOR_ROLE,
    proc_cpu,
    q,
    start_daemon,
    start_floor,
    stop_daemon,
)
from bench.profile import Spy, summarize
from bench.receiver import SLOW_SECONDS
from bench.slow_timeline import receiver_report
from bench.workload import (
    EVENT_TYPE,
    PAYLOAD,
    Publisher,
    create_webhooks,
    jsonb_text,
    publish_backlog,
)


@dataclass(frozen=True)
class Config:
    drain_events: int = 20_000
    orgs: int = 16  # drain: one webhook per org, events round-robin: one match each
    drain1_events: int = 20_000  # drain1: the same backlog to one webhook
    slow_events: int = 2_000  # slow: one webhook whose receiver answers after 50 ms
    hot_events: int = 10_000  # hotquiet: the hot webhook's backlog
    quiet_webhooks: int = 200  # hotquiet: one webhook per org, each gets an event now and then
    quiet_events: int = 200
    quiet_rate: float = 100.0
    fanout_events: int = 2_000
    fanout_webhooks: int = 10
    ordered_keys: int = 100  # ordered: aggregate_ids per webhook
    latency_rate: float = 200.0
    latency_seconds: float = 20.0
    latency_warmup_seconds: float = 2.0
    latency_floor: bool = True  # the floor pipeline beside latency and hotquiet
    intake_seconds: float = 5.0
    intake_rounds: int = 3
    publishers: int = 8
    cost_events: int = 100_000
    ceiling_requests: int = 30_000
    ceiling_warmup: int = 2_000
    pg_ceiling_rows: int = 100_000
    ceiling_twice: bool = True
    paired_ceiling_requests: int = 10_000  # before each drain; 0 = off
    timeout: float = 600.0

    @classmethod
    def small(cls) -> Config:
        return cls(
            drain_events=300,
            orgs=4,
            drain1_events=300,
            slow_events=100,
            hot_events=300,
            quiet_webhooks=10,
            quiet_events=20,
            quiet_rate=20.0,
            fanout_events=40,
            latency_seconds=1.0,  # 200 events measured (and the floor's 200 before them)
            latency_warmup_seconds=0.25,
            intake_seconds=1.0,
            intake_rounds=1,
            cost_events=300,
            ceiling_requests=1_000,
            ceiling_warmup=200,
            pg_ceiling_rows=5_000,
            ceiling_twice=False,
            paired_ceiling_requests=300,
            timeout=45.0,
        )

    def with_overrides(self, **values: Any) -> Config:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


class Scenarios:
    def __init__(self, drain: Drain, cfg: Config, results_dir: Path, stamp: str) -> None:
        self.d = drain
        self.cluster = drain.cluster
        self.receiver = drain.receiver
        self.cfg = cfg
        self.results_dir = results_dir
        self.stamp = stamp

    # ------------------------------------------------------------------ helpers
    async def _fresh(self, prefix: str) -> str:
        return await asyncio.to_thread(self.cluster.fresh_database, prefix)

    async def _backlog(self, prefix: str, events: int, orgs: int, per_org: int) -> str:
        db = await self._fresh(prefix)
        async with await self.d.connect(db) as conn:
            hooks = await create_webhooks(
                conn, self.receiver.url(f"/{prefix}"), orgs=orgs, per_org=per_org
            )
            await publish_backlog(conn, hooks.orgs, events)
        return db

    async def _drain_scenario(
        self, prefix: str, events: int, orgs: int, per_org: int, **kw: Any
    ) -> dict[str, Any]:
        db = await self._backlog(prefix, events, orgs, per_org)
        kw.setdefault("track_sql", True)
        try:
            result = await self.d.run(db, events * per_org, **kw)
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)
        result["events"] = events
        result["webhooks"] = orgs * per_org
        return result

    # ------------------------------------------------------------------ scenarios
    async def ceiling(self) -> dict[str, Any]:
        await self.receiver.reset()
        receiver_cpu = proc_cpu(self.receiver.pid)
        http = await asyncio.to_thread(
            run_http_ceiling,
            self.receiver.url("/ceiling"),
            self.cfg.ceiling_requests,
            self.cfg.ceiling_warmup,
        )
        total = self.cfg.ceiling_requests + self.cfg.ceiling_warmup
        receiver_cpu = proc_cpu(self.receiver.pid) - receiver_cpu
        http["receiver_cpu_s_per_1000"] = round(receiver_cpu / total * 1000, 3)
        db = await asyncio.to_thread(self.cluster.empty_database, "ceiling")
        try:
            pg = await asyncio.to_thread(pg_ceiling, self.cluster.dsn(db), self.cfg.pg_ceiling_rows)
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)
        stats = await self.receiver.stats()
        return {
            "http": http,
            "postgres": pg,
            "all_success": http["errors"] == 0 and stats["count"] == total,
        }

    async def http_ceiling_again(self) -> dict[str, Any]:
        await self.receiver.reset()
        return await asyncio.to_thread(
            run_http_ceiling,
            self.receiver.url("/ceiling"),
            self.cfg.ceiling_requests,
            self.cfg.ceiling_warmup,
        )

    async def drain(self, profile: Path | None = None) -> dict[str, Any]:
        return await self._drain_scenario(
            "drain", self.cfg.drain_events, self.cfg.orgs, 1, profile=profile
        )

    async def drain1(self, profile: Path | None = None) -> dict[str, Any]:
        """The drain's backlog to one webhook: the per-webhook cap is what limits it."""
        return await self._drain_scenario("drain1", self.cfg.drain1_events, 1, 1, profile=profile)

    async def floor(self, profile: Path | None = None) -> dict[str, Any]:
        """drain1's backlog drained by the durable floor (bench/floor.py): two writes per
        delivery row, the least any at-least-once dispatcher recording every attempt does."""
        return await self._floor("floor", writes=2, profile=profile)

    async def floor3(self, profile: Path | None = None) -> dict[str, Any]:
        """The floor writing each row three times (pending, leased, outcome) like drain1."""
        return await self._floor("floor3", writes=3, profile=profile)

    # The ladder (issue 12): floor3 with the daemon's own pieces swapped in, one more per
    # rung (bench/floor.py --real); the rung above rung_outcome is drain1, the daemon itself.
    async def rung_request(self, profile: Path | None = None) -> dict[str, Any]:
        """floor3 sending the daemon's request (build_request: both signatures, every header)."""
        return await self._floor("rung_request", writes=3, profile=profile, real=REAL[:1])

    async def rung_fanout(self, profile: Path | None = None) -> dict[str, Any]:
        """... and creating the rows with the daemon's delivery_fan_out_lean."""
        return await self._floor("rung_fanout", writes=3, profile=profile, real=REAL[:2])

    async def rung_claim(self, profile: Path | None = None) -> dict[str, Any]:
        """... and leasing them with the daemon's delivery_claim_due."""
        return await self._floor("rung_claim", writes=3, profile=profile, real=REAL[:3])

    async def rung_outcome(self, profile: Path | None = None) -> dict[str, Any]:
        """... and recording outcomes with the recorder's statements: the daemon's SQL and
        request under the floor's minimal loop."""
        return await self._floor("rung_outcome", writes=3, profile=profile, real=REAL[:4])

    async def _floor(
        self, prefix: str, *, writes: int, profile: Path | None, real: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        events = self.cfg.drain1_events
        db = await self._backlog(prefix, events, 1, 1)
        try:
            async with await self.d.connect(db) as conn:
                cur = await conn.execute(q("webhook_ids"))
                hooks = [str(r["id"]) for r in await cur.fetchall()]
            start = functools.partial(start_floor, webhook=hooks[0], writes=writes, real=real)
            result = await self.d.run(db, events, track_sql=True, profile=profile, start=start)
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)
        result.update(events=events, webhooks=1, writes_per_row=writes)
        if real:
            result["real"] = list(real)
        return result

    async def slow(self) -> dict[str, Any]:
        """One webhook whose endpoint answers after 50 ms: at best cap / latency per second."""
        cap = self.d.spec.setting_int("DISPATCHER_PER_WEBHOOK_CONCURRENCY")
        # the database (and so the URL prefix) is named slow: the receiver delays /slow/...
        result = await self._drain_scenario("slow", self.cfg.slow_events, 1, 1)
        bound = cap / SLOW_SECONDS
        result["endpoint_latency_s"] = SLOW_SECONDS
        result["per_webhook_cap"] = cap
        result["cap_over_latency_per_s"] = round(bound, 1)
        result["ratio_to_cap_over_latency"] = round(result["deliveries_per_s"] / bound, 3)
        # where each request's time beyond 50 ms went, by the receiver's stamps (the drain's
        # requests are the trace's: the receiver was reset at the drain's start)
        result["timeline"] = receiver_report(await self.receiver.trace(), cap)
        # The same receiver's slow path driven by a bare client with `cap` workers (no
        # database, no dispatcher), right after the drain: what cap / latency is in practice
        # on this machine (each request also pays its HTTP round trip and the receiver's
        # timer), as a ceiling paired with this drain.
        await self.receiver.reset()
        bare = await asyncio.to_thread(
            run_http_ceiling,
            self.receiver.url("/slow/ceiling"),
            self.cfg.slow_events,
            cap,
            cap,
        )
        # without the bare client's warm-up round (its first `cap` requests)
        result["bare_client_timeline"] = receiver_report((await self.receiver.trace())[cap:], cap)
        await self.receiver.reset()
        result["bare_client_errors"] = bare["errors"]  # answers other than 204: not a ceiling
        result["all_success"] = result["all_success"] and bare["errors"] == 0
        result["bare_client_per_s"] = round(bare["requests_per_s"], 1)
        result["bare_client_to_cap_over_latency"] = round(bare["requests_per_s"] / bound, 3)
        result["ratio_to_bare_client"] = round(
            result["deliveries_per_s"] / bare["requests_per_s"], 3
        )
        return result

    async def hotquiet(self) -> dict[str, Any]:
        """One webhook draining a backlog while 200 quiet ones (one org each) get an event now
        and then: the hot one's drain and the quiet ones' latency from COMMIT. The quiet
        events start once the hot backlog is fanned out (outbox empty). With the floor on,
        every quiet event also rings the floor pipeline's doorbell in its transaction: the
        same events, from the same COMMIT, through the least any dispatcher must do, while
        the daemon drains the hot webhook beside it."""
        cfg = self.cfg
        db = await self._fresh("hotquiet")
        fp: FloorProcess | None = None
        try:
            async with await self.d.connect(db) as conn:
                hot = await create_webhooks(conn, self.receiver.url("/hot"), orgs=1, per_org=1)
                quiet = await create_webhooks(
                    conn, self.receiver.url("/quiet"), orgs=cfg.quiet_webhooks, per_org=1
                )
                await publish_backlog(conn, hot.orgs, cfg.hot_events)
            pub = Publisher(
                self.cluster.dsn(db), quiet.orgs, connections=4, floor=cfg.latency_floor
            )
            await pub.open()
            if cfg.latency_floor:
                fp = FloorProcess(
                    self.cluster.dsn(db, role=FLOOR_ROLE), self.receiver.url("/floor")
                )
                await asyncio.to_thread(fp.start)
                self.d.floor_pid = fp.pid
            outbox_s: list[float] = []
            quiet_sched: dict[str, Any] = {}

            async def quiet_traffic() -> dict[str, float]:
                # Once the hot backlog has left the outbox (it is the hot webhook's pending
                # rows, drained at its cap): events behind a backlog still in the outbox
                # wait for its fan-out, whatever webhook they go to (the outbox is FIFO).
                # BENCH_HOTQUIET_AT_ONCE=1: from the hot drain's first arrival instead, the
                # hot backlog still in the outbox (fresh events behind a backlog).
                t0 = time.monotonic()
                at_once = os.environ.get("BENCH_HOTQUIET_AT_ONCE") == "1"
                async with await self.d.connect(db) as conn:
                    while True:
                        if at_once:
                            done = (await self.receiver.stats())["count"] > 0
                        else:
                            cur = await conn.execute(q("outbox_count"))
                            row = await cur.fetchone()
                            done = row is None or row["n"] == 0
                        if done:
                            break
                        await asyncio.sleep(0.01)
                outbox_s.append(time.monotonic() - t0)
                # the scheduling profile of the quiet traffic's window alone
                window = self.d.sched_window(list(self.d.running), self.d.floor_pid)
                n0 = (await self.receiver.stats())["count"]
                window.start()
                done = await pub.paced(cfg.quiet_rate, cfg.quiet_events / cfg.quiet_rate)
                n1 = (await self.receiver.stats())["count"]
                quiet_sched.update(window.stop(max(n1 - n0, 1)))
                return done

            try:
                result = await self.d.run(
                    db, cfg.hot_events + cfg.quiet_events, during=quiet_traffic
                )
            finally:
                await pub.close()
                self.d.floor_pid = None
                if fp is not None:
                    await asyncio.to_thread(fp.stop)
            commits: dict[str, float] = result.pop("during")
            arrivals = await self.receiver.arrivals()  # still those of the drain
            async with await self.d.connect(db) as conn:
                cur = await conn.execute(q("delivery_timeline"))
                rows = await cur.fetchall()
                floor_timeline = await _floor_timeline(conn) if fp is not None else {}
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)
        event_of = {r["id"]: r["event_id"] for r in rows}
        timeline = _with_signed(rows, _signed(arrivals, event_of))
        quiet_ms, hot_times = [], []
        for i, t in zip(arrivals["ids"], arrivals["times"], strict=True):
            if i.startswith("floor-"):
                continue
            event = event_of.get(i)
            if event in commits:
                quiet_ms.append((t - commits[event]) * 1000)
            else:
                hot_times.append(t)
        quiet_ms.sort()
        hot_span = max(max(hot_times) - min(hot_times), 1e-6) if hot_times else 0.0
        hot_rate = cfg.hot_events / hot_span if hot_span else 0.0
        arrived = _arrived(arrivals, event_of)
        result.update(
            hot_events=cfg.hot_events,
            quiet_webhooks=cfg.quiet_webhooks,
            quiet_events=len(commits),
            quiet_rate_per_s=cfg.quiet_rate,
            outbox_fanned_out_s=round(outbox_s[0], 3) if outbox_s else None,
            hot_received_per_s=round(hot_rate, 1),
            # how much of the quiet traffic overlapped the hot drain (1.0: all of it)
            quiet_during_hot=round(
                sum(1 for c in commits.values() if hot_times and c < max(hot_times))
                / max(len(commits), 1),
                3,
            ),
            quiet_p50_ms=_pct(quiet_ms, 50),
            quiet_p95_ms=_pct(quiet_ms, 95),
            quiet_p99_ms=_pct(quiet_ms, 99),
            quiet_max_ms=_pct(quiet_ms, 100),
            quiet_stages=stages(commits, arrived, timeline, DAEMON_STAGES),
            quiet_sched=quiet_sched,
        )
        if fp is not None:
            floor_arrived = _arrived(arrivals, None)
            floor = latency_figures(commits, pub.commit_sent, floor_arrived)
            missing = floor.pop("missing")
            floor["stages"] = stages(commits, floor_arrived, floor_timeline, FLOOR_STAGES)
            result["floor"] = floor
            result["all_success"] = result["all_success"] and not missing
        paired = result.get("paired_ceiling_per_s")
        if paired:
            result["hot_ratio_to_paired_ceiling"] = round(hot_rate / paired, 3)
        result["all_success"] = result["all_success"] and len(quiet_ms) == len(commits)
        return result

    async def ordered(self) -> dict[str, Any]:
        """The drain's backlog, every event with an aggregate_id among `ordered_keys` per
        webhook, drained twice in this run: webhooks unordered, then marked ordered (issue
        13: the ordered drain >= 0.5x the unordered one)."""
        cfg = self.cfg
        out: dict[str, Any] = {}
        for mode in ("unordered", "ordered"):
            db = await self._fresh(f"ord{mode[0]}")
            try:
                async with await self.d.connect(db) as conn:
                    hooks = await create_webhooks(
                        conn, self.receiver.url(f"/ord{mode[0]}"), orgs=cfg.orgs, per_org=1
                    )
                    await publish_backlog(conn, hooks.orgs, cfg.drain_events, keys=cfg.ordered_keys)
                    if mode == "ordered":
                        await conn.execute(q("order_all_webhooks"))
                result = await self.d.run(db, cfg.drain_events, track_sql=True)
            finally:
                await asyncio.to_thread(self.cluster.drop_database, db)
            result["events"] = cfg.drain_events
            result["webhooks"] = cfg.orgs
            result["keys_per_webhook"] = cfg.ordered_keys
            out[mode] = result
        out["ratio_ordered_to_unordered"] = round(
            out["ordered"]["deliveries_per_s"] / out["unordered"]["deliveries_per_s"], 3
        )
        p_un, p_ord = (out[m].get("ratio_to_paired_ceiling") for m in ("unordered", "ordered"))
        if p_un and p_ord:
            out["ratio_ordered_to_unordered_paired"] = round(p_ord / p_un, 3)
        out["all_success"] = out["unordered"]["all_success"] and out["ordered"]["all_success"]
        return out

    async def fanout(self) -> dict[str, Any]:
        return await self._drain_scenario(
            "fanout", self.cfg.fanout_events, 1, self.cfg.fanout_webhooks
        )

    async def replicas(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in (1, 2):
            out[str(n)] = await self._drain_scenario(
                f"replicas{n}", self.cfg.drain_events, self.cfg.orgs, 1, replicas=n
            )
        one, two = out["1"]["deliveries_per_s"], out["2"]["deliveries_per_s"]
        out["ratio_2_to_1"] = round(two / one, 3)
        out["all_success"] = out["1"]["all_success"] and out["2"]["all_success"]
        return out

    async def cost(self) -> dict[str, Any]:
        return await self._drain_scenario("cost", self.cfg.cost_events, self.cfg.orgs, 1)

    async def latency(self, profile: Path | None = None) -> dict[str, Any]:
        cfg = self.cfg
        db = await self._fresh("latency")
        try:
            return await self._latency(db, cfg.latency_rate, cfg.latency_seconds, profile)
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)

    async def _latency(
        self, db: str, rate: float, seconds: float, profile: Path | None = None
    ) -> dict[str, Any]:
        async with await self.d.connect(db) as conn:
            hooks = await create_webhooks(conn, self.receiver.url("/latency"), orgs=1, per_org=1)
            alone = await create_webhooks(conn, "", orgs=1, per_org=0)  # the floor's org
        floor = None
        if self.cfg.latency_floor:
            # The floor alone at the same rate, right before the daemon's part (no daemon
            # runs yet; its events are for an org without webhooks, cleared afterwards).
            floor = await self._floor_alone(db, alone.orgs[0], rate, seconds)
        org = hooks.orgs[0]
        pub = Publisher(self.cluster.dsn(db), org, connections=4)
        await pub.open()
        await self.receiver.reset()
        daemon = start_daemon(self.d.spec, self.cluster.dsn(db, role="postgres"), "bench-lat")
        try:
            # Ready = one event went through; then a warm-up at the offered rate, unmeasured.
            await pub.one()
            await self._wait_received(1, daemon, 60.0)
            warm = await pub.paced(rate, self.cfg.latency_warmup_seconds)
            await self._wait_received(1 + len(warm), daemon, 30.0)
            await self.receiver.reset()
            # Statistics as a long-running database has them (autovacuum's ANALYZE may or may
            # not run during 20 s on fresh tables; a plan flip mid-run would make this random).
            async with await self.d.connect(db) as conn:
                await conn.execute(q("prepare_backlog"))
            await asyncio.to_thread(self._track_statements)
            window = self.d.sched_window([daemon.proc.pid])
            # py-spy on the daemon over the measured window only (--profile)
            spy = Spy(daemon.proc.pid, profile) if profile is not None else None
            window.start()
            try:
                commits = await pub.paced(rate, seconds)
                complete = await self._wait_received(len(commits), daemon, 30.0, fail=False)
                sched = window.stop(len(commits))
            finally:
                if spy is not None:
                    await asyncio.to_thread(spy.stop)
            arrivals = await self.receiver.arrivals()
        finally:
            await pub.close()
            code = await asyncio.to_thread(stop_daemon, daemon)
            await asyncio.to_thread(self.cluster.set_statement_tracking, False)
            daemon.close()
        sql_cost = self.d.sql_cost(db, max(len(commits), 1))
        async with await self.d.connect(db) as conn:
            cur = await conn.execute(q("delivery_timeline"))
            rows = await cur.fetchall()
            cur = await conn.execute(q("statuses"))
            statuses = {r["status"]: r["n"] for r in await cur.fetchall()}
        event_of = {r["id"]: r["event_id"] for r in rows}
        timeline = _with_signed(rows, _signed(arrivals, event_of))
        arrived = _arrived(arrivals, event_of)
        figures = latency_figures(commits, pub.commit_sent, arrived)
        commit_ms = sorted(pub.commit_ms)
        span = max(pub.last_commit - pub.first_commit, 1e-6)
        missing = figures.pop("missing")
        out: dict[str, Any] = {
            "offered_per_s": rate,
            "seconds": seconds,
            "events": len(commits),
            "achieved_publish_per_s": round((len(commits) - 1) / span, 1),
            **figures,
            "publish_commit_p50_ms": _pct(commit_ms, 50),
            "publish_commit_p99_ms": _pct(commit_ms, 99),
            "statuses": statuses,
            "exit_code": code,
            "sql": sql_cost,
            "sched": sched,
            "stages": stages(commits, arrived, timeline, DAEMON_STAGES),
            "all_success": complete
            and not missing
            and statuses.get("success", 0) == sum(statuses.values()),
        }
        if floor is not None:
            out["floor"] = floor
            out["all_success"] = out["all_success"] and floor["all_success"]
        if profile is not None:
            out["profile"] = summarize(profile)
            out["profile_file"] = str(profile)
        return out

    async def _floor_alone(
        self, db: str, org: uuid.UUID, rate: float, seconds: float
    ) -> dict[str, Any]:
        """The floor pipeline alone at `rate` events/s for `seconds` (bench/floor_latency.py):
        the least any dispatcher must do per event, on this machine, in this run."""
        pub = Publisher(self.cluster.dsn(db), org, connections=4, floor=True)
        await pub.open()
        fp = FloorProcess(self.cluster.dsn(db, role=FLOOR_ROLE), self.receiver.url("/floor"))
        await asyncio.to_thread(fp.start)
        try:
            await self.receiver.reset()
            await pub.one()
            await self._wait_received(1, fp, 30.0)
            warm = await pub.paced(rate, self.cfg.latency_warmup_seconds)
            await self._wait_received(1 + len(warm), fp, 30.0)
            await self.receiver.reset()
            await asyncio.to_thread(self._track_statements)
            window = self.d.sched_window([], fp.pid)
            window.start()
            commits = await pub.paced(rate, seconds)
            complete = await self._wait_received(len(commits), fp, 30.0, fail=False)
            sched = window.stop(len(commits))
            arrivals = await self.receiver.arrivals()
        finally:
            await pub.close()
            await asyncio.to_thread(fp.stop)
            await asyncio.to_thread(self.cluster.set_statement_tracking, False)
        sql_cost = self.d.sql_cost(db, max(len(commits), 1), role=FLOOR_ROLE)
        async with await self.d.connect(db) as conn:
            timeline = await _floor_timeline(conn)
            await conn.execute(q("outbox_clear"))
        arrived = _arrived(arrivals, None)
        figures = latency_figures(commits, pub.commit_sent, arrived)
        missing = figures.pop("missing")
        return {
            "events": len(commits),
            **figures,
            "sched": sched,
            "sql": sql_cost,
            "stages": stages(commits, arrived, timeline, FLOOR_STAGES),
            "all_success": complete and not missing,
        }

    def _track_statements(self) -> None:
        self.cluster.set_statement_tracking(True)
        if self.cluster.has_pg_stat_statements:
            with self.cluster.admin() as admin:
                admin.execute(q("statements_reset"))

    async def _wait_received(
        self, count: int, daemon: Any, timeout: float, *, fail: bool = True
    ) -> bool:
        """Until the receiver has `count` requests; False (or BenchError) on timeout."""
        deadline = time.monotonic() + timeout
        while (got := (await self.receiver.stats())["count"]) < count:
            if not daemon.is_running():
                raise BenchError(f"process exited with {daemon.returncode}\n{daemon.tail()}")
            if time.monotonic() > deadline:
                if fail:
                    raise BenchError(f"latency: {got} of {count} deliveries within {timeout} s")
                return False
            await asyncio.sleep(0.01)
        return True

    async def intake(self) -> dict[str, Any]:
        db = await self._fresh("intake")
        try:
            return await self._intake(db)
        finally:
            await asyncio.to_thread(self.cluster.drop_database, db)

    async def _intake(self, db: str) -> dict[str, Any]:
        cfg = self.cfg
        pgbench = self.cluster.pg.bindir / "pgbench"
        tool = "pgbench" if pgbench.exists() else "python"
        rates: dict[str, list[float]] = {"on": [], "off": []}
        async with await self.d.connect(db) as conn:
            for r in range(cfg.intake_rounds):
                for state in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    await conn.execute(q(f"intake_trigger_{state}"))
                    if tool == "pgbench":
                        tps = await asyncio.to_thread(self._pgbench, db, cfg.intake_seconds)
                    else:
                        tps = await _python_publishers(
                            self.cluster.dsn(db), cfg.publishers, cfg.intake_seconds
                        )
                    rates[state].append(round(tps, 1))
            await conn.execute(q("intake_trigger_on"))
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        # Each round measures both states back to back: their ratio shares the round's noise.
        paired = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
        return {
            "tool": tool,
            "publishers": cfg.publishers,
            "seconds_per_run": cfg.intake_seconds,
            "with_trigger_per_s": round(on, 1),
            "without_trigger_per_s": round(off, 1),
            "runs": rates,
            "ratio": round(statistics.median(paired), 3),
            "round_ratios": [round(x, 3) for x in paired],
        }

    def _pgbench(self, db: str, seconds: float) -> float:
        literal = jsonb_text(PAYLOAD).replace("'", "''")
        script = (
            f"SELECT publish_event('{EVENT_TYPE}', gen_random_uuid(), '{literal}'::jsonb, "
            "NULL, '{}'::jsonb, NULL);\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(script)
        try:
            pg = self.cluster.pg
            argv = [str(pg.bindir / "pgbench"), "-n", "-M", "prepared"]
            argv += ["-c", str(self.cfg.publishers), "-j", str(min(self.cfg.publishers, 2))]
            argv += ["-T", str(max(1, round(seconds))), "-f", f.name]
            argv += ["-h", "127.0.0.1", "-p", str(pg.port), "-U", BENCH_ROLE, db]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        finally:
            os.unlink(f.name)
        m = re.search(r"tps = ([\d.]+)", done.stdout)
        if done.returncode != 0 or m is None:
            raise BenchError(f"pgbench failed: {done.stderr.strip()[-1000:]}")
        return float(m.group(1))


async def _python_publishers(dsn: str, publishers: int, seconds: float) -> float:
    """Fallback without pgbench: `publishers` connections calling publish_event() in a loop."""
    count = 0
    stop_at = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal count
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            params = {"event_type": EVENT_TYPE, "payload": Jsonb(PAYLOAD), "org": None}
            while time.monotonic() < stop_at:
                await conn.execute(q("publish_one"), params, prepare=True)
                count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(publishers)))
    return count / (time.monotonic() - t0)


def _pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty or infinite)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(p / 100 * len(sorted_values))))
    value = sorted_values[rank - 1]
    return None if math.isinf(value) else round(value, 2)


def _arrived(arrivals: dict[str, Any], event_of: dict[str, str] | None) -> dict[str, float]:
    """{event id: arrival time} of the daemon's deliveries (`event_of`: delivery id ->
    event id), or with None of the floor's (``floor-<event id>``)."""
    out: dict[str, float] = {}
    for i, t in zip(arrivals["ids"], arrivals["times"], strict=True):
        if i.startswith("floor-"):
            if event_of is None:
                out.setdefault(i.removeprefix("floor-"), t)
        elif event_of is not None and i in event_of:
            out.setdefault(event_of[i], t)
    return out


def _signed(arrivals: dict[str, Any], event_of: dict[str, str]) -> dict[str, float]:
    """{event id: when the daemon signed its request}, from the X-InTime-Timestamp the
    receiver kept. That header is truncated to the millisecond: half a millisecond is added,
    so a median over many events is not biased by it (one event's figure is +-0.5 ms)."""
    out: dict[str, float] = {}
    for i, stamp in zip(arrivals["ids"], arrivals.get("signed", []), strict=False):
        if i in event_of and stamp:
            at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            out.setdefault(event_of[i], at.timestamp() + 0.0005)
    return out


def _with_signed(rows: list[dict[str, Any]], signed: dict[str, float]) -> dict[str, dict[str, Any]]:
    """The daemon's timeline per event: its delivery row's times and when it was signed."""
    return {r["event_id"]: {**r, "signed": signed.get(r["event_id"])} for r in rows}


async def _floor_timeline(conn: Any) -> dict[str, dict[str, Any]]:
    cur = await conn.execute(q("floor_timeline"))
    return {r["event_id"]: r for r in await cur.fetchall()}


def latency_figures(
    commits: dict[str, float], commit_sent: dict[str, float], arrived: dict[str, float]
) -> dict[str, Any]:
    """p50/p95/p99/max from COMMIT returned (and from COMMIT sent) to the receiver's arrival;
    an event never heard counts as infinitely late (``missing``)."""
    lat = sorted((arrived[e] - c) * 1000 for e, c in commits.items() if e in arrived)
    upper = sorted(
        (arrived[e] - commit_sent[e]) * 1000 for e in commits if e in arrived and e in commit_sent
    )
    missing = [math.inf] * (len(commits) - len(lat))
    measured = len(lat)
    lat += missing
    upper += missing
    return {
        "measured": measured,
        "undelivered_after_30s": len(missing),
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "p99_ms": _pct(lat, 99),
        "max_ms": _pct(lat, 100),
        "min_ms": round(lat[0], 2) if lat and not math.isinf(lat[0]) else None,
        "from_commit_sent_p50_ms": _pct(upper, 50),
        "from_commit_sent_p99_ms": _pct(upper, 99),
        "missing": len(missing),
    }


# Stages of one event's latency, as (name, from, to): "commit" and "arrival" are the
# benchmark's and the receiver's clocks, the others columns of the pipeline's rows; all are
# time.time() or PostgreSQL's now() on the same machine.
Stage = tuple[str, str, str]
DAEMON_STAGES: tuple[Stage, ...] = (
    # NOTIFY delivery, the listener's wake-up, the loop's lag, the pool, the statement's send
    ("commit_to_fan_out_start", "commit", "written"),
    # the fan-out statement, its rows back, the attempt's Python up to signing the request
    ("fan_out_start_to_signed", "written", "signed"),
    # aiohttp's request, the kernel, the receiver's read of it
    ("signed_to_arrival", "signed", "arrival"),
    ("arrival_to_recorded", "arrival", "recorded"),
)
FLOOR_STAGES: tuple[Stage, ...] = (
    ("commit_to_heard", "commit", "heard"),  # NOTIFY delivery and the floor's wake-up
    ("heard_to_insert_start", "heard", "written"),  # its loop and the statement's send
    ("insert_start_to_sent", "written", "sent"),  # the insert, its answer, signing
    ("sent_to_arrival", "sent", "arrival"),  # aiohttp's request to the receiver's read
    ("arrival_to_recorded", "arrival", "recorded"),
)


def stages(
    commits: dict[str, float],
    arrived: dict[str, float],
    timeline: dict[str, Any],
    names: tuple[Stage, ...],
) -> dict[str, Any]:
    """Where each event's milliseconds went, stage by stage: the median of every stage over
    all events, and over the slowest 1 % of events (at least one),
    with the difference: which stage the tail's extra milliseconds are in."""
    per: list[tuple[float, dict[str, float]]] = []
    for event, commit in commits.items():
        if event not in arrived or event not in timeline:
            continue
        points = {**timeline[event], "commit": commit, "arrival": arrived[event]}
        row: dict[str, float] = {}
        for name, a, b in names:
            if points.get(a) is not None and points.get(b) is not None:
                row[name] = (float(points[b]) - float(points[a])) * 1000
        per.append(((arrived[event] - commit) * 1000, row))
    if not per:
        return {}
    per.sort(key=lambda x: x[0])
    slow = per[-max(1, math.ceil(len(per) / 100)) :]  # the slowest 1 %, at least one

    def medians(rows: list[tuple[float, dict[str, float]]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {"total_ms": round(statistics.median(t for t, _ in rows), 2)}
        for name, _, _ in names:
            vals = [r[name] for _, r in rows if name in r]
            out[name] = round(statistics.median(vals), 2) if vals else None
        return out

    every, tail = medians(per), medians(slow)
    return {
        "events": len(per),
        "slowest_events": len(slow),
        "median_all": every,
        "median_slowest_1pct": tail,
        "tail_excess_ms": {
            k: round(v - every[k], 2)  # type: ignore[operator]
            for k, v in tail.items()
            if v is not None and every.get(k) is not None
        },
    }
