"""`anomaly-agent detect IMG...`: verdicts with scores, regions and explanations.

Exit codes: 0 = ran (whatever the verdicts); 1 = with --fail-on-anomaly, some image is anomalous;
2 = bad input or config; 3 = model/server failure; 4 = internal error (a bug: please report it).
Every image is judged even when one fails; the exit code reports the worst failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, config_from_cli, print_json_line
from agent.schemas import Verdict

EXIT_FOR_ERROR = {"input": 2, "model": 3, "timeout": 3, "internal": 4}


def references_arg(refs: list[str] | None) -> list[str] | str | None:
    """--refs values: one folder/glob/"memory" stays a string; several are a list of paths/globs."""
    if not refs:
        return None
    return refs[0] if len(refs) == 1 else list(refs)


def print_verdict(verdict: Verdict, overlay: str | None = None) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    if verdict.status == "error":
        console.print(f"[bold]{verdict.image}[/bold]: [red]ERROR[/red] {verdict.error}")
        return
    colour = "red" if verdict.pred_label == "anomalous" else "green"
    console.print(
        f"[bold]{verdict.image}[/bold]: [{colour}]{verdict.pred_label.upper()}[/{colour}] "
        f"score {verdict.pred_score:.3f} (threshold {verdict.threshold:.2f}, from {verdict.score_source})"
        + (f", defect: {verdict.defect_type}" if verdict.defect_type else "")
    )
    for region in verdict.regions:
        score = f" score {region.score:.2f}" if region.score is not None else ""
        console.print(f"  region {tuple(region.bbox_xyxy)} {region.label}{score}")
    console.print(f"  {verdict.explanation}", soft_wrap=True)
    if overlay:
        console.print(f"  overlay: {overlay}")


def exit_code(verdicts: list[Verdict], fail_on_anomaly: bool) -> int:
    codes = [EXIT_FOR_ERROR.get(v.error_kind or "internal", 4) for v in verdicts if v.status == "error"]
    if codes:
        return max(codes)
    if fail_on_anomaly and any(v.pred_label == "anomalous" for v in verdicts):
        return 1
    return 0


def register(app: typer.Typer) -> None:
    @app.command("detect")
    def detect(
        images: list[str] = typer.Argument(..., help="Image files to judge."),
        category: str | None = typer.Option(None, "--category", "-c", help="Class name, e.g. 'bottle'."),
        refs: list[str] | None = typer.Option(None, "--refs", help="Normal references: folder, glob, file(s), or 'memory'. Repeatable."),
        memory: Path | None = typer.Option(None, "--memory", help="Memory store folder (default: config memory_path)."),
        backend: str | None = typer.Option(None, "--backend", help="auto | openai | transformers | scripted | none."),
        base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM), e.g. http://localhost:8000/v1."),
        model: str | None = typer.Option(None, "--model", help="Model id served at --base-url."),
        script: Path | None = typer.Option(None, "--script", help="Scripted backend: a JSON/YAML script or a saved trace."),
        threshold: float | None = typer.Option(None, "--threshold", help="Decision threshold on the fused score."),
        as_json: bool = typer.Option(False, "--json", help="One JSON line per image."),
        out: Path | None = typer.Option(None, "--out", help="Write overlay PNGs (map + boxes) here."),
        trace: Path | None = typer.Option(None, "--trace", help="Save each run's trace (messages, tool calls, maps) here."),
        fail_on_anomaly: bool = typer.Option(False, "--fail-on-anomaly", help="Exit 1 when any image is anomalous."),
        config: Path | None = ConfigOption,
    ) -> None:
        """Judge images: normal or anomalous, how confident, where, and why."""
        from agent.api import AnomalyAgent

        cfg = config_from_cli(config, backend=backend, base_url=base_url, model=model, script=script,
                              memory_path=memory, threshold=threshold)
        agent = AnomalyAgent.from_config(cfg)
        print(f"backend: {agent.backend.name} ({agent.backend_note})", file=sys.stderr)
        references = references_arg(refs)
        verdicts = []
        for image in images:
            verdict = agent.detect(image, category=category, references=references, trace_dir=trace)
            overlay = None
            if out is not None and verdict.status == "ok":
                from agent.overlays import write_verdict_overlay

                overlay = write_verdict_overlay(verdict, image, out / f"{Path(image).stem}_overlay.png",
                                                cfg.max_image_pixels)
            if as_json:
                print_json_line({**verdict.model_dump(mode="json"), "image": image,
                                 **({"overlay": overlay} if overlay else {})})
            else:
                print_verdict(verdict, overlay)
            if verdict.status == "error":
                print(f"error: {verdict.error}", file=sys.stderr)
            verdicts.append(verdict)
        raise typer.Exit(exit_code(verdicts, fail_on_anomaly))
