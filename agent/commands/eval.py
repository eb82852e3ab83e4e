"""`anomaly-agent eval ROOT`: run the agent (or a baseline) on a dataset; metrics and a report.

Exit codes: 0 = the run finished with coverage >= --min-coverage (failed items are recorded in
results.jsonl); 2 = bad input or config, or the run directory is in use by another process; 3 = the
model server failed for many items in a row (resume later), or coverage (judged / planned items) fell
below --min-coverage (everything is still written: results, metrics, report).
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, PolicyOption, config_from_cli
from agent.errors import UserInputError


def default_run_dir(root: Path, chash_seed: str) -> Path:
    """``runs/<dataset name>-<8 hex>``: the same settings give the same folder, so --resume finds it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.expanduser().absolute().name or "dataset")
    return Path("runs") / f"{name}-{hashlib.sha256(chash_seed.encode()).hexdigest()[:8]}"


def repeat_memory_path(run_dir: Path, repeat: int) -> Path:
    """The memory store of one repeat: ``<run>/memory/r<repeat>`` (never the user's memory)."""
    return run_dir / "memory" / f"r{repeat}"


def memory_for_repeat_factory(cfg, run_dir: Path, first_agent):
    """``(repeat, anomaly shots) -> agent``: a fresh store per repeat holding only that repeat's shots.

    Each repeat draws different labelled anomalies; a store shared by all repeats would hold some of a
    repeat's test images as labelled examples. So every repeat gets its own store and its own agent;
    `first_agent` (built with `cfg`, whose memory is repeat 0's store) serves repeat 0.
    """
    from agent.api import AnomalyAgent

    def build(repeat: int, samples):
        if repeat == 0:
            rcfg, agent = cfg, first_agent
        else:
            rcfg = cfg.model_copy(update={"memory_path": repeat_memory_path(run_dir, repeat)})
            agent = AnomalyAgent.from_config(rcfg)
        memory_sink_for(rcfg, agent)(samples)
        return agent

    return build


def memory_sink_for(config, agent):
    """A callable that embeds labelled anomalies (`Sample`s) and adds them to `config`'s memory store.

    Vectors come from the agent's own embedder, so retrieval during the run finds them.
    """
    from memory.store import ExampleInput, open_store
    from tools.images import load_image

    def add(samples) -> None:
        if not samples:
            return
        embedder = agent.runtime.embedder()
        items = [
            ExampleInput(
                image=s.path, category=s.category, label="anomalous",
                embedding=embedder.embed(load_image(s.path, config.max_image_pixels)),
                embedding_model=embedder.model_id, defect_type=s.defect_type,
                description=f"a labelled {s.defect_type} anomaly", source="eval --anomaly-shots",
            )
            for s in samples
        ]
        with open_store(config) as store:
            store.add_many(items)

    return add


def _error_kinds(metrics) -> str:
    kinds: dict[str, int] = {}
    for row in metrics.get("per_category", {}).values():
        for kind, n in (row.get("errors_by_kind") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"


def resolved_config(cfg, backend) -> dict:
    """The run's config as recorded and hashed: secrets masked, ``backend`` the one actually used (never
    "auto"; the setting as given is kept as ``backend_requested``) and ``served_model`` its model id."""
    data = cfg.masked()
    data["backend_requested"] = data["backend"]
    data["backend"] = backend.name
    data["served_model"] = backend.model_id
    return data


def check_resume_backend(run_dir: Path, run_config: dict, reason: str) -> None:
    """Refuse to resume a run whose finished verdicts came from another backend or model.

    Raises:
        UserInputError: the run's config.json names another backend or served model.
    """
    import json

    from agent.errors import UserInputError

    path = Path(run_dir) / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text()).get("config") or {}
    before = (old.get("backend"), old.get("served_model"))
    now = (run_config["backend"], run_config["served_model"])
    if before != now:
        msg = (
            f"{run_dir} was run with backend {before[0]} (model {before[1]}), but this run would use backend "
            f"{now[0]} (model {now[1]}; {reason}); resuming would mix their verdicts in one results.jsonl. "
            f"Fix: make the same backend available again (e.g. restart the endpoint) and rerun with --resume, "
            f"or start a new run with --out"
        )
        raise UserInputError(msg)


def _is_ray_address(text: str) -> bool:
    return text in ("local", "auto") or "://" in text or re.fullmatch(r"[\w.-]+:\d+", text) is not None


def bare_ray_flag(argv: list[str]) -> list[str]:
    """`argv` with a bare ``--ray`` (no address after it) given its default value ``local``.

    ``eval ROOT --ray --workers 4`` and ``eval --ray ROOT`` mean a local Ray; an address is
    ``local``, ``auto``, ``HOST:PORT`` or a URL (``ray://HEAD:10001``).
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 >= len(argv) or not _is_ray_address(argv[i + 1])):
            out.append("local")
    return out


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        root: Path = typer.Argument(..., help="Dataset folder (MVTec-style tree, LOCO, 3D-AD, VisA) or a CSV list."),
        category: list[str] | None = typer.Option(None, "--category", "-c", help="Category to run; repeatable (default: all)."),
        layout: str = typer.Option("auto", "--layout", help="auto | folder | mvtec | mvtec_loco | mvtec_3d | visa | csv."),
        shots: int = typer.Option(0, "--shots", help="K normal references per query from train/good (0 = zero-shot)."),
        shot_seed: int | None = typer.Option(None, "--shot-seed", help="Draw the K references at random with this seed (default: first K by name)."),
        repeats: int = typer.Option(1, "--repeats", help="Reference draws to average metrics over (needs --shot-seed)."),
        anomaly_shots: int = typer.Option(0, "--anomaly-shots", help="M labelled anomalies per category put into memory and left out of the test."),
        limit: int | None = typer.Option(None, "--limit", help="At most this many test images per category (spread evenly)."),
        fold: str | None = typer.Option(None, "--fold", help="Only the test images of this fold (dev | test) from the dataset's 'fold' column (CSV list, or index.csv beside the category folders)."),
        target_fpr: float = typer.Option(0.05, "--target-fpr", help="Also report the operating point at a threshold chosen from normal images only (the references' leave-one-out scores) at this false-positive rate; needs --shots >= 2."),
        min_coverage: float = typer.Option(1.0, "--min-coverage", help="Exit 3 (after writing everything) when fewer than this fraction of the planned items were judged."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates for the 95%% intervals (0: none)."),
        backend: str | None = typer.Option(None, "--backend", help="auto | openai | transformers | scripted | none (tools + fusion only)."),
        base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (vLLM)."),
        model: str | None = typer.Option(None, "--model", help="Model id served at --base-url."),
        baseline: str | None = typer.Option(None, "--baseline", help="'direct': one yes/no prompt with the references, no tools, no memory."),
        memory: str | None = typer.Option(None, "--memory", help="Memory the agent reads: a store folder, or 'server' (the configured memory_host). Default: the run's own, empty unless --anomaly-shots. An example with the query's own pixels is never retrieved."),
        concurrency: int = typer.Option(4, "--concurrency", "-j", help="Images in flight at once (with --ray: per worker)."),
        ray: str | None = typer.Option(None, "--ray", help="Run the items on Ray actors: bare --ray (or 'local') starts a local Ray with --workers CPUs; 'auto' joins this machine's cluster; ray://HEAD:10001 a remote one. Needs `pip install 'anomaly-agent[ray]'`."),
        workers: int | None = typer.Option(None, "--workers", help="With --ray: actors, each holding one warm agent (default 2)."),
        ray_gpus_per_worker: float = typer.Option(0.0, "--ray-gpus-per-worker", help="With --ray: GPUs each actor requests (e.g. 1, or 0.5 to share one)."),
        ray_cpus_per_worker: float = typer.Option(1.0, "--ray-cpus-per-worker", help="With --ray: CPUs each actor requests."),
        out: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/<dataset>-<hash>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue a run: skip images already in results.jsonl."),
        retry_errors: bool = typer.Option(False, "--retry-errors", help="With --resume: judge failed items again."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        no_report: bool = typer.Option(False, "--no-report", help="Skip report.html (metrics are still written)."),
        policy: str | None = PolicyOption,
        feedback_stream: bool = typer.Option(False, "--feedback-stream", help="Stream the test images in a fixed seeded order, tools only, references from a run-scoped memory of each category's first --shots (default 4) training normals, with and without the truth given after each wrong verdict (evals.feedback_stream); prints error, recall and FPR per half and writes feedback_stream.json and .html to --out."),
        stream_seed: list[int] | None = typer.Option(None, "--stream-seed", help="With --feedback-stream: stream orders (repeatable; default 0, 1, 2)."),
        config: Path | None = ConfigOption,
    ) -> None:
        """Evaluate on a dataset: per-category metrics, results.jsonl, report.html."""
        if feedback_stream:
            from evals.datasets import load_dataset
            from evals.feedback_stream import run_cli

            run_cli(load_dataset(root, layout=layout, categories=category, fold=fold), stream_seed or [0, 1, 2],
                    out or Path("runs") / f"feedback-stream-{root.name}", fold or "all", shots=shots or 4)
            return
        from rich.console import Console

        from evals.datasets import load_dataset
        from evals.report import load_run, print_table, write_report
        from evals.runner import EvalSpec, config_hash, evaluate, prompt_set_hash

        spec = EvalSpec(shots=shots, shot_seed=shot_seed, repeats=repeats, anomaly_shots=anomaly_shots,
                        limit=limit, baseline=baseline)
        if not 0.0 <= min_coverage <= 1.0:
            msg = f"--min-coverage must be in [0, 1], got {min_coverage}"
            raise UserInputError(msg)
        if not 0.0 <= target_fpr < 1.0:
            msg = f"--target-fpr must be in [0, 1), got {target_fpr}"
            raise UserInputError(msg)
        if ray is None and (workers is not None or ray_gpus_per_worker):
            msg = "--workers and --ray-gpus-per-worker need --ray. Fix: add --ray (a local Ray), --ray auto or --ray ray://HEAD:10001"
            raise UserInputError(msg)
        if ray is not None:
            from evals.ray_pool import import_ray

            import_ray()  # a clear one-line error, before anything is loaded, when Ray is not installed
        if ray is not None and anomaly_shots:
            msg = ("--ray does not support --anomaly-shots yet (each repeat needs its own memory store). "
                   "Fix: run without --ray, or with --anomaly-shots 0")
            raise UserInputError(msg)
        cfg = config_from_cli(config, backend=backend, base_url=base_url, model=model, policy=policy)
        from evals.memory_scope import describe, eval_memory

        # the memory the run reads, and its identity (hashed: --resume never mixes memory contents)
        cfg, memory_identity = eval_memory(cfg, memory, anomaly_shots)
        categories = load_dataset(root, layout=layout, categories=category, fold=fold)
        prompt_names = ["direct_baseline"] if baseline == "direct" else ["agent"]
        phash = prompt_set_hash(prompt_names)
        chash = config_hash({**cfg.masked(), "memory": memory_identity}, spec, phash)
        run_dir = out or default_run_dir(root, f"{root.expanduser().absolute()}|{chash}|{fold or ''}")
        if memory is None:
            # the run's own store (repeat 0's; `memory_for_repeat_factory` makes one per repeat): it
            # exists only when --anomaly-shots put labelled anomalies there, else the agent reads none
            cfg = cfg.model_copy(update={"memory_path": repeat_memory_path(run_dir, 0)})
        err = Console(stderr=True)
        if baseline == "direct":
            from evals.direct_baseline import DirectBaseline

            detector = DirectBaseline(cfg)
            from agent.preflight import preflight

            preflight(detector.backend, cfg)
            note = f"direct baseline on {detector.backend.name} ({detector.backend.reason})"
        else:
            from agent.api import AnomalyAgent

            detector = AnomalyAgent.from_config(cfg)
            note = f"agent on backend {detector.backend.name} ({detector.backend_note})"
            detector.check_backend()  # a dead model server fails here, before the first image
        n_test = sum(len(c.test) for c in categories)
        fold_note = f", fold {fold}" if fold else ""
        err.print(f"eval: {len(categories)} categories, {n_test} test images{fold_note}, {shots} shots, {note}")
        err.print(f"run directory: {run_dir}")
        if baseline != "direct":
            err.print(describe(memory_identity))
        run_config = {**resolved_config(cfg, detector.backend), "memory": memory_identity}
        if resume:
            check_resume_backend(run_dir, run_config, detector.backend.reason)
        per_repeat_memory = memory_for_repeat_factory(cfg, run_dir, detector) if anomaly_shots else None
        pool = None
        if ray is not None:
            from evals.ray_pool import RayPool

            n_workers = 2 if workers is None else workers
            err.print(f"ray ({ray}): {n_workers} workers, {concurrency} items in flight each (started on the first item)")
            pool = RayPool(cfg.model_copy(update={"backend": detector.backend.name}),
                           "direct" if baseline == "direct" else "agent", workers=n_workers, per_worker=concurrency,
                           cpus_per_worker=ray_cpus_per_worker, gpus_per_worker=ray_gpus_per_worker,
                           backend=detector.backend, address=ray)
            detector, concurrency = pool, n_workers * concurrency
        try:
            paths, stats, metrics = evaluate(
                None if per_repeat_memory else detector,
                categories,
                spec,
                run_dir,
                run_config,
                {"root": str(root.expanduser().absolute()), "layout": layout, "fold": fold,
                 "categories": [c.name for c in categories]},
                prompt_hash=phash,
                concurrency=concurrency,
                resume=resume,
                retry_errors=retry_errors,
                progress=not no_progress,
                memory_for_repeat=per_repeat_memory,
                target_fpr=target_fpr if shots >= 2 else None,
                n_boot=bootstrap,
                status=pool.status if pool is not None else None,
            )
        finally:
            if pool is not None:
                pool.close()
        err.print(
            f"judged {stats.done} images ({stats.failed} failed) in {stats.elapsed_s:.1f} s; "
            f"{stats.skipped} already done"
        )
        if not no_report:
            html = write_report(paths.root)
            err.print(f"report: {html}")
        print_table([load_run(paths.root)])
        if stats.failed:
            print(f"{stats.failed} items failed; see results.jsonl (rerun with --resume --retry-errors)", file=sys.stderr)
        mean = metrics.get("mean", {})
        coverage = mean.get("coverage")
        if coverage is not None and coverage < min_coverage:
            print(
                f"coverage {mean.get('n_ok', 0)}/{mean.get('n_total', 0)} = {coverage:.3f} is below --min-coverage "
                f"{min_coverage:g} (errors by kind: {_error_kinds(metrics)}). Fix: rerun with --resume --retry-errors, "
                "or lower --min-coverage",
                file=sys.stderr,
            )
            raise typer.Exit(3)
