"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from agent.config import AgentConfig, load_config

ConfigOption = typer.Option(None, "--config", help="YAML file of settings (see `config show`).")


def config_from_cli(config_file: Path | None, **flags: Any) -> AgentConfig:
    """Defaults < YAML < ANOMALY_AGENT_* env < the flags given (None = flag not given)."""
    return load_config(config_file, **flags)


def print_json_line(data: Any) -> None:
    """One JSON object per line on stdout (for --json)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
