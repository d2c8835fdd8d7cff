"""Coverage of tenant images: counts (counts.py), Amazon Inspector's view (inspector.py), the gauge (gauge.py) and
the `coverage` command (command.py). Importing this package imports none of them (the CLI stays cheap to start)."""
