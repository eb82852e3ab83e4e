"""`anomaly-agent memory ...`: fill, inspect and share the example memory.

Every command takes ``--memory PATH`` (default: the config's ``memory_path``); with
``ANOMALY_AGENT_MEMORY_HOST`` set, the shared Chroma server is used instead. Output is
human-readable; ``--json`` prints JSON on stdout. Bad images and store problems exit with code 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, config_from_cli, expand_images
from agent.errors import UserInputError

MemoryOption = typer.Option(None, "--memory", help="Memory store folder (default: config memory_path).")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of text.")
EmbedderOption = typer.Option(
    "auto", "--embedder",
    help="Retrieval embedder: auto (CLIP if its weights resolve, else efficientnet_lite0) or a backbone name.",
)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Store, lock and weight problems become `UserInputError` (exit 2, one line)."""
    from memory.lock import StoreLockTimeoutError
    from memory.store import MemoryStoreError
    from tools.base import ToolError

    try:
        yield
    except (MemoryStoreError, StoreLockTimeoutError, ToolError) as exc:
        raise UserInputError(str(exc)) from exc


def _check_label(label: str) -> None:
    if label not in ("normal", "anomalous"):
        msg = f"--label must be normal or anomalous, got {label!r}"
        raise UserInputError(msg)


def _store(config: Path | None, memory: Path | None, create: bool):
    from memory.store import open_store

    cfg = config_from_cli(config, memory_path=memory)
    return cfg, open_store(cfg, create=create)


def _embedder(name: str, cfg):
    from memory import embed

    return embed.get_embedder(name, cfg.tool_settings())


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _progress_bar(label: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


def _print_report(report, as_json: bool, store) -> None:
    if as_json:
        _echo_json({**report.to_dict(), "store": store.location})
        return
    console = _console()
    console.print(f"added {report.added}, already present {report.skipped} "
                  f"(embedding model {report.embedding_model}) in {store.location}")
    for category, row in sorted(report.per_category.items()):
        console.print(f"  {category}: +{row['normal']} normal, +{row['anomalous']} anomalous")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The example memory: normal references, labelled anomalies, class notes.",
                        no_args_is_help=True)
    notes = typer.Typer(help="Class notes (e.g. 'a bright seam on the left edge is normal').",
                        no_args_is_help=True)

    @group.command("add")
    def add(
        images: list[str] = typer.Argument(..., help="Image files, folders (their images) or quoted globs."),
        category: str = typer.Option(..., "--category", "-c", help="Category name, e.g. bottle."),
        label: str = typer.Option(..., "--label", help="normal | anomalous."),
        defect: str | None = typer.Option(None, "--defect", help="Defect type of an anomalous example."),
        description: str | None = typer.Option(None, "--description", help="What the anomaly looks like."),
        embedder: str = EmbedderOption,
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Add images as examples (adding an image again is a no-op).

        A folder adds its images, a quoted glob the images it matches.
        """
        from memory.importer import TreeItem, import_items
        from memory.store import normalize_category

        _check_label(label)
        paths = expand_images(images)
        unusable = next((error for _, error in paths if error), None)
        if unusable:
            raise UserInputError(unusable)
        with _user_errors():
            items = [TreeItem(Path(p), normalize_category(category), label, defect, description) for p, _ in paths]
            cfg, store = _store(config, memory, create=True)
            with store:
                report = import_items(store, _embedder(embedder, cfg), items)
                _print_report(report, as_json, store)

    @group.command("feedback")
    def feedback(
        image: str = typer.Argument(..., help="The judged image."),
        label: str = typer.Option(..., "--label", help="Its true label: normal (a false alarm) | anomalous (a miss)."),
        category: str = typer.Option(..., "--category", "-c", help="Category name, e.g. bottle."),
        score: float | None = typer.Option(
            None, "--score", min=0.0, max=1.0,
            help="The verdict's score (`detect --json`: pred_score). Default: the image is judged again now, tools "
                 "only, against --refs."),
        refs: list[str] | None = typer.Option(
            None, "--refs", help="Without --score: the references to judge it against (folder, glob, file(s); "
                                 "default 'memory'). Repeatable."),
        defect: str | None = typer.Option(None, "--defect", help="Defect type of an anomalous image."),
        note: str | None = typer.Option(None, "--note", help="What a person sees (the example's description)."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Correct a verdict: store the image with its true label and refit the category's threshold.

        As the page's right/wrong buttons do: a normal joins the category's references as a hard normal (also
        beside references given with --refs), an anomaly becomes a known defect, and the threshold is refit from
        the verdict's score. `memory remove ID` undoes both.
        """
        from agent.api import AnomalyAgent
        from agent.commands.detect import references_arg
        from agent.feedback import record_feedback
        from memory.store import open_store
        from tools.images import load_image

        _check_label(label)
        cfg = config_from_cli(config, memory_path=memory, backend="none")
        load_image(image, cfg.max_image_pixels)  # a bad image says so itself, before anything is judged or stored
        with _user_errors():
            if not cfg.memory_host and not cfg.memory_path.exists():
                open_store(cfg, create=True).close()  # the first feedback creates the memory
            agent = AnomalyAgent.from_config(cfg)
            rescored = None
            if score is None:  # the verdict's score, measured again as a tools-only detect makes it
                rescored = agent.detect(image, category=category, references=references_arg(refs) or "memory")
                if rescored.status != "ok":
                    msg = (f"{image}: could not be judged again for its score ({rescored.error}). Fix: pass the "
                           "verdict's score with --score (`detect --json`: pred_score), or references with --refs")
                    raise UserInputError(msg)
                score = rescored.pred_score
            with agent.runtime.memory() as store:
                learned = record_feedback(agent.runtime, store, image, category, label, float(score),
                                          defect_type=defect, note=note)
        said = "" if rescored is None else (f"judged again now, tools only: score {rescored.pred_score:.2f} "
                                            f"(threshold {rescored.threshold:.2f}); ")
        if as_json:
            _echo_json({"example_id": learned.example.id, "label": label, "category": learned.example.category,
                        "score": score, "score_from": "--score" if rescored is None else "judged again, tools only",
                        "threshold": {"before": learned.threshold_before, "after": learned.threshold_after},
                        "message": learned.message, "undo": f"anomaly-agent memory remove {learned.example.id}"})
        else:
            typer.echo(f"{said}{learned.message} Undo: anomaly-agent memory remove {learned.example.id}")

    @group.command("import")
    def import_(
        root: Path = typer.Argument(..., help="MVTec-style tree: <category>/train/good, test/<defect>."),
        category: list[str] | None = typer.Option(None, "--category", "-c", help="Only this category (repeatable)."),
        with_anomalies: int = typer.Option(0, "--with-anomalies", min=0,
                                           help="Also import N labelled anomalies per defect type."),
        embedder: str = EmbedderOption,
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Import train/good images as normals (and, with --with-anomalies N, labelled anomalies)."""
        from memory.importer import import_items, scan_tree

        with _user_errors():
            items = scan_tree(root, category, with_anomalies)
            cfg, store = _store(config, memory, create=True)
            with store:
                emb = _embedder(embedder, cfg)
                with _progress_bar(f"importing into {store.location}") as bar:
                    task = bar.add_task("import", total=len(items))
                    report = import_items(store, emb, items,
                                          progress=lambda done, _total: bar.update(task, completed=done))
                _print_report(report, as_json, store)

    @group.command("list")
    def list_(
        category: str | None = typer.Option(None, "--category", "-c", help="Only this category."),
        label: str | None = typer.Option(None, "--label", help="normal | anomalous."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """List examples."""
        with _user_errors():
            _, store = _store(config, memory, create=False)
            with store:
                examples = store.list(category, label)
        if as_json:
            _echo_json([e.model_dump(mode="json") for e in examples])
            return
        from rich.table import Table

        table = Table("id", "category", "label", "defect", "description", "image")
        for e in examples:
            table.add_row(e.id[:12], e.category, e.label, e.defect_type or "", e.description or "", e.image_path)
        _console().print(table)
        _console().print(f"{len(examples)} example(s)")

    @group.command("stats")
    def stats(
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Counts per category and label, and the embedding models in use."""
        with _user_errors():
            _, store = _store(config, memory, create=False)
            with store:
                data = store.stats()
                models = {c: store.embedding_models(c) for c in data}
                location = store.location
        if as_json:
            _echo_json({"store": location,
                        "categories": {c: {**row, "embedding_models": models.get(c, [])} for c, row in data.items()}})
            return
        from rich.table import Table

        table = Table("category", "normal", "anomalous", "notes", "embedding models", title=location)
        for c, row in data.items():
            table.add_row(c, str(row["normal"]), str(row["anomalous"]), str(row["notes"]),
                          ", ".join(models.get(c, [])))
        _console().print(table)

    @group.command("thresholds")
    def thresholds(
        category: str | None = typer.Option(None, "--category", "-c", help="Only this category."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Each category's threshold refit from labelled verdicts (feedback), and every move in its history."""
        from memory.operating_point import OperatingPoints, operating_points_path
        from memory.store import normalize_category

        cfg = config_from_cli(config, memory_path=memory)
        path = operating_points_path(cfg.memory_path, cfg.memory_host, cfg.memory_port)
        try:
            found = OperatingPoints(path).listed(normalize_category(category) if category else None)
        except ValueError as exc:  # an unreadable file or a blank category: the message names it and the fix
            raise UserInputError(str(exc)) from exc
        configured = cfg.threshold if "threshold" in cfg.model_fields_set else None
        if as_json:
            _echo_json({"file": str(path), "configured_threshold": configured,
                        "categories": {p.category: p.as_dict() for p in found}})
            return
        if not found:
            typer.echo(f"no labelled verdicts yet ({path}): every category uses the default threshold "
                       f"{cfg.threshold:.2f}. Feedback (the page's buttons, `memory feedback`) refits it")
        for point in found:
            rests = (f"refit from {point.n_normal} normal and {point.n_anomalous} anomalous labelled verdict(s)"
                     if point.refit else "the default: no labelled verdicts")
            typer.echo(f"{point.category}: threshold {point.threshold:.2f} ({rests})")
            for h in point.history:
                typer.echo(f"  {h.get('at') or '-'}  {h['label']:9s} score {h['score']:.2f}  "
                           f"{h['from']:.2f} -> {h['to']:.2f}  (example {h['after']})")
        if configured is not None:
            typer.echo(f"note: a threshold is configured ({configured:.2f}: --threshold, the config file or "
                       "ANOMALY_AGENT_THRESHOLD); detect and serve use it instead of these")

    @group.command("remove")
    def remove(
        ids: list[str] = typer.Argument(..., help="Example ids (see `memory list`)."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Remove examples (from every embedding model's collection). An example stored from feedback also
        leaves its category's known defects or references, and its label's effect on the category's
        threshold is reverted (`memory.operating_point`)."""
        from memory.operating_point import OperatingPoints, describe_move, operating_points_path

        with _user_errors():
            cfg, store = _store(config, memory, create=False)
            with store:
                removed = {i: store.delete(i) for i in ids}
            points = OperatingPoints(operating_points_path(cfg.memory_path, cfg.memory_host, cfg.memory_port))
            moves = {i: [describe_move(b.category, b, a) for b, a in points.remove(i)] for i in ids}
        if as_json:
            _echo_json({"removed": removed, "thresholds": moves})
        else:
            for i in removed:
                typer.echo(f"removed {i}" + "".join(f"; {m}" for m in moves[i]))

    @group.command("export")
    def export(
        out: Path = typer.Argument(..., help="JSON file to write."),
        category: str | None = typer.Option(None, "--category", "-c", help="Only this category."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Write examples (with vectors and image paths) and notes to a JSON file."""
        from memory.importer import export_json

        with _user_errors():
            _, store = _store(config, memory, create=False)
            with store:
                counts = export_json(store, out, category)
        if as_json:
            _echo_json({**counts, "file": str(out)})
        else:
            typer.echo(f"exported {counts['examples']} example(s) and {counts['notes']} note(s) to {out}")

    @group.command("import-json")
    def import_json_(
        file: Path = typer.Argument(..., help="A file written by `memory export`."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Add the examples and notes of an export file (idempotent; images are copied in)."""
        from memory.importer import import_json

        with _user_errors():
            _, store = _store(config, memory, create=True)
            with store:
                report = import_json(store, file)
                _print_report(report, as_json, store)

    @notes.command("add")
    def note_add(
        text: str = typer.Argument(..., help="The note, e.g. 'a bright seam on the left edge is normal'."),
        category: str = typer.Option(..., "--category", "-c", help="Category name."),
        provenance: str = typer.Option("user", "--provenance", help="Who or what wrote it."),
        reliability: float = typer.Option(1.0, "--reliability", min=0.0, max=1.0, help="Weight in [0, 1]."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Add a class note (the same text again updates provenance and reliability)."""
        with _user_errors():
            _, store = _store(config, memory, create=True)
            with store:
                note = store.add_note(category, text, provenance, reliability)
        if as_json:
            _echo_json(note.model_dump(mode="json"))
        else:
            typer.echo(f"note {note.id} for '{note.category}': {note.text}")

    @notes.command("list")
    def note_list(
        category: str | None = typer.Option(None, "--category", "-c", help="Only this category."),
        memory: Path | None = MemoryOption,
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """List class notes."""
        with _user_errors():
            _, store = _store(config, memory, create=False)
            with store:
                items = store.list_notes(category)
        if as_json:
            _echo_json([n.model_dump(mode="json") for n in items])
            return
        for n in items:
            typer.echo(f"{n.id}  [{n.category}] {n.text} (reliability {n.reliability:.2f}, from {n.provenance})")
        typer.echo(f"{len(items)} note(s)")

    @notes.command("remove")
    def note_remove(
        note_id: str = typer.Argument(..., help="Note id (see `memory note list`)."),
        memory: Path | None = MemoryOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Remove a class note."""
        with _user_errors():
            _, store = _store(config, memory, create=False)
            with store:
                store.remove_note(note_id)
        typer.echo(f"removed note {note_id}")

    group.add_typer(notes, name="note")
    app.add_typer(group, name="memory")
