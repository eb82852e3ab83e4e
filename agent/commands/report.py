"""`anomaly-agent report RUN [--compare RUN2 ...]`: tables (terminal, markdown) and report.html."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run: Path = typer.Argument(..., help="Run directory written by `anomaly-agent eval`."),
        compare: list[Path] | None = typer.Option(None, "--compare", help="Other run directories; shows deltas to RUN. Repeatable."),
        top_k: int = typer.Option(4, "--top", help="Worst false positives / negatives shown per category."),
        recompute: bool = typer.Option(False, "--recompute", help="Recompute metrics.json from results.jsonl."),
        markdown: bool = typer.Option(False, "--markdown", help="Print the markdown table instead of the rich one."),
    ) -> None:
        """Summarise a run (and compare runs): per-category table and report.html with pictures."""
        from rich.console import Console

        from evals.report import load_run, markdown_table, print_table, write_report

        runs = [load_run(run, recompute=recompute), *[load_run(c, recompute=recompute) for c in compare or []]]
        html = write_report(run, compare=list(compare or []), top_k=top_k)
        if markdown:
            typer.echo(markdown_table(runs), nl=False)
        else:
            print_table(runs)
        Console(stderr=True).print(f"report: {html}")
