"""`anomaly-agent doctor [--json]`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, config_from_cli


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        base_url: str | None = typer.Option(None, "--base-url", help="Check this OpenAI-compatible endpoint."),
        backend: str | None = typer.Option(None, "--backend", help="Check what this backend needs."),
        config: Path | None = ConfigOption,
    ) -> None:
        """Check Python, torch, weights of every configured model, the model endpoint and the memory location.

        Exits 1 only when something the current config needs is missing.
        """
        from agent.doctor import report

        cfg = config_from_cli(config, base_url=base_url, backend=backend)
        data = report(cfg)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            from rich.console import Console
            from rich.table import Table

            env = data["environment"]
            console = Console(highlight=False)
            console.print(f"python {env['python']}, torch {env['torch']}, device {env['device']}"
                          f" (cuda: {env['cuda_device'] or 'not available'}), backend {data['backend']}")
            table = Table("check", "status", "needed", "detail", show_lines=False)
            for c in data["checks"]:
                status = "[green]ok[/green]" if c["ok"] else ("[red]MISSING[/red]" if c["needed"] else "[yellow]absent[/yellow]")
                table.add_row(c["name"], status, "yes" if c["needed"] else "no", c["detail"])
            console.print(table)
            console.print("[green]ready[/green]" if data["ok"] else "[red]something the config needs is missing[/red]")
        raise typer.Exit(0 if data["ok"] else 1)
