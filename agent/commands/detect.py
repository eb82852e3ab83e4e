"""`anomaly-agent detect IMG...`: verdicts with scores, regions and explanations.

Exit codes: 0 = ran (whatever the verdicts); 1 = with --fail-on-anomaly, some image is anomalous;
2 = bad input or config; 3 = model/server failure; 4 = internal error (a bug: please report it).
Every image is judged even when one fails. Precedence: with --fail-on-anomaly, 1 wins whenever any
image is anomalous, even if others failed (a gate must never miss an anomaly; the failures are still
printed and counted in the summary line); otherwise the worst failure (4 > 3 > 2), else 0.
A folder argument stands for its image files (sorted, not recursive), like --refs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from agent.commands.common import (
    ConfigOption,
    PolicyOption,
    config_from_cli,
    expand_images,
    print_json_line,
    unique_stems,
)

if TYPE_CHECKING:  # imported when detect runs (keeps `--help` fast)
    from agent.schemas import Verdict

EXIT_FOR_ERROR = {"input": 2, "model": 3, "timeout": 3, "internal": 4}


def references_arg(refs: list[str] | None) -> list[str] | str | None:
    """--refs values: one folder/glob/"memory" stays a string; several are a list of paths/globs."""
    if not refs:
        return None
    return refs[0] if len(refs) == 1 else list(refs)


def error_line(verdict: Verdict) -> str:
    """The one line printed for an error record: the message, prefixed by the image unless it names it."""
    message = verdict.error or "failed"
    image = verdict.image or ""
    return message if not image or message.startswith(image) else f"{image}: {message}"


def summary_line(verdicts: list[Verdict]) -> str:
    judged = [v for v in verdicts if v.status == "ok"]
    anomalous = sum(1 for v in judged if v.pred_label == "anomalous")
    errors = len(verdicts) - len(judged)
    return f"summary: {len(judged)} judged, {anomalous} anomalous, {errors} error(s) of {len(verdicts)} image(s)"


def coverage_hint(verdicts: list[Verdict]) -> str | None:
    """`agent.coverage.hint_line` for a batch: a line when more than half of at least 5 judged images are
    anomalous, else None (failures are neither judged nor flagged)."""
    from agent.coverage import hint_line

    judged = [v for v in verdicts if v.status == "ok"]
    return hint_line(len(judged), sum(1 for v in judged if v.pred_label == "anomalous"))


def print_verdict(verdict: Verdict, overlay: str | None = None) -> None:
    from rich.console import Console

    if verdict.status == "error":  # one line, on stderr only
        print(f"error: {error_line(verdict)}", file=sys.stderr)
        return
    console = Console(highlight=False)
    colour = "red" if verdict.pred_label == "anomalous" else "green"
    console.print(
        f"[bold]{verdict.image}[/bold]: [{colour}]{verdict.pred_label.upper()}[/{colour}] "
        f"score {verdict.pred_score:.3f} (threshold {verdict.threshold:.2f}, from {verdict.score_source})"
        + (f", defect: {verdict.defect_type}" if verdict.defect_type else "")
        + (" [yellow]DISPUTED[/yellow] (the model disagreed with the measured evidence)" if verdict.disputed else "")
    )
    for region in verdict.regions:
        peak = f" (peak {region.score:.3g}, the tool's raw units)" if region.score is not None else ""
        console.print(f"  region {tuple(region.bbox_xyxy)} {region.label}{peak}")
    console.print(f"  {verdict.explanation}", soft_wrap=True)
    if overlay:
        console.print(f"  overlay: {overlay}")


def exit_code(verdicts: list[Verdict], fail_on_anomaly: bool) -> int:
    """1 if --fail-on-anomaly and any image is anomalous (even when others failed), else the worst
    failure's code (4 > 3 > 2), else 0."""
    if fail_on_anomaly and any(v.status == "ok" and v.pred_label == "anomalous" for v in verdicts):
        return 1
    codes = [EXIT_FOR_ERROR.get(v.error_kind or "internal", 4) for v in verdicts if v.status == "error"]
    return max(codes, default=0)


def register(app: typer.Typer) -> None:
    @app.command("detect")
    def detect(
        images: list[str] = typer.Argument(..., help="Image files to judge, or folders of them (sorted)."),
        category: str | None = typer.Option(None, "--category", "-c", help="Class name, e.g. 'bottle'."),
        refs: list[str] | None = typer.Option(None, "--refs", help="Normal references: folder, glob, file(s), or 'memory'. Repeatable."),
        memory: Path | None = typer.Option(None, "--memory", help="Memory store folder (default: config memory_path)."),
        backend: str | None = typer.Option(None, "--backend", help="auto | openai | transformers | scripted | none."),
        base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM), e.g. http://localhost:8000/v1."),
        model: str | None = typer.Option(None, "--model", help="Model id served at --base-url."),
        script: Path | None = typer.Option(None, "--script", help="Scripted backend: a JSON/YAML script or a saved trace."),
        threshold: float | None = typer.Option(None, "--threshold", help="Decision threshold on the fused score."),
        policy: str | None = PolicyOption,
        as_json: bool = typer.Option(False, "--json", help="One JSON line per image."),
        out: Path | None = typer.Option(None, "--out", help="Write overlay PNGs (map + boxes) here."),
        trace: Path | None = typer.Option(None, "--trace", help="Save each run's trace (messages, tool calls, maps) here."),
        max_references: int | None = typer.Option(None, "--max-references", help="At most this many references (default 32); above it the most diverse are kept (farthest-point on thumbnails)."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="Images judged at once (threads; results print in input order). Helps when a model server does the work; tools-only on few cores gains little."),
        fail_on_anomaly: bool = typer.Option(False, "--fail-on-anomaly", help="Exit 1 when any image is anomalous, even if other images failed (their errors are still printed)."),
        config: Path | None = ConfigOption,
    ) -> None:
        """Judge images: normal or anomalous, how confident, where, and why."""
        from concurrent.futures import ThreadPoolExecutor

        from agent.api import AnomalyAgent
        from agent.schemas import Verdict
        from tools.progress import Counter

        cfg = config_from_cli(config, backend=backend, base_url=base_url, model=model, script=script,
                              memory_path=memory, threshold=threshold, max_references=max_references,
                              policy=policy)
        agent = AnomalyAgent.from_config(cfg)
        print(f"backend: {agent.backend.name} ({agent.backend_note})", file=sys.stderr)
        agent.check_backend()  # a dead model server: exit 3 now, not after every image ran its tools
        for folder in (out, trace):  # a file in the way is exit 2 now, not after the first image
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        references = references_arg(refs)
        items = expand_images(images)
        stems = unique_stems([path for path, _ in items]) if out is not None else {}
        verdicts = []
        counter = Counter(len(items))  # "progress: 3/10 images, ..." on stderr once the batch runs over 1 s

        def judge(item: tuple[str, str | None]) -> Verdict:
            image, problem = item
            if problem is not None:
                return Verdict.failed(image, problem, category, kind="input")
            return agent.detect(image, category=category, references=references, trace_dir=trace)

        pool = ThreadPoolExecutor(jobs) if jobs > 1 and len(items) > 1 else None
        results = pool.map(judge, items) if pool else map(judge, items)  # both in input order
        for (image, _), verdict in zip(items, results, strict=True):
            overlay = None
            if out is not None and verdict.status == "ok":
                from agent.overlays import write_verdict_overlay

                overlay = write_verdict_overlay(verdict, image, out / f"{stems[image]}_overlay.png",
                                                cfg.max_image_pixels)
            if as_json:
                print_json_line({**verdict.model_dump(mode="json"), "image": image,
                                 **({"overlay": overlay} if overlay else {})})
                if verdict.status == "error":
                    print(f"error: {error_line(verdict)}", file=sys.stderr)
            else:
                print_verdict(verdict, overlay)
            verdicts.append(verdict)
            counter.step()
        if pool:
            pool.shutdown()
        if len(verdicts) > 1:
            print(summary_line(verdicts), file=sys.stderr)
            hint = coverage_hint(verdicts)
            if hint:
                print(hint, file=sys.stderr)
        raise typer.Exit(exit_code(verdicts, fail_on_anomaly))
