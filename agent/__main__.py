"""`python -m agent` runs the CLI."""

from agent.cli import run

run()
