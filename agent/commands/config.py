"""`anomaly-agent config show`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from agent.commands.common import ConfigOption, config_from_cli


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)

    @group.command("show")
    def show(
        config: Path | None = ConfigOption,
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
    ) -> None:
        """Print the effective config (defaults < --config YAML < ANOMALY_AGENT_* env), secrets masked."""
        data = config_from_cli(config).masked()
        typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip())

    app.add_typer(group, name="config")
