"""Integrations upkeep: the worker (worker.py) refreshes OAuth tokens (token_refresh.py,
oauth.py), probes health (health_checks.py, verdicts in verdict.py), fails over to a backup
(failover.py), announces what it did (events.py), counts it for /metrics (stats.py), and
re-encrypts secrets at rest (reencrypt.py). The daemon wires it in dispatcher/app.py."""
