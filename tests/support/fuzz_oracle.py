"""The fault test's oracle: the invariants checked after a run, and the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispatcher.demo.patterns import matches

from .fuzz_receiver import Receipt
from .fuzz_schedule import (
    DRAIN_TIMEOUT,
    LEASE,
    ORDERED,
    TENANT_BOUND,
    TENANT_MIN_CHECKED,
    WEBHOOKS,
    Fault,
    dns_hang_state,
)

if TYPE_CHECKING:
    from .faultfuzz import FuzzRun, Published

ORDER_MIN_CHECKED = 20  # pairs of one key's successive events compared, for a note


@dataclass
class Report:
    seed: int
    seconds: float
    faults: list[Fault]
    counts: Counter[str]
    broken: dict[str, list[str]]
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.broken.values())

    def text(self) -> str:
        lines = [
            f"fault fuzz seed={self.seed} seconds={self.seconds:g}: "
            + ("OK" if self.ok else "BROKEN"),
            "faults: " + ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items())),
            "figures: " + ", ".join(f"{k}={v}" for k, v in self.figures.items()),
        ]
        lines += [f"note: {n}" for n in self.notes]
        for name, problems in self.broken.items():
            lines.append(f"invariant {name}: " + ("ok" if not problems else "BROKEN"))
            lines += [f"    {p}" for p in problems[:12]]
            if len(problems) > 12:
                lines.append(f"    ... and {len(problems) - 12} more")
        if not self.ok:
            lines.append(
                f"reproduce: DISPATCHER_FUZZ_SEED={self.seed} DISPATCHER_FUZZ_RUN_SECONDS="
                f"{self.seconds:g} .venv/bin/pytest tests/chaos/test_fault_fuzz.py -k seed -s"
            )
        lines.append("schedule:")
        lines += [f"    {f}" for f in self.faults]
        return "\n".join(lines)


def judge(run: FuzzRun, drained: bool) -> Report:
    """The invariants of a finished run (module docstring of faultfuzz.py)."""
    broken: dict[str, list[str]] = {}
    receipts = run.receiver.receipts
    owed = run.expected()

    missing = sorted(run._missing())
    lost = [f"event {e} never reached {p} with a 2xx" for e, p in missing]
    if not drained and not missing:
        lost.append(f"rows still pending/retrying {DRAIN_TIMEOUT:g} s after the faults")
    broken["delivered"] = lost

    rolled_back = {e.event_id for e in run.published if not e.committed}
    committed = {e.event_id: e for e in run.published if e.committed}
    wrong = []
    for r in receipts:
        if r.event_id in rolled_back:
            wrong.append(f"rolled-back event {r.event_id} sent to {r.path}")
        elif r.path == "/b/inactive":
            wrong.append(f"inactive webhook received event {r.event_id}")
        elif r.event_id in committed and (r.event_id, r.path) not in owed:
            if run.hooks[r.path] not in run.disabled:
                wrong.append(f"event {r.event_id} sent to non-subscribed {r.path}")
        elif r.event_id in run.lifecycle:
            org, event_type = run.lifecycle[r.event_id]
            patterns, _ = WEBHOOKS.get((org, r.path), ([], ""))
            if not any(matches(p, event_type) for p in patterns):
                wrong.append(f"lifecycle event {r.event_id} sent to non-subscribed {r.path}")
        elif r.event_id not in committed:
            wrong.append(f"unknown event {r.event_id} sent to {r.path}")
    broken["nothing unowed"] = wrong

    by_pair: dict[tuple[str, str], list[Receipt]] = defaultdict(list)
    for r in receipts:
        by_pair[(r.event_id, r.path)].append(r)
    unexplained, explained, ids_changed = [], 0, []
    killed_at = dict(run.kills)
    for pair, rs in by_pair.items():
        rs.sort(key=lambda r: r.at)
        ids = sorted({r.webhook_id for r in rs})
        if len(ids) > 1:
            ids_changed.append(f"event {pair[0]} to {pair[1]}: webhook-ids {ids}")
        first_ok = next((r for r in rs if r.status is not None and r.status < 300), None)
        if first_ok is None:
            continue
        for dup in rs[rs.index(first_ok) + 1 :]:
            sender = first_ok.sender or _presumed_sender(run, first_ok.at)
            tk = killed_at.get(sender or -1)
            # a presumed sender died just before its request was read
            sent = first_ok.at if first_ok.sender else first_ok.at - 2.0
            if tk is not None and sent <= tk <= min(dup.at, first_ok.at + LEASE):
                explained += 1
                continue
            if sender is None:
                how = "its sender had exited, and no process was SIGKILLed in the 2 s before"
            elif tk is None or tk > dup.at:
                how = f"its sender pid {sender} was not SIGKILLed in between"
            else:
                how = (
                    f"its sender pid {sender} was SIGKILLed {tk - first_ok.at:.1f} s "
                    "later, after the lease: the outcome was not written within its lease"
                )
            unexplained.append(
                f"event {pair[0]} to {pair[1]} (webhook-id {dup.webhook_id}): 2xx at "
                f"t+{first_ok.at - run.t0:.1f}s, again at t+{dup.at - run.t0:.1f}s "
                f"(delivery {dup.delivery_id}, pid {dup.sender}); {how}"
            )
    broken["no duplicate"] = unexplained
    broken["webhook-id stable"] = ids_changed

    broken["no stuck row"] = sorted(run.stuck.values()) + run.lease_too_long

    broken["in order per key"], order_checked, late_copies = order_per_key(run, owed)

    first_ok_at: dict[str, float] = {}
    for r in receipts:
        if r.path == "/a/all" and r.status is not None and r.status < 300:
            first_ok_at[r.event_id] = min(r.at, first_ok_at.get(r.event_id, r.at))
    slow, checked, latest = [], 0, 0.0
    for e in run.published:
        if e.org != "A" or not e.committed or e.ambiguous:
            continue
        lo, hi = e.at - 0.5, e.at + TENANT_BOUND
        if any(a <= hi and b >= lo for a, b in run.global_windows + run.blackouts):
            continue
        checked += 1
        got = first_ok_at.get(e.event_id)
        if got is not None:
            latest = max(latest, got - e.at)
        if got is None or got - e.at > TENANT_BOUND:
            took = f"{got - e.at:.1f} s" if got is not None else "never"
            slow.append(
                f"healthy org's event {e.event_id} published at t+{e.at - run.t0:.1f}s "
                f"reached it after {took} (bound {TENANT_BOUND:g} s); "
                f"other faults around: {_around(run, e.at)}"
            )
    notes = []
    if checked < TENANT_MIN_CHECKED:
        notes.append(
            f"premise: only {checked} healthy-org events away from global faults "
            f"(< {TENANT_MIN_CHECKED}): 'no tenant waits on another' proved little in this run"
        )
    broken["no tenant waits on another"] = slow

    broken["every fault carried out"] = list(run.harness_errors)
    broken["graceful stops exit 0"] = [
        f"pid {pid} exited {code} after SIGTERM" for pid, code in run.exit_codes if code
    ]
    figures = {
        "events": len(run.published),
        "committed": len(committed),
        "rolled_back": len(rolled_back),
        "owed": len(owed),
        "receipts": len(receipts),
        "sender_known": f"{sum(r.sender is not None for r in receipts)}/{len(receipts)}",
        "duplicates_after_kill": explained,
        "sigkills": len(run.kills),
        "holds_taken": run.holds_taken,
        "tenant_checked": checked,
        "order_checked": order_checked,  # successive events of one key to an ordered webhook
        "late_copies": late_copies,  # an earlier event's request after the next one's
        "tenant_max_seconds": round(latest, 1),  # the slowest checked healthy-org event
        "longest_due_seconds": round(run.longest_due, 1),  # unexcused, see "no stuck row"
        "auto_disabled": len(run.disabled),
        "dns_hang": dns_hang_state(),
        # B's lookups the stub DNS server left unanswered during dns_hang faults
        "dns_swallowed": sum(run.dns.swallowed.values()),
        # attempts recorded as failed lookups, of B (during dns_hang) and of A (none expected)
        "dns_failed_attempts": "B {}, A {}".format(*(run.dns_attempts.get(o, 0) for o in "BA")),
    }
    if order_checked < ORDER_MIN_CHECKED:
        notes.append(
            f"premise: only {order_checked} successive events of one key compared on the "
            f"ordered webhooks (< {ORDER_MIN_CHECKED}): 'in order per key' proved little"
        )
    if run.counts["dns_hang"] and not figures["dns_swallowed"]:
        notes.append("dns_hang was drawn but no lookup hung: the fault tested nothing")
    return Report(run.seed, run.seconds, run.faults, run.counts, broken, figures, notes)


def order_per_key(run: FuzzRun, owed: set[tuple[str, str]]) -> tuple[list[str], int, int]:
    """**in order per key**, on the ORDERED webhooks (docs/receivers.md, "Ordered webhooks":
    the next event of an aggregate_id is not sent before the previous one reached a final
    state for the webhook; within a key the numbers rise in commit order). The run replays
    nothing, so an event answered 2xx is final only once a 2xx was recorded, which needs that
    answer: for two events of one key owed to an ordered webhook, e committed before f (one
    publisher commits one at a time: list order is commit order, and outbox order),

    - no request of f, whatever its answer, arrives before the first 2xx arrival of e;
    - every request of e and f carries an X-InTime-Sequence, one per event, and f's is higher.

    An event never answered 2xx (given up on; "delivered" names it) is stepped over: its
    neighbours are compared. A copy of e arriving after f was sent (a request read late, a
    SIGKILLed sender's duplicate) breaks nothing here: at-least-once allows it, "no
    duplicate" judges it, and it is counted (``late_copies``). Returns the problems, the
    pairs compared and the late copies."""
    of_pair: dict[tuple[str, str], list[Receipt]] = defaultdict(list)
    for r in run.receiver.receipts:
        of_pair[(r.event_id, r.path)].append(r)
    problems: list[str] = []
    compared = late = 0
    for path in ORDERED:
        chains: dict[str, list[Published]] = defaultdict(list)
        for e in run.published:
            if e.key and (e.event_id, path) in owed:
                chains[e.key].append(e)
        for key, events in chains.items():
            prev: tuple[Published, Receipt] | None = None
            for e in events:
                rs = sorted(of_pair[(e.event_id, path)], key=lambda r: r.at)
                numbers = {r.sequence for r in rs}
                if rs and (len(numbers) > 1 or None in numbers):
                    got = ", ".join(map(str, sorted(numbers, key=lambda n: n or 0)))
                    problems.append(f"event {e.event_id} to {path}: X-InTime-Sequence {got}")
                ok = next((r for r in rs if r.status is not None and r.status < 300), None)
                if ok is None:
                    continue
                if prev is not None:
                    compared += 1
                    before, before_ok = prev
                    late += sum(r.at > rs[0].at for r in of_pair[(before.event_id, path)])
                    if rs[0].at < before_ok.at or (ok.sequence or 0) <= (before_ok.sequence or 0):
                        problems.append(
                            f"{path} key {key}: event {e.event_id} #{ok.sequence} (committed "
                            f"after {before.event_id} #{before_ok.sequence}) "
                            + _arrivals(run, rs)
                            + f"; {before.event_id}: "
                            + _arrivals(run, of_pair[(before.event_id, path)])
                        )
                prev = (e, ok)
    return problems, compared, late


def _arrivals(run: FuzzRun, rs: list[Receipt]) -> str:
    return ", ".join(
        f"t+{r.at - run.t0:.2f}s {r.status or 'cut'} (delivery {r.delivery_id[:8]}, pid {r.sender})"
        for r in sorted(rs, key=lambda r: r.at)
    )


def _presumed_sender(run: FuzzRun, at: float) -> int | None:
    """A receipt whose connection had no live owner among the daemons when it was read:
    sent by a process that had just died. The one SIGKILLed in the 2 s before, if any."""
    recent = [(tk, pid) for pid, tk in run.kills if at - 2.0 <= tk <= at]
    return max(recent)[1] if recent else None


def _around(run: FuzzRun, at: float) -> str:
    near = [f.kind for f in run.faults if at - LEASE - 4 <= run.t0 + f.at <= at + TENANT_BOUND]
    return ", ".join(near) or "none"
