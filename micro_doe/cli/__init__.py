"""The `micro-doe` command line (typer)."""
