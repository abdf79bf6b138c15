"""Ratios against the ceiling and issue 6's targets, and the markdown table."""

from __future__ import annotations

from typing import Any

Results = dict[str, Any]
# floor3 with the daemon's pieces swapped in, one more per rung (bench/floor.py --real)
LADDER = ("rung_request", "rung_fanout", "rung_claim", "rung_outcome")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def http_ceiling(s: Results) -> float | None:
    runs = [s["ceiling"]["http"]["requests_per_s"]] if "ceiling" in s else []
    if "ceiling_after" in s:
        runs.append(s["ceiling_after"]["requests_per_s"])
    return sum(runs) / len(runs) if runs else None


def ratios(s: Results) -> dict[str, Any]:
    """Every ratio the issue sets a target for, from the figures of one run."""
    ceiling = http_ceiling(s)
    out: dict[str, Any] = {"http_ceiling_per_s": round(ceiling, 1) if ceiling else None}

    def rate(name: str) -> float | None:
        return s[name]["deliveries_per_s"] if name in s else None

    def paired(run: dict[str, Any]) -> float | None:
        return run.get("ratio_to_paired_ceiling")

    for name in ("drain1", "floor", "floor3", *LADDER, "drain", "fanout"):
        r = rate(name)
        if r is not None and ceiling:
            out[f"{name}_to_ceiling"] = round(r / ceiling, 3)
        if name in s and paired(s[name]):
            out[f"{name}_to_paired_ceiling"] = paired(s[name])
    for name in ("floor", "floor3", *LADDER):
        # the same backlog drained by the durable floor: how far drain1 is from it
        if name in s and "drain1" in s:
            out[f"drain1_to_{name}"] = round(s["drain1"]["deliveries_per_s"] / rate(name), 3)
            p_one, p_floor = paired(s["drain1"]), paired(s[name])
            if p_one and p_floor:
                out[f"drain1_to_{name}_paired"] = round(p_one / p_floor, 3)
    drain, fanout = rate("drain"), rate("fanout")
    if drain and fanout:
        out["fanout_to_drain"] = round(fanout / drain, 3)
        p_drain, p_fanout = paired(s["drain"]), paired(s["fanout"])
        if p_drain and p_fanout:
            # each rate divided by the ceiling measured just before it: noise cancels
            out["fanout_to_drain_paired"] = round(p_fanout / p_drain, 3)
    if "ordered" in s:
        out["ordered_to_unordered"] = s["ordered"]["ratio_ordered_to_unordered"]
        out["ordered_to_unordered_paired"] = s["ordered"].get("ratio_ordered_to_unordered_paired")
    if "slow" in s:
        out["slow_to_cap_over_latency"] = s["slow"]["ratio_to_cap_over_latency"]
        out["slow_to_bare_client"] = s["slow"].get("ratio_to_bare_client")
    if "hotquiet" in s:
        out["hot_to_paired_ceiling"] = s["hotquiet"].get("hot_ratio_to_paired_ceiling")
        out["quiet_p99_ms"] = s["hotquiet"]["quiet_p99_ms"]
    if "replicas" in s:
        out["replicas_2_to_1"] = s["replicas"]["ratio_2_to_1"]
        one, two = paired(s["replicas"]["1"]), paired(s["replicas"]["2"])
        if one and two:
            out["replicas_2_to_1_paired"] = round(two / one, 3)
    if "intake" in s:
        out["intake_with_to_without"] = s["intake"]["ratio"]
    if "cost" in s and "ceiling" in s:
        out["daemon_cpu_to_bare_client"] = round(
            s["cost"]["daemon_cpu_s_per_1000"] / s["ceiling"]["http"]["client_cpu_s_per_1000"], 2
        )
    return out


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def markdown(res: Results) -> str:
    s, r, meta = res["scenarios"], res["ratios"], res["meta"]
    rows: list[tuple[str, str, str, str, str]] = []
    ceiling = r.get("http_ceiling_per_s")
    if "ceiling" in s:
        http = s["ceiling"]["http"]
        runs = _num(http["requests_per_s"])
        if "ceiling_after" in s:
            runs += f" before, {_num(s['ceiling_after']['requests_per_s'])} after"
        rows.append(
            (
                "ceiling",
                "HTTP: bare aiohttp, 64 connections, signed ~1 KB",
                f"{_num(ceiling)} req/s ({runs})",
                "reference",
                "",
            )
        )
        rows.append(
            (
                "ceiling",
                "PostgreSQL: claim 100 SKIP LOCKED + update + insert, 1 conn",
                f"{_num(s['ceiling']['postgres']['rows_per_s'])} rows/s",
                "reference",
                "",
            )
        )
    if "drain1" in s:
        d = s["drain1"]
        ratio = r.get("drain1_to_paired_ceiling") or r.get("drain1_to_ceiling")
        rows.append(
            (
                "drain1",
                f"{d['events']:,} events to one webhook, 1 daemon",
                f"{_num(d['deliveries_per_s'])} /s",
                f"{_num(r.get('drain1_to_ceiling'), 2)}x ceiling, "
                f"{_num(r.get('drain1_to_paired_ceiling'), 2)}x paired (>= 0.5)",
                _met(ratio >= 0.5 if ratio else None),
            )
        )
    for name in ("floor", "floor3", *LADDER):
        if name not in s:
            continue
        d = s[name]
        ratio = r.get(f"{name}_to_paired_ceiling") or r.get(f"{name}_to_ceiling")
        beside = r.get(f"drain1_to_{name}_paired")
        what = f"drain1's backlog, durable floor, {d['writes_per_row']} writes per row"
        if d.get("real"):
            what = f"floor3 with the daemon's {', '.join(d['real'])}"
        rows.append(
            (
                name,
                what,
                f"{_num(d['deliveries_per_s'])} /s",
                f"{_num(r.get(f'{name}_to_ceiling'), 2)}x ceiling, "
                f"{_num(r.get(f'{name}_to_paired_ceiling'), 2)}x paired (>= 0.5)"
                # drain1 against the floor only when drain1 ran in the same run
                + (f"; drain1 {_num(beside, 2)}x it, paired" if beside is not None else ""),
                _met(ratio >= 0.5 if ratio else None),
            )
        )
    for name in ("drain1", "floor", "floor3", *LADDER):
        if name in s and any(f in s for f in ("floor", "floor3", *LADDER)):
            d = s[name]
            rows.append(
                (
                    name,
                    "CPU ms per delivery: process / PostgreSQL / receiver (foreign cores)",
                    f"{_num(d['daemon_cpu_s_per_1000'], 3)} / "
                    f"{_num(d['postgres_cpu_s_per_1000'], 3)} / "
                    f"{_num(d['receiver_cpu_s_per_1000'], 3)}",
                    f"({_num(d['foreign_cpu_cores'], 2)})",
                    "",
                )
            )
    if "drain" in s:
        d = s["drain"]
        ratio = r.get("drain_to_paired_ceiling") or r.get("drain_to_ceiling")
        rows.append(
            (
                "drain",
                f"{d['events']:,} events, 1 daemon",
                f"{_num(d['deliveries_per_s'])} /s",
                f"{_num(r.get('drain_to_ceiling'), 2)}x ceiling, "
                f"{_num(r.get('drain_to_paired_ceiling'), 2)}x paired (>= 0.5)",
                _met(ratio >= 0.5 if ratio else None),
            )
        )
    if "ordered" in s:
        o = s["ordered"]
        ratio = r.get("ordered_to_unordered_paired") or r.get("ordered_to_unordered")
        rows.append(
            (
                "ordered",
                f"{o['ordered']['events']:,} events, {o['ordered']['keys_per_webhook']} keys per "
                "webhook, ordered vs unordered",
                f"{_num(o['ordered']['deliveries_per_s'])} /s vs "
                f"{_num(o['unordered']['deliveries_per_s'])} /s",
                f"{_num(r.get('ordered_to_unordered'), 2)}x, "
                f"{_num(r.get('ordered_to_unordered_paired'), 2)}x paired (>= 0.5)",
                _met(ratio >= 0.5 if ratio else None),
            )
        )
    if "fanout" in s:
        f = s["fanout"]
        ratio = r.get("fanout_to_drain_paired") or r.get("fanout_to_drain")
        rows.append(
            (
                "fan-out",
                f"{f['events']:,} events x {f['webhooks']} webhooks",
                f"{_num(f['deliveries_per_s'])} /s",
                f"{_num(r.get('fanout_to_paired_ceiling'), 2)}x paired ceiling; "
                f"{_num(r.get('fanout_to_drain'), 2)}x drain, "
                f"{_num(r.get('fanout_to_drain_paired'), 2)}x paired (>= 1)",
                _met(ratio >= 1 if ratio else None),
            )
        )
    if "slow" in s:
        sl = s["slow"]
        rows.append(
            (
                "slow",
                f"{sl['events']:,} events, endpoint answers after "
                f"{sl['endpoint_latency_s'] * 1000:.0f} ms",
                f"{_num(sl['deliveries_per_s'])} /s",
                f"{_num(sl['ratio_to_cap_over_latency'], 2)}x cap/latency "
                f"({_num(sl['cap_over_latency_per_s'])} /s) (>= 0.9); a bare client "
                f"{_num(sl.get('bare_client_to_cap_over_latency'), 2)}x, the daemon "
                f"{_num(sl.get('ratio_to_bare_client'), 2)}x of it",
                _met(sl["ratio_to_cap_over_latency"] >= 0.9),
            )
        )
    if "hotquiet" in s:
        h = s["hotquiet"]
        p99 = h["quiet_p99_ms"]
        rows.append(
            (
                "hot+quiet",
                f"{h['hot_events']:,} to one webhook, {h['quiet_events']} events to "
                f"{h['quiet_webhooks']} quiet ones at {_num(h['quiet_rate_per_s'])}/s",
                f"hot {_num(h['hot_received_per_s'])} /s; quiet p50 "
                f"{_num(h['quiet_p50_ms'], 1)} / p99 {_num(p99, 1)} ms",
                f"hot {_num(h.get('hot_ratio_to_paired_ceiling'), 2)}x paired; quiet p99 <= 20 "
                f"ms ({_num(h['quiet_during_hot'] * 100)} % during the hot drain)",
                _met(p99 <= 20 if p99 is not None else False),
            )
        )
    if "latency" in s:
        lat = s["latency"]
        p50, p99 = lat["p50_ms"], lat["p99_ms"]
        ok = p50 is not None and p99 is not None and p50 <= 3 and p99 <= 10
        rows.append(
            (
                "latency",
                f"{_num(lat['offered_per_s'])} events/s for {_num(lat['seconds'])} s, "
                "commit->arrival",
                f"p50 {_num(lat['p50_ms'], 1)} / p95 {_num(lat['p95_ms'], 1)} / "
                f"p99 {_num(lat['p99_ms'], 1)} ms"
                + (
                    f", {lat['undelivered_after_30s']} never arrived"
                    if lat.get("undelivered_after_30s")
                    else ""
                ),
                f"p50 <= 3, p99 <= 10 ms (issue 6); p99 <= 5 ms (issue 12); from COMMIT sent "
                f"p50 {_num(lat.get('from_commit_sent_p50_ms'), 1)} / p99 "
                f"{_num(lat.get('from_commit_sent_p99_ms'), 1)} ms",
                _met(ok) + (" / " + _met(p99 <= 5) if p99 is not None else ""),
            )
        )
    if "latency" in s and "floor" in s["latency"]:
        fl = s["latency"]["floor"]
        rows.append(
            (
                "latency floor",
                "bare pipeline alone (NOTIFY, 1 insert, POST, 1 update), same rate",
                f"p50 {_num(fl['p50_ms'], 1)} / p95 {_num(fl['p95_ms'], 1)} / "
                f"p99 {_num(fl['p99_ms'], 1)} ms",
                "what any dispatcher needs here",
                "",
            )
        )
    if "hotquiet" in s and "floor" in s["hotquiet"]:
        fl = s["hotquiet"]["floor"]
        p99 = fl["p99_ms"]
        rows.append(
            (
                "hot+quiet floor",
                "the quiet events through the bare pipeline, during the hot drain",
                f"p50 {_num(fl['p50_ms'], 1)} / p95 {_num(fl['p95_ms'], 1)} / "
                f"p99 {_num(p99, 1)} ms",
                "p99 <= 20 ms even bare?",
                _met(p99 <= 20 if p99 is not None else None),
            )
        )
    for name, key in (("latency", "sched"), ("hotquiet", "quiet_sched")):
        if name in s and s[name].get(key):
            rows.append(
                (
                    f"{name} sched",
                    "waited for a CPU / on a CPU, ms per delivery (run queue, /proc schedstat)",
                    sched_text(s[name][key]),
                    f"foreign {_num(s[name][key]['window'].get('foreign_cpu_cores'), 2)}, steal "
                    f"{_num(s[name][key]['window']['steal_cores'], 2)} cores",
                    "",
                )
            )
    if "intake" in s:
        i = s["intake"]
        rows.append(
            (
                "intake",
                f"publish_event(), {i['publishers']} publishers ({i['tool']})",
                f"{_num(i['with_trigger_per_s'])} with / {_num(i['without_trigger_per_s'])} "
                "without trigger /s",
                f"{_num(i['ratio'], 2)} (>= 0.85)",
                _met(i["ratio"] >= 0.85),
            )
        )
    if "replicas" in s:
        rep = s["replicas"]
        rows.append(
            (
                "replicas",
                f"drain {rep['1']['events']:,} events, 1 vs 2 daemons",
                f"{_num(rep['1']['deliveries_per_s'])} / {_num(rep['2']['deliveries_per_s'])} /s",
                f"{_num(rep['ratio_2_to_1'], 2)}, "
                f"{_num(r.get('replicas_2_to_1_paired'), 2)} paired (>= 1)",
                _met((r.get("replicas_2_to_1_paired") or rep["ratio_2_to_1"]) >= 1),
            )
        )
    if "cost" in s:
        c = s["cost"]
        bare = s["ceiling"]["http"]["client_cpu_s_per_1000"] if "ceiling" in s else None
        rows.append(
            (
                "cost",
                f"CPU s per 1,000 deliveries ({c['deliveries']:,} backlog)",
                f"daemon {_num(c['daemon_cpu_s_per_1000'], 3)}, postgres "
                f"{_num(c['postgres_cpu_s_per_1000'], 3)}, receiver "
                f"{_num(c['receiver_cpu_s_per_1000'], 3)}",
                f"bare client {_num(bare, 3)}",
                "",
            )
        )
        at = ", ".join(f"{k} {v:.0f}" for k, v in c["rss_mb_at"].items())
        rows.append(
            (
                "cost",
                f"daemon peak RSS draining {c['deliveries']:,}",
                f"{_num(c['peak_rss_mb'])} MB",
                f"flat? at {at} MB",
                "",
            )
        )
        sql = c.get("sql", {})
        rows.append(
            (
                "cost",
                "SQL statements per delivery (pg_stat_statements)",
                _num(sql.get("statements_per_delivery"), 3),
                f"{_num(sql.get('exec_ms_per_delivery'), 3)} ms server time per delivery",
                "",
            )
        )
    lines = [
        "| scenario | what | figure | ratio (target) | met |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    for name, err in res.get("errors", {}).items():
        lines.append(f"| {name} | FAILED | {err.splitlines()[0][:120]} | | **no** |")
    lines.append("")
    lines.append(
        f"{meta['mode']} run {meta['timestamp']} at {meta['commit'][:10]}; {meta['cpus']} cores, "
        f"load average {meta['loadavg_start']} -> {meta['loadavg_end']}; PostgreSQL "
        f"{meta['postgres']} (fsync off); event loop {meta['event_loop']}; daemon log level "
        f"{meta.get('daemon_log_level', 'warning')}."
    )
    return "\n".join(lines)


def profile_markdown(profile: dict[str, Any]) -> str:
    lines = [f"py-spy: {profile['samples']} samples on CPU", "", "| self % | frame |", "|---|---|"]
    lines += [f"| {p['percent']} | {p['frame']} |" for p in profile["self"][:12]]
    lines += ["", "| self % by package | |", "|---|---|"]
    lines += [f"| {p['percent']} | {p['frame']} |" for p in profile["self_by_package"][:12]]
    lines += ["", "| inclusive % | frame |", "|---|---|"]
    lines += [f"| {p['percent']} | {p['frame']} |" for p in profile["inclusive"][:15]]
    return "\n".join(lines)


def sched_text(sched: dict[str, Any]) -> str:
    """'daemon 0.12 / 0.30, postgres_daemon ...': run-queue wait / CPU per delivery (ms)."""
    parts = [
        f"{kind} {v['wait_ms_per_delivery']:.3f} / {v['cpu_ms_per_delivery']:.3f}"
        for kind, v in sorted(sched.items())
        if kind != "window" and v.get("slices")
    ]
    return ", ".join(parts)
