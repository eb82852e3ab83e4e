"""The batch runner: every test image through a detector, concurrently, resumable.

A run directory holds:
- ``config.json``: the config (secrets masked), the eval settings, the config hash, the prompt-set
  hash and package versions;
- ``results.jsonl``: one line per image (see `evals.results`), appended as verdicts arrive;
- ``reference_scores.jsonl``: with a target FPR, each reference judged with the other K-1 (the
  normal-only threshold's scores, same line format);
- ``metrics.json``: per-category metrics (averaged over repeats) and their mean, with coverage,
  intervals and operating points (see `evals.scoring`);
- ``maps/``: each verdict's maps (display PNG and raw float ``.npy``);
- ``report.html``, ``report.md``, ``overlays/`` and ``plots/`` (written by `evals.report`);
- ``.run.lock``: held by the process writing the directory (`evals.runlock`).

Concurrency: `concurrency` workers pull items from one iterator, so at most `concurrency` verdicts
are in flight and nothing is kept in RAM after its line is written (bounded memory).
Resume: items whose key (category, image, config hash, repeat) is in results.jsonl are skipped;
a line cut short by a SIGKILL is dropped and the file repaired before appending.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.errors import ModelServerError, UserInputError
from agent.schemas import Verdict
from evals.datasets import (
    Category,
    DatasetError,
    Sample,
    select_anomaly_shots,
    select_references,
)
from evals.metrics import image_auroc
from evals.results import ResultsLog, latest_records, record_key
from evals.runlock import RunDirLock
from evals.scoring import REFERENCE_SCORES, compute_metrics, float_map_path

log_warning = logging.getLogger(__name__).warning
# Settings that do not change verdicts: left out of the config hash.
_HASH_EXCLUDE = ("api_key", "memory_token", "threads", "request_timeout_s", "max_retries", "memory_path")
VERSION_PACKAGES = (
    "anomaly-agent",
    "torch",
    "torchvision",
    "transformers",
    "langgraph",
    "langchain-core",
    "langchain-openai",
    "open_clip_torch",
    "chromadb",
    "numpy",
    "scikit-learn",
    "opencv-python-headless",
)


@runtime_checkable
class Detector(Protocol):
    """What the runner drives: `AnomalyAgent`, the direct baseline, or a test's fake.

    A detector may also have ``prepare()``: called before a pass that has items to judge (not on a
    resume with nothing left); it may raise to stop the run (`evals.ray_pool.RayPool` starts its
    workers there).
    """

    async def adetect(
        self, image: str, *, category: str | None = None, references: list[str] | None = None
    ) -> Verdict:
        """One verdict; bad items come back as an error verdict (exceptions are caught too)."""
        ...


@dataclass
class EvalSpec:
    """What to evaluate (everything that selects items or changes verdicts, except the config).

    Attributes:
        shots: K normal references per query (0: zero-shot).
        shot_seed: None: the first K by name; else random draws seeded by (shot_seed, repeat).
        repeats: R draws of references; metrics are averaged over them.
        anomaly_shots: M labelled anomalies per category put into memory and left out of the test.
        limit: at most this many test images per category (None: all), taken evenly over the
            sorted list so both classes stay represented.
        baseline: None (the agent) or "direct".
    """

    shots: int = 0
    shot_seed: int | None = None
    repeats: int = 1
    anomaly_shots: int = 0
    limit: int | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.shots < 0 or self.anomaly_shots < 0:
            msg = "--shots and --anomaly-shots must be >= 0"
            raise UserInputError(msg)
        if self.repeats < 1:
            msg = f"--repeats must be >= 1, got {self.repeats}"
            raise UserInputError(msg)
        if self.repeats > 1 and self.shot_seed is None:
            msg = "--repeats > 1 needs --shot-seed (the first-K references are the same in every repeat). Fix: add --shot-seed 0"
            raise UserInputError(msg)
        if self.baseline == "direct" and self.anomaly_shots:
            msg = "--baseline direct uses no memory, so --anomaly-shots does not apply. Fix: drop one of them"
            raise UserInputError(msg)
        if self.baseline not in (None, "direct"):
            msg = f"unknown baseline {self.baseline!r}. Fix: use --baseline direct (or leave it out)"
            raise UserInputError(msg)


@dataclass(frozen=True)
class WorkItem:
    """One query: a test sample, its references, and the repeat index."""

    sample: Sample
    references: list[str]
    repeat: int


@dataclass
class RunPaths:
    """The files of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def maps(self) -> Path:
        return self.root / "maps"


@dataclass
class RunStats:
    """Counts of one runner pass."""

    planned: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    anomaly_shots: dict[str, list[str]] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (missing ones omitted)."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def prompt_set_hash(names: Iterable[str]) -> str | None:
    """Combined hash of the named prompt sets (None when none of them exists)."""
    from prompts import PromptError, load_prompts

    hashes = []
    for name in names:
        try:
            hashes.append(f"{name}:{load_prompts(name).hash}")
        except PromptError:
            continue
    if not hashes:
        return None
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()[:16]


def config_hash(config: dict[str, Any], spec: EvalSpec, prompt_hash: str | None) -> str:
    """16 hex digits identifying what produced a verdict: config, prompts and eval settings.

    Left out: secrets, runtime-only settings (`_HASH_EXCLUDE`), `repeats` and `limit` (they select
    items; the repeat index is part of each record's key).
    """
    payload = {
        "config": {k: v for k, v in sorted(config.items()) if k not in _HASH_EXCLUDE},
        "prompts": prompt_hash,
        "shots": spec.shots,
        "shot_seed": spec.shot_seed,
        "anomaly_shots": spec.anomaly_shots,
        "baseline": spec.baseline,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _evenly(samples: list[Sample], limit: int | None) -> list[Sample]:
    if limit is None or limit >= len(samples):
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def plan_items(
    categories: list[Category], spec: EvalSpec
) -> tuple[list[WorkItem], dict[tuple[int, str], list[Sample]]]:
    """All work items, and the anomaly shots per (repeat, category) that were left out of the test.

    Raises:
        DatasetError: too few training images for K shots or anomalies for M anomaly shots.
    """
    items: list[WorkItem] = []
    shots_used: dict[tuple[int, str], list[Sample]] = {}
    for rep in range(spec.repeats):
        for cat in categories:
            refs = select_references(cat.train_good, spec.shots, spec.shot_seed, rep)
            held = select_anomaly_shots(cat.test, spec.anomaly_shots, spec.shot_seed, rep)
            if held:
                shots_used[(rep, cat.name)] = held
            held_paths = {s.path for s in held}
            test = [s for s in cat.test if s.path not in held_paths]
            items.extend(WorkItem(s, refs, rep) for s in _evenly(test, spec.limit))
    return items, shots_used


def planned_record(item: WorkItem) -> dict[str, Any]:
    """The ground-truth fields of a planned item (what metrics count when it has no record yet)."""
    s = item.sample
    return {"image": s.path, "category": s.category, "gt_label": s.label, "gt_defect_type": s.defect_type,
            "gt_mask": s.mask_path, "repeat": item.repeat}


def make_record(item: WorkItem, verdict: Verdict, chash: str) -> dict[str, Any]:
    """One results.jsonl line: the ground truth, the key fields and the verdict's fields."""
    s = item.sample
    rec: dict[str, Any] = {
        "image": s.path,
        "category": s.category,
        "gt_label": s.label,
        "gt_defect_type": s.defect_type,
        "gt_mask": s.mask_path,
        "repeat": item.repeat,
        "config_hash": chash,
        "references": item.references,
    }
    rec.update(verdict.model_dump(mode="json", exclude={"image", "category"}))
    return rec


class RunningAuroc:
    """AUROC of the verdicts so far (mean over categories with both classes), for the progress bar."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[list[int], list[float]]] = {}

    def add(self, category: str, label: int, score: float | None) -> None:
        if score is None:
            return
        labels, scores = self._data.setdefault(category, ([], []))
        labels.append(label)
        scores.append(score)

    def value(self) -> float | None:
        vals = [image_auroc(ls, ss) for ls, ss in self._data.values() if 0 < sum(ls) < len(ls)]
        return float(sum(vals) / len(vals)) if vals else None


def keep_maps(verdict: Verdict, item: WorkItem, maps_dir: Path, move: bool = False) -> None:
    """Copy the verdict's anomaly maps into the run directory and point its evidence at the copies.

    Tools write maps to temporary folders; a run directory must stay complete on its own. `move`:
    move them instead (maps a detector staged for this alone, e.g. `evals.ray_pool.RayPool`'s).
    Copies are named ``maps/<category>/<stem>-<digest>-r<repeat>-e<index>-<tool>.png``, with the raw
    float map (``.npy``, when the tool wrote one) beside each.
    """
    s = item.sample
    digest = hashlib.sha1(s.path.encode()).hexdigest()[:8]
    for i, ev in enumerate(verdict.evidence):
        if not ev.map_path or not Path(ev.map_path).is_file():
            continue
        dest = maps_dir / s.category / f"{Path(s.path).stem}-{digest}-r{item.repeat}-e{i}-{ev.tool}.png"
        if Path(ev.map_path).resolve() == dest.resolve():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        put = shutil.move if move else shutil.copyfile
        raw = float_map_path(ev.map_path)
        put(ev.map_path, dest)
        if raw.is_file():  # the raw float map the pixel metrics read
            put(raw, float_map_path(dest))
        ev.map_path = str(dest)


async def _judge(detector: Detector, item: WorkItem, timeout_s: float | None) -> Verdict:
    s = item.sample
    try:
        coro = detector.adetect(s.path, category=s.category, references=item.references or None)
        verdict = await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
    except asyncio.TimeoutError:
        return Verdict.failed(s.path, f"timed out after {timeout_s:g} s", category=s.category, kind="timeout")
    except Exception as exc:  # noqa: BLE001 - a failed item is recorded and the run goes on
        return Verdict.failed(s.path, f"internal error: {type(exc).__name__}: {exc}", category=s.category,
                              kind="internal")
    if not isinstance(verdict, Verdict):
        msg = f"internal error: detector returned {type(verdict).__name__}, not a Verdict"
        return Verdict.failed(s.path, msg, category=s.category, kind="internal")
    return verdict


async def run_items(
    detector: Detector,
    items: Iterable[WorkItem],
    log: ResultsLog,
    chash: str,
    concurrency: int = 4,
    on_result: Callable[[WorkItem, Verdict], None] | None = None,
    timeout_s: float | None = None,
    max_consecutive_errors: int | None = 50,
    maps_dir: Path | None = None,
) -> RunStats:
    """Judge `items` with at most `concurrency` in flight; append each record as it arrives.

    `maps_dir`: copy each verdict's anomaly maps there (see `keep_maps`); None keeps them in place.

    Raises:
        ModelServerError: `max_consecutive_errors` items failed in a row (the server or the
            config is broken); what was done stays in the log for --resume.
    """
    if concurrency < 1:
        msg = f"--concurrency must be >= 1, got {concurrency}"
        raise UserInputError(msg)
    stats = RunStats()
    source: Iterator[WorkItem] = iter(items)
    streak = {"n": 0, "last": ""}
    stop = asyncio.Event()
    t0 = time.perf_counter()

    async def worker() -> None:
        while not stop.is_set():
            try:
                item = next(source)
            except StopIteration:
                return
            verdict = await _judge(detector, item, timeout_s)
            if maps_dir is not None:
                try:
                    keep_maps(verdict, item, maps_dir, move=getattr(detector, "stages_maps", False))
                except OSError as exc:  # the verdict still counts; its map is simply not kept
                    verdict.timings["map_copy_error"] = 1.0
                    log_warning(f"could not keep the map of {item.sample.path}: {exc}")
            log.append(make_record(item, verdict, chash))
            stats.done += 1
            if verdict.status == "error":
                stats.failed += 1
                streak["n"] += 1
                streak["last"] = verdict.error or ""
                if max_consecutive_errors and streak["n"] >= max_consecutive_errors:
                    stop.set()
            else:
                streak["n"] = 0
            if on_result is not None:
                on_result(item, verdict)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.elapsed_s = time.perf_counter() - t0
    if stop.is_set():
        msg = (
            f"{streak['n']} items in a row failed (last error: {streak['last']}). "
            "Fix: check the model server and the config, then rerun with --resume --retry-errors"
        )
        raise ModelServerError(msg)
    return stats


def prepare_run_dir(out: str | Path, resume: bool, chash: str) -> RunPaths:
    """Create or reopen a run directory.

    Raises:
        UserInputError: results exist but `resume` is False, or they belong to another config.
    """
    paths = RunPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.overlays.mkdir(exist_ok=True)
    if paths.results.exists() and paths.results.stat().st_size > 0:
        if not resume:
            msg = f"{paths.root} already holds results. Fix: add --resume to continue it, or choose another --out"
            raise UserInputError(msg)
        if paths.config.exists():
            old = json.loads(paths.config.read_text()).get("config_hash")
            if old and old != chash:
                msg = (
                    f"{paths.root} was run with another configuration (hash {old}, now {chash}). "
                    "Fix: resume with the same settings, or choose another --out"
                )
                raise UserInputError(msg)
    return paths


def write_config(
    paths: RunPaths,
    config: dict[str, Any],
    spec: EvalSpec,
    chash: str,
    prompt_hash: str | None,
    dataset: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write config.json (the config must already have its secrets masked)."""
    data = {
        "config_hash": chash,
        "prompt_set_hash": prompt_hash,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset,
        "eval": asdict(spec),
        "config": config,
        "versions": package_versions(),
        **(extra or {}),
    }
    tmp = paths.config.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(paths.config)


def _progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[auroc]}"),
        console=Console(stderr=True),
        transient=False,
    )


def reference_items(categories: list[Category], spec: EvalSpec) -> list[WorkItem]:
    """Leave-one-out items of the references: each reference judged with the other K-1 as its references.

    Their scores are what normal images score in the verdicts' own units (same detector, fusion and
    threshold), so a threshold chosen on them needs no labelled anomaly. Needs K >= 2 (else none).
    """
    items: list[WorkItem] = []
    if spec.shots < 2:
        return items
    for rep in range(spec.repeats):
        for cat in categories:
            refs = select_references(cat.train_good, spec.shots, spec.shot_seed, rep)
            for ref in refs:
                sample = Sample(ref, cat.name, 0, "reference")
                items.append(WorkItem(sample, [r for r in refs if r != ref], rep))
    return items


def _todo(items: list[WorkItem], path: Path, chash: str, retry_errors: bool) -> tuple[list[WorkItem], dict]:
    """Items not yet in the results file at `path` (with `retry_errors`, failed ones count as not done)."""
    done = latest_records(path, chash, fields=("category", "gt_label", "status", "pred_score"))
    if retry_errors:
        done = {k: v for k, v in done.items() if v.get("status") == "ok"}
    todo = [it for it in items if (it.sample.category, it.sample.path, chash, it.repeat) not in done]
    return todo, done


def _by_repeat(items: list[WorkItem]) -> dict[int, list[WorkItem]]:
    out: dict[int, list[WorkItem]] = {}
    for it in items:
        out.setdefault(it.repeat, []).append(it)
    return out


def evaluate(
    detector: Detector | None,
    categories: list[Category],
    spec: EvalSpec,
    out: str | Path,
    config: dict[str, Any],
    dataset: dict[str, Any],
    prompt_hash: str | None = None,
    concurrency: int = 4,
    resume: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
    memory_for_repeat: Callable[[int, list[Sample]], Detector] | None = None,
    timeout_s: float | None = None,
    max_consecutive_errors: int | None = 50,
    target_fpr: float | None = None,
    n_boot: int = 1000,
    status: Callable[[], str] | None = None,
) -> tuple[RunPaths, RunStats, dict[str, Any]]:
    """Run (or resume) an evaluation and write config.json, results.jsonl and metrics.json.

    The run directory is locked for the whole call (`evals.runlock`): a second process on it fails
    at once with the holder's pid.

    Args:
        detector: the detector (see `Detector`); None when `memory_for_repeat` builds one per repeat.
        categories: loaded categories (`evals.datasets.load_dataset`).
        spec: shots, repeats, anomaly shots, baseline.
        out: run directory.
        config: the agent config as JSON with secrets masked (`AgentConfig.masked()`).
        dataset: what was loaded (root, layout, fold), recorded in config.json.
        prompt_hash: hash of the prompt sets in use.
        concurrency: verdicts in flight at once.
        resume: skip items already in results.jsonl (error records too, unless `retry_errors`).
        memory_for_repeat: called once per repeat with that repeat's anomaly shots (all categories);
            it puts them into a memory store of that repeat alone and returns the detector reading
            it. Required when `spec.anomaly_shots` > 0: one store per repeat, so no repeat's test
            item can be a labelled example in the memory its own queries read.
        target_fpr: also judge each reference with the other K-1 (``reference_scores.jsonl``) and
            report the operating point at the threshold these normal-only scores give at this FPR.
        n_boot: bootstrap replicates for the intervals in metrics.json (0: none).
        status: a line for the progress bar after the rate (e.g. a Ray pool's "workers 2/2").

    Returns:
        (run paths, stats of this pass, metrics dict as written to metrics.json).
    """
    items, shots_used = plan_items(categories, spec)
    if shots_used and memory_for_repeat is None:
        msg = "--anomaly-shots needs a memory store to put the anomalies into"
        raise UserInputError(msg)
    if detector is None and memory_for_repeat is None:
        msg = "evaluate needs a detector (or memory_for_repeat to build one per repeat)"
        raise UserInputError(msg)
    with RunDirLock(out):
        return _run_locked(detector, categories, spec, out, config, dataset, prompt_hash, concurrency, resume,
                           retry_errors, progress, memory_for_repeat, timeout_s, max_consecutive_errors,
                           target_fpr, n_boot, items, shots_used, status)


def _run_locked(detector, categories, spec, out, config, dataset, prompt_hash, concurrency, resume, retry_errors,
                progress, memory_for_repeat, timeout_s, max_consecutive_errors, target_fpr, n_boot, items,
                shots_used, status=None):
    """`evaluate`'s body, run while the directory's lock is held (arguments as `evaluate`'s)."""
    chash = config_hash(config, spec, prompt_hash)
    paths = prepare_run_dir(out, resume, chash)
    ref_items = reference_items(categories, spec) if target_fpr is not None else []
    write_config(
        paths,
        config,
        spec,
        chash,
        prompt_hash,
        dataset,
        extra={"anomaly_shots_used": {f"{r}/{c}": [s.path for s in v] for (r, c), v in shots_used.items()},
               "target_fpr": target_fpr},
    )
    todo, done = _todo(items, paths.results, chash, retry_errors)
    ref_todo, _ = _todo(ref_items, paths.root / REFERENCE_SCORES, chash, retry_errors)
    stats_skipped = len(items) - len(todo)

    running = RunningAuroc()
    wanted = {(it.sample.category, it.sample.path, chash, it.repeat) for it in items}
    for key, rec in done.items():
        if key in wanted:
            running.add(rec["category"], rec["gt_label"], rec.get("pred_score"))

    bar = _progress() if progress and (todo or ref_todo) else None
    task = None
    last = [0.0]
    total = len(items) + len(ref_items)

    started, judged = time.perf_counter(), [0]

    def on_result(item: WorkItem, verdict: Verdict) -> None:
        if item.sample.defect_type != "reference":
            running.add(item.sample.category, item.sample.label, verdict.pred_score)
        judged[0] += 1
        if bar is not None:
            now = time.perf_counter()
            fields = {}
            if now - last[0] > 0.5 or bar.tasks[0].completed + 1 >= total:
                last[0] = now
                auc = running.value()
                text = [f"AUROC {auc:.3f}" if auc is not None else "AUROC -",
                        f"{judged[0] / max(now - started, 1e-9):.2f} items/s"]
                fields["auroc"] = " | ".join(text + ([status()] if status is not None else []))
            bar.update(task, advance=1, **fields)

    # one detector for the whole run, or one per repeat reading that repeat's own memory store
    # (detector maker, test items, reference items): one pass for the run, or one per repeat whose
    # detector reads that repeat's own memory store (built only when the repeat has work left)
    passes: list[tuple[Callable[[], Detector], list[WorkItem], list[WorkItem]]]
    if memory_for_repeat is None:
        passes = [(lambda: detector, todo, ref_todo)]
    else:
        tests, refs = _by_repeat(todo), _by_repeat(ref_todo)
        passes = []
        for rep in sorted(set(tests) | set(refs)):
            held = [s for (r, _c), v in sorted(shots_used.items()) if r == rep for s in v]
            passes.append((lambda rep=rep, held=held: memory_for_repeat(rep, held), tests.get(rep, []), refs.get(rep, [])))
    stats = RunStats()

    async def all_passes() -> None:
        for make_detector, test_items, loo_items in passes:
            det = make_detector()
            for log_path, batch in ((paths.results, test_items), (paths.root / REFERENCE_SCORES, loo_items)):
                if not batch:
                    continue
                if callable(getattr(det, "prepare", None)):
                    det.prepare()  # e.g. a Ray pool starts its workers; a failure stops the run, not each item
                with ResultsLog(log_path) as log:
                    part = await run_items(det, batch, log, chash, concurrency, on_result, timeout_s,
                                           max_consecutive_errors, paths.maps)
                stats.done += part.done
                stats.failed += part.failed
                stats.elapsed_s += part.elapsed_s

    def run_all() -> None:
        # one event loop for every pass: a model client's connections belong to the loop that opened
        # them, so a second `asyncio.run` failed the reference items with "Event loop is closed"
        asyncio.run(all_passes())

    if bar is not None:
        with bar:
            auc = running.value()
            task = bar.add_task(
                "eval",
                total=total,
                completed=total - len(todo) - len(ref_todo),
                auroc=f"AUROC {auc:.3f}" if auc is not None else "AUROC -",
            )
            run_all()
    else:
        run_all()
    stats.planned = len(items)
    stats.skipped = stats_skipped
    stats.anomaly_shots = {f"{r}/{c}": [s.path for s in v] for (r, c), v in shots_used.items()}
    names = [c.name for c in categories]
    planned = {(it.sample.category, it.sample.path, chash, it.repeat): planned_record(it) for it in items}
    metrics = compute_metrics(paths.results, chash, names, target_fpr=target_fpr, n_boot=n_boot, planned=planned)
    metrics["config_hash"] = chash
    metrics["backend"], metrics["served_model"] = config.get("backend"), config.get("served_model")
    metrics["n_planned"] = len(items)
    metrics["n_reference_items"] = len(ref_items)
    paths.metrics.write_text(json.dumps(metrics, indent=2, default=str))
    return paths, stats, metrics


__all__ = [
    "DatasetError",
    "Detector",
    "EvalSpec",
    "RunPaths",
    "RunStats",
    "WorkItem",
    "config_hash",
    "evaluate",
    "make_record",
    "plan_items",
    "prepare_run_dir",
    "record_key",
    "run_items",
]
