"""`anomaly-agent chat IMG [--session ID] [--message TEXT]`: multi-turn questions about one image."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.commands.common import ConfigOption, config_from_cli
from agent.commands.detect import references_arg


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        image: str | None = typer.Argument(None, help="The image (needed to start a session)."),
        category: str | None = typer.Option(None, "--category", "-c"),
        refs: list[str] | None = typer.Option(None, "--refs", help="Normal references: folder, glob, file(s) or 'memory'."),
        session: str | None = typer.Option(None, "--session", help="Resume this session id (printed on every turn)."),
        message: str | None = typer.Option(None, "--message", "-m", help="One question, answered once (for scripts)."),
        backend: str | None = typer.Option(None, "--backend"),
        base_url: str | None = typer.Option(None, "--base-url"),
        model: str | None = typer.Option(None, "--model"),
        script: Path | None = typer.Option(None, "--script"),
        memory: Path | None = typer.Option(None, "--memory"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Ask about one image: "is it anomalous?", "where exactly?", "zoom into the top left", ...

        Sessions persist (config sessions_path) and resume with --session ID.
        """
        from rich.console import Console

        from agent.api import AnomalyAgent

        console = Console(highlight=False)
        cfg = config_from_cli(config, backend=backend, base_url=base_url, model=model, script=script, memory_path=memory)
        agent = AnomalyAgent.from_config(cfg)
        console.print(f"[dim]backend: {agent.backend.name} ({agent.backend_note})[/dim]", soft_wrap=True)
        references = references_arg(refs)

        def turn(text: str, first_image: str | None) -> str:
            reply = agent.chat(text, image=first_image, session=session_id, category=category, references=references)
            if reply.verdict is not None and reply.turn == 1:
                v = reply.verdict
                console.print(f"[bold]verdict:[/bold] {v.pred_label} (score {v.pred_score:.3f})")
            console.print(f"[bold cyan]agent:[/bold cyan] {reply.answer}", soft_wrap=True)
            console.print(f"[dim]session: {reply.session}[/dim]")
            return reply.session

        session_id = session
        if message is not None:
            turn(message, image)
            return
        console.print("Ask about the image; an empty line or Ctrl-D ends the chat.")
        first = image
        while True:
            try:
                text = console.input("[bold]you:[/bold] ").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if not text:
                break
            session_id = turn(text, first)
            first = None
