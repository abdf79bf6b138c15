"""The operator's side: the admin API (api.py, sequences.py, quarantine.py, integrations.py:
validation and SQL) and the commands that parse and print (*_cli.py, shared helpers in
commands.py, formatting in format.py). dispatcher/cli.py wires the commands in."""
