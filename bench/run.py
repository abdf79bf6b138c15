"""``python -m bench``: the benchmark of issue 6 in one command.

Starts a throwaway PostgreSQL and the receiver process, runs the selected scenarios in a
fixed order (ceiling first, the HTTP ceiling again at the end of a full run to bracket the
machine's noise), writes ``bench/results/<timestamp>.json`` and prints a markdown table.
Exit status 0 when every scenario completed and every delivery succeeded, 1 otherwise. Speed
never changes the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.drain import Drain
from bench.infra import ROOT, BenchCluster, DaemonSpec
from bench.receiver import ReceiverProcess, event_loop_name, run_loop
from bench.report import LADDER, markdown, profile_markdown, ratios
from bench.scenarios import Config, Scenarios

ORDER = (
    "ceiling",
    "intake",
    "drain1",
    "floor",
    "floor3",
    *LADDER,
    "drain",
    "ordered",
    "fanout",
    "slow",
    "hotquiet",
    "latency",
    "replicas",
    "cost",
)
# Run only when named in --only: the ladder's rungs (issue 12), not part of the matrix.
ON_REQUEST = frozenset(LADDER)
NEEDS_CEILING = {
    "drain1",
    "floor",
    "floor3",
    *LADDER,
    "drain",
    "ordered",
    "fanout",
    "hotquiet",
    "replicas",
    "cost",
}
RESULTS = Path(__file__).parent / "results"
# The figure that picks the median run when a scenario is repeated.
PRIMARY: dict[str, Callable[[dict[str, Any]], float]] = {
    "ceiling": lambda r: r["http"]["requests_per_s"],
    "intake": lambda r: r["ratio"],
    "drain1": lambda r: r["deliveries_per_s"],
    "floor": lambda r: r["deliveries_per_s"],
    "floor3": lambda r: r["deliveries_per_s"],
    **{name: (lambda r: r["deliveries_per_s"]) for name in LADDER},
    "drain": lambda r: r["deliveries_per_s"],
    "slow": lambda r: r["deliveries_per_s"],
    "hotquiet": lambda r: r["quiet_p99_ms"] or 0.0,
    "fanout": lambda r: r["deliveries_per_s"],
    "ordered": lambda r: r["ratio_ordered_to_unordered"],
    "latency": lambda r: r["p50_ms"] or 0.0,
    "replicas": lambda r: r["ratio_2_to_1"],
    "cost": lambda r: r["deliveries_per_s"],
}


def _latency_summary(r: dict[str, Any]) -> dict[str, Any]:
    floor = r.get("floor", {})
    return {
        "p50_ms": r["p50_ms"],
        "p95_ms": r["p95_ms"],
        "p99_ms": r["p99_ms"],
        "floor_p50_ms": floor.get("p50_ms"),
        "floor_p95_ms": floor.get("p95_ms"),
        "floor_p99_ms": floor.get("p99_ms"),
        "foreign_cpu_cores": r.get("sched", {}).get("window", {}).get("foreign_cpu_cores"),
        "floor_foreign_cpu_cores": floor.get("sched", {})
        .get("window", {})
        .get("foreign_cpu_cores"),
        # CPU per delivery of the daemon and of its backends, and its statements per
        # delivery (fewer events per fan-out on a quieter machine cost more per delivery)
        "daemon_cpu_ms": r.get("sched", {}).get("daemon", {}).get("cpu_ms_per_delivery"),
        "postgres_daemon_cpu_ms": r.get("sched", {})
        .get("postgres_daemon", {})
        .get("cpu_ms_per_delivery"),
        "statements_per_delivery": r.get("sql", {}).get("statements_per_delivery"),
    }


def _drain_summary(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "deliveries_per_s": r["deliveries_per_s"],
        "ratio_to_paired_ceiling": r.get("ratio_to_paired_ceiling"),
        "paired_ceiling_cpu_s_per_1000": r.get("paired_ceiling_cpu_s_per_1000"),
        "daemon_cpu_s_per_1000": r.get("daemon_cpu_s_per_1000"),
        "postgres_cpu_s_per_1000": r.get("postgres_cpu_s_per_1000"),
        "statements_per_delivery": r.get("sql", {}).get("statements_per_delivery"),
        "foreign_cpu_cores": r.get("foreign_cpu_cores"),
        # every run's PostgreSQL CPU per kind of server process (ms per delivery), the
        # reaped processes' and the server counters, not only the median run's
        "postgres_cpu_ms_by_kind": {
            k.removeprefix("postgres_"): v["cpu_ms_per_delivery"]
            for k, v in r.get("sched", {}).items()
            if k.startswith("postgres_")
        },
        "postgres_reaped_cpu_s_per_1000": r.get("postgres_reaped_cpu_s_per_1000"),
        "pg_counters_per_delivery": r.get("pg_counters_per_delivery"),
        "daemon_wait_samples": r.get("daemon_wait_samples"),
    }


def _hotquiet_summary(r: dict[str, Any]) -> dict[str, Any]:
    floor = r.get("floor", {})
    return {
        "hot_received_per_s": r["hot_received_per_s"],
        "quiet_p50_ms": r["quiet_p50_ms"],
        "quiet_p95_ms": r["quiet_p95_ms"],
        "quiet_p99_ms": r["quiet_p99_ms"],
        "floor_p50_ms": floor.get("p50_ms"),
        "floor_p95_ms": floor.get("p95_ms"),
        "floor_p99_ms": floor.get("p99_ms"),
        "foreign_cpu_cores": r.get("foreign_cpu_cores"),
        "quiet_window_foreign_cpu_cores": r.get("quiet_sched", {})
        .get("window", {})
        .get("foreign_cpu_cores"),
    }


# With --repeat, the headline figures of every run (the median run is kept whole).
SUMMARY: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "latency": _latency_summary,
    "hotquiet": _hotquiet_summary,
    "drain1": _drain_summary,
    "drain": _drain_summary,
    "floor3": _drain_summary,
    **dict.fromkeys(LADDER, _drain_summary),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a few hundred events (CI smoke run)")
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios among {','.join(ORDER)} (the ceiling is added when a "
        f"ratio needs it; {','.join(LADDER)} run only when named)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="never run the ceiling")
    p.add_argument("--events", type=int, help="drain and replicas backlog (default 20000)")
    p.add_argument(
        "--drain1-events", type=int, help="one-webhook backlog, also floor's (default 20000)"
    )
    p.add_argument("--hot-events", type=int, help="hot webhook's backlog (default 10000)")
    p.add_argument("--orgs", type=int, help="drain: orgs with one webhook each (default 16)")
    p.add_argument("--fanout-events", type=int, help="fan-out events (default 2000)")
    p.add_argument("--fanout-webhooks", type=int, help="fan-out webhooks per event (default 10)")
    p.add_argument("--latency-rate", type=float, help="events/s offered (default 200)")
    p.add_argument("--latency-seconds", type=float, help="measured seconds (default 20)")
    p.add_argument("--intake-seconds", type=float, help="seconds per intake run (default 5)")
    p.add_argument("--cost-events", type=int, help="cost backlog (default 100000)")
    p.add_argument("--timeout", type=float, help="seconds a drain may take (default 600)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario N times and report the median run (all values kept)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also drain once more (drain, else drain1) with py-spy attached to the daemon "
        "(figures not used in ratios); writes the collapsed stacks beside the JSON",
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="`perf record` every CPU during each drain; the JSON gets self time by symbol of "
        "the PostgreSQL server processes and of the daemon (or floor): do not use its rates",
    )
    p.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra DISPATCHER_* setting for the daemons, e.g. DISPATCHER_CONCURRENCY=128",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="add this to the scheduling priority of the benchmark and everything it starts "
        "(negative needs root: shields the figures from other work on a shared machine)",
    )
    p.add_argument("--output", type=Path, help="JSON path (default bench/results/<ts>.json)")
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> list[str]:
    wanted = {w.strip() for w in args.only.split(",") if w.strip()} or set(ORDER) - ON_REQUEST
    unknown = wanted - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {ORDER}")
    if wanted & NEEDS_CEILING and not args.no_ceiling:
        wanted.add("ceiling")
    if args.no_ceiling:
        wanted.discard("ceiling")
    return [name for name in ORDER if name in wanted]


def config(args: argparse.Namespace) -> Config:
    base = Config.small() if args.small else Config()
    return base.with_overrides(
        drain_events=args.events,
        drain1_events=args.drain1_events,
        hot_events=args.hot_events,
        orgs=args.orgs,
        fanout_events=args.fanout_events,
        fanout_webhooks=args.fanout_webhooks,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        intake_seconds=args.intake_seconds,
        cost_events=args.cost_events,
        timeout=args.timeout,
    )


def _commit() -> str:
    """HEAD of the measured tree (read-only git), else $BENCH_COMMIT (for an exported tree)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return head or os.environ.get("BENCH_COMMIT", "unknown")


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(args)
    names = selected(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output or RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = DaemonSpec(dict(kv.split("=", 1) for kv in args.daemon_env))
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "mode": "small" if args.small else "full",
        "scenarios": names,
        "commit": _commit(),
        "source": str(ROOT),
        "python": platform.python_version(),
        "event_loop": event_loop_name(),
        "cpus": os.cpu_count(),
        "loadavg_start": _load(),
        "daemon_env": spec.effective(),
        "daemon_log_level": spec.log_level(),
        "config": cfg.__dict__,
        "repeat": args.repeat,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    res: dict[str, Any] = {"meta": meta, "scenarios": {}, "errors": {}}
    cluster = BenchCluster()
    receiver = ReceiverProcess()
    started = time.monotonic()
    try:
        await asyncio.to_thread(cluster.start)
        meta["postgres"] = cluster.server_version
        meta["cluster_settings"] = cluster.pg.settings
        receiver.start()
        drain = Drain(cluster, receiver, spec, cfg.timeout, cfg.paired_ceiling_requests)
        if args.perf:
            drain.perf_dir = out.with_suffix(".perf")
            drain.perf_dir.mkdir(parents=True, exist_ok=True)
        sc = Scenarios(drain, cfg, out.parent, stamp)
        for name in names:
            _progress(f"{name} ...")
            try:
                res["scenarios"][name] = await _measure(sc, name, max(1, args.repeat))
            except Exception as exc:
                res["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        profiled = "drain" if "drain" in names else "drain1" if "drain1" in names else None
        if args.profile and profiled:
            _progress(f"{profiled} with py-spy ...")
            try:
                res["profiled_drain"] = await getattr(sc, profiled)(
                    profile=out.with_suffix(".pyspy.txt")
                )
                res["profiled_drain"]["scenario"] = profiled
            except Exception as exc:
                res["errors"]["profiled_drain"] = f"{type(exc).__name__}: {exc}"
        if args.profile and "latency" in names:  # py-spy on the daemon at the offered rate
            _progress("latency with py-spy ...")
            try:
                res["profiled_latency"] = await sc.latency(
                    profile=out.with_suffix(".latency.pyspy.txt")
                )
            except Exception as exc:
                res["errors"]["profiled_latency"] = f"{type(exc).__name__}: {exc}"
        # the floor process, for comparison: the floor, else the highest rung of the ladder
        floor = next((n for n in ("floor", *reversed(LADDER)) if n in names), None)
        if args.profile and floor:
            _progress(f"{floor} with py-spy ...")
            try:
                res["profiled_floor"] = await getattr(sc, floor)(
                    profile=out.with_suffix(".floor.pyspy.txt")
                )
                res["profiled_floor"]["scenario"] = floor
            except Exception as exc:
                res["errors"]["profiled_floor"] = f"{type(exc).__name__}: {exc}"
        if cfg.ceiling_twice and "ceiling" in res["scenarios"] and len(names) > 1:
            _progress("ceiling again ...")
            res["scenarios"]["ceiling_after"] = await sc.http_ceiling_again()
    finally:
        await receiver.aclose()
        receiver.stop()
        await asyncio.to_thread(cluster.cleanup)
    meta["loadavg_end"] = _load()
    meta["seconds"] = round(time.monotonic() - started, 1)
    res["ratios"] = ratios(res["scenarios"])
    res["all_success"] = not res["errors"] and all(
        v.get("all_success", True) for v in res["scenarios"].values()
    )
    out.write_text(json.dumps(res, indent=2, default=str))
    res["meta"]["output"] = str(out)
    return res


async def _measure(sc: Scenarios, name: str, repeat: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for i in range(repeat):
        if i:
            _progress(f"{name} (run {i + 1} of {repeat}) ...")
        runs.append(await getattr(sc, name)())
    if repeat == 1:
        return runs[0]
    values = [PRIMARY[name](r) for r in runs]
    order = sorted(range(repeat), key=lambda i: values[i])
    chosen: dict[str, Any] = dict(runs[order[repeat // 2]])
    chosen["repeats"] = [round(v, 3) for v in values]
    if name in SUMMARY:
        chosen["runs"] = [SUMMARY[name](r) for r in runs]
    chosen["all_success"] = all(r.get("all_success", True) for r in runs)
    return chosen


def _progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # inherited by PostgreSQL, the receiver and the daemons
    res = run_loop(run(args))
    print(markdown(res))
    for key in ("profiled_drain", "profiled_latency", "profiled_floor"):
        if key in res and "profile" in res[key]:
            print(f"\n{key}:\n")
            print(profile_markdown(res[key]["profile"]))
    print(f"\nresults: {res['meta']['output']}")
    if not res["all_success"]:
        print("some scenarios failed or some deliveries did not succeed", file=sys.stderr)
        return 1
    return 0
