"""Real-world test infrastructure: PostgreSQL cluster, HTTP receiver, TCP proxy, daemon process.

Import as ``from support.pg import PgCluster`` etc.; ``tests/`` is put on ``sys.path`` by
``tests/conftest.py``.
"""
