"""`python -m dispatcher` runs the command-line interface."""

from dispatcher.cli import main

raise SystemExit(main())
