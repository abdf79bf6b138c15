"""The fault test's settings, webhooks and schedule: every fault of a run drawn from its seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

LEASE = 12.0
HTTP_TIMEOUT = 2.0
DAEMONS = 3
STUCK_MARGIN = 10.0  # seconds a due row may wait for a process (poll 0.5 s, retry <= 2 s)
TENANT_BOUND = 6.0  # seconds from commit to the healthy org's receipt
TENANT_MIN_CHECKED = 5
DRAIN_TIMEOUT = 60.0
EVENT_TYPES = ["job.created", "job.updated", "candidate.hired"]

# (org, path) -> (patterns, status)
WEBHOOKS: dict[tuple[str, str], tuple[list[str], str]] = {
    ("A", "/a/all"): (["*"], "active"),
    ("B", "/b/all"): (["*"], "active"),
    ("B", "/b/jobs"): (["job.*"], "active"),
    ("B", "/b/created"): (["job.created"], "active"),
    ("B", "/b/inactive"): (["*"], "inactive"),
}
FLAPPING = ["/b/all", "/b/jobs", "/b/created"]
# Ordered webhooks (dispatcher.set_webhook_ordered): two of B's flapping ones; /b/created stays
# unordered beside them, and A's is unordered (a SIGKILLed sender's key would wait a lease,
# longer than TENANT_BOUND).
ORDERED = ["/b/all", "/b/jobs"]
KEYS = 4  # aggregate ids the publisher draws from (per org, from Random(seed + 1))
KEYED = 0.8  # the share of events with one of them; the others get a fresh aggregate id
PARK = 30.0  # delivery_fan_out parks a keyed delivery behind an open one of its key this long
GLOBAL_KINDS = {"sigkill", "sigterm", "pg_restart", "backend_kill"}  # and term_in_slow_claim


# The dns_hang fault: the daemons resolve webhook hosts through a stub DNS server
# (tests/support/dns_stub.py, DISPATCHER_DNS_SERVERS) with a short DISPATCHER_DNS_TIMEOUT; every
# webhook URL names a host in DNS_ZONE (the healthy org's too, so its lookups share the
# resolver with the hanging ones).
DNS_ZONE = "fuzz.test"
DNS_TIMEOUT = 1.0
DNS_SERVER_SETTINGS = ("dns_servers",)
DNS_HANG_WIRED = True


def dns_setting() -> str | None:
    """The resolver-address setting of this build, if it has one of DNS_SERVER_SETTINGS."""
    from dispatcher.settings import Settings

    return next((n for n in DNS_SERVER_SETTINGS if n in Settings.model_fields), None)


def dns_hang_state() -> str:
    setting = dns_setting()
    if setting is None:
        return "unavailable (no resolver setting)"
    return "on" if DNS_HANG_WIRED else f"not wired (setting {setting} exists)"


# --- schedule -------------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds from the start of the fault phase
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"t+{self.at:5.1f}s {self.kind} {args}".rstrip()


WEIGHTS = {
    "sigkill": 3,
    "sigterm": 2,
    "pg_restart": 1,
    "backend_kill": 2,
    "hold_webhook": 2,
    "hold_deliveries": 2,
    "statement_timeout": 1,
    "term_in_slow_claim": 2,
    "flap": 5,
    "dns_hang": 1,
}


def schedule(seed: int, seconds: float, kinds: list[str]) -> list[Fault]:
    """The faults of one run, drawn from ``seed`` alone."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(1.0, 3.0)
    weights = [WEIGHTS[k] for k in kinds]
    while t < seconds:
        kind = rng.choices(kinds, weights)[0]
        args: dict[str, Any] = {}
        if kind in ("sigkill", "sigterm"):
            args = {
                "daemon": rng.randrange(DAEMONS),
                "restart_after": round(rng.uniform(0.2, 3), 1),
            }
        elif kind == "pg_restart":
            args = {"mode": rng.choice(["fast", "immediate"])}
        elif kind == "backend_kill":
            args = {"which": rng.choice(["all", "one", "listen"])}
        elif kind in ("hold_webhook", "hold_deliveries"):
            # up to past a lease: an admin editing a webhook, a long migration
            args = {"path": rng.choice(FLAPPING), "seconds": round(rng.uniform(2, LEASE + 6), 1)}
        elif kind == "statement_timeout":
            args = {
                "daemon": rng.randrange(DAEMONS),
                "ms": rng.choice([20, 100, 500]),
                "seconds": round(rng.uniform(3, 10), 1),
            }
        elif kind == "term_in_slow_claim":
            args = {
                "daemon": rng.randrange(DAEMONS),
                "path": rng.choice(FLAPPING),
                "seconds": round(rng.uniform(2, 4), 1),
            }
        elif kind == "flap":
            steps = []
            for _ in range(rng.randint(1, 3)):
                mode = rng.choice(["error", "hang", "reset", "slow"])
                steps.append((mode, round(rng.uniform(0.3, 2.5), 1)))
            args = {"path": rng.choice(FLAPPING), "steps": steps}
        elif kind == "dns_hang":
            args = {"seconds": round(rng.uniform(2, 8), 1)}
        faults.append(Fault(round(t, 2), kind, args))
        t += rng.uniform(1.0, 4.0)
    return faults
