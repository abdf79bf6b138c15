"""`dispatcher demo`: the walkthrough (walkthrough.py), its receiver (receiver.py), a throwaway
PostgreSQL (embedded.py) and the Python reference copy of the SQL pattern matcher
(patterns.py)."""
