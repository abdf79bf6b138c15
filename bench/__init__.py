"""The benchmark of issue 6: the daemon measured against this machine's ceilings.

Run ``python -m bench`` (full) or ``python -m bench --small``; see bench/README.md.
"""
