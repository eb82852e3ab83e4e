"""Reports of a run: a terminal table (rich), a markdown table and report.html with pictures.

report.html holds, per category: the metrics, a ROC plot (matplotlib PNG, one curve per compared
run), the worst false positives (normal images with the highest scores) and false negatives
(anomalies with the lowest scores) with overlays (anomaly map + predicted boxes in red +
ground-truth outline in green), the explanation and the tool evidence. Every picture is a file in
the run directory linked by a relative path, so the page opens from disk in any browser.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import UserInputError
from evals.datasets import load_mask
from evals.results import iter_records, read_record_at, record_key
from evals.scoring import compute_metrics, record_map_path, slim_record

# (key, column title) of the table columns; AUROC, AUPR and F1-max carry their 95% interval
COLUMNS = (
    ("auroc", "AUROC [95% CI]"),
    ("auroc_strict", "AUROC strict"),
    ("aupr", "AUPR [95% CI]"),
    ("f1_max", "F1-max [95% CI]"),
    ("f1_flag_all", "F1 all"),
    ("accuracy", "Acc"),
    ("balanced_accuracy", "BalAcc"),
    ("precision", "Prec"),
    ("recall", "Rec"),
    ("pixel_auroc", "P-AUROC"),
    ("aupro", "AUPRO"),
    ("disputed_share", "Disputed"),
)
INTERVAL_METRICS = ("auroc", "aupr", "f1_max")
OVERLAY_SIDE = 384
MEAN = "mean"


@dataclass
class Run:
    """A finished (or partial) run directory, read back."""

    root: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def config_hash(self) -> str | None:
        return self.config.get("config_hash")

    def row(self, category: str) -> dict[str, Any] | None:
        if category == MEAN:
            return self.metrics.get("mean")
        return self.metrics.get("per_category", {}).get(category)

    @property
    def categories(self) -> list[str]:
        return list(self.metrics.get("per_category", {}))


def load_run(run_dir: str | Path, recompute: bool = False) -> Run:
    """Read a run directory (metrics.json is recomputed from results.jsonl when missing).

    Raises:
        UserInputError: not a run directory.
    """
    root = Path(run_dir)
    results = root / "results.jsonl"
    if not results.is_file():
        msg = f"{root} is not a run directory (no results.jsonl). Fix: pass the --out folder of `anomaly-agent eval`"
        raise UserInputError(msg)
    cfg_path = root / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    mpath = root / "metrics.json"
    if recompute or not mpath.is_file():
        metrics = compute_metrics(results, config.get("config_hash"), target_fpr=config.get("target_fpr"))
        mpath.write_text(json.dumps(metrics, indent=2, default=str))
    else:
        metrics = json.loads(mpath.read_text())
    return Run(root=root, config=config, metrics=metrics)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(row: dict[str, Any], key: str) -> str:
    """A metric's cell: its value, and its 95% interval for the bootstrapped metrics."""
    if key == "disputed_share" and row.get(key) is not None:  # "3 (12.5%)": the model disagreed with the evidence
        return f"{row.get('n_disputed') or 0} ({row[key]:.1%})"
    text = _fmt(row.get(key))
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if key in INTERVAL_METRICS and lo is not None and hi is not None and row.get(key) is not None:
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def coverage_cell(row: dict[str, Any]) -> str:
    """``ok/total`` of a row (the items its metrics rest on, out of those planned)."""
    if row.get("n_total") is None:  # a metrics.json written before coverage existed
        n, err = row.get("n") or 0, row.get("n_errors") or 0
        return f"{n}/{n + err}"
    return f"{row.get('n_ok', 0)}/{row['n_total']}"


def exceeds_intervals(a: dict[str, Any], b: dict[str, Any], key: str) -> bool | None:
    """Whether two runs' values of `key` differ by more than their 95% intervals (the intervals do not
    overlap); None when either interval is missing."""
    lo_a, hi_a, lo_b, hi_b = (r.get(f"{key}_{e}") for r in (a, b) for e in ("lo", "hi"))
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return hi_a < lo_b or hi_b < lo_a


def _delta(value: Any, base: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(base, int | float):
        return ""
    return f"{value - base:+.3f}"


def _columns(runs: list[Run]) -> list[tuple[str, str]]:
    """Columns with a value in at least one row of one run."""
    used = []
    for key, title in COLUMNS:
        for run in runs:
            rows = list(run.metrics.get("per_category", {}).values())
            if any(r.get(key) is not None for r in rows):
                used.append((key, title))
                break
    return used


def _row_names(runs: list[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names.extend(c for c in run.categories if c not in names)
    return [*names, MEAN]


def table_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table; with several runs, each later run's cells carry the
    delta to the first run ("0.912 (+0.034)")."""
    cols = _columns(runs)
    header = ["category", "run", "ok/total", *[t for _, t in cols]]
    rows = []
    base = runs[0]
    for cat in _row_names(runs):
        for i, run in enumerate(runs):
            row = run.row(cat)
            if row is None:
                continue
            brow = base.row(cat) if i > 0 else None
            cells = [cat, run.name, coverage_cell(row)]
            for key, _ in cols:
                cell = _cell(row, key)
                if brow is not None:
                    d = _delta(row.get(key), brow.get(key))
                    if d and exceeds_intervals(row, brow, key):
                        d += " *"
                    cell = f"{cell} ({d})" if d else cell
                cells.append(cell)
            rows.append(cells)
    if len(runs) == 1:
        header.pop(1)
        rows = [r[:1] + r[2:] for r in rows]
    return header, rows


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(runs: list[Run]) -> str:
    """The summary table in GitHub markdown."""
    return _md(*table_rows(runs))


OP_FIELDS = ("threshold", "precision", "recall", "fpr", "f1")


def operating_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """Operating points: per category (and per defect type below it), at the verdicts' threshold and
    at the normal-only threshold (the references' leave-one-out scores at the target FPR)."""
    target = run.metrics.get("target_fpr")
    nfpr = f"normal-only @FPR {target:g}" if target is not None else "normal-only"
    header = ["category", "defect type", "ok/total",
              *[f"verdict {f}" for f in OP_FIELDS], *[f"{nfpr} {f}" for f in OP_FIELDS]]
    rows = []
    for cat in [*run.categories, MEAN]:
        row = run.row(cat) or {}
        op, nop = row.get("operating_point") or {}, row.get("operating_point_normal_only") or {}
        if not op:
            continue
        rows.append([cat, "all", coverage_cell(row), *[_fmt(op.get(f)) for f in OP_FIELDS],
                     *[_fmt(nop.get(f)) for f in OP_FIELDS]])
        for dtype, dop in (op.get("per_defect_type") or {}).items():
            dnop = (nop.get("per_defect_type") or {}).get(dtype, {})
            rows.append([cat, dtype, "", "", *[_fmt(dop.get(f)) for f in OP_FIELDS[1:]],
                         _fmt(nop.get("threshold")) if dnop else "-", *[_fmt(dnop.get(f)) for f in OP_FIELDS[1:]]])
    return header, rows


def compare_lines(runs: list[Run]) -> list[str]:
    """Per category and bootstrapped metric, whether each later run's difference to the first exceeds
    the 95% intervals (they do not overlap) or lies within them."""
    lines = []
    base = runs[0]
    for run in runs[1:]:
        for cat in _row_names([base, run]):
            a, b = base.row(cat), run.row(cat)
            if a is None or b is None:
                continue
            for key in INTERVAL_METRICS:
                if a.get(key) is None or b.get(key) is None:
                    continue
                verdict = exceeds_intervals(b, a, key)
                words = {True: "exceeds the 95% intervals", False: "is within the 95% intervals",
                         None: "has no intervals to judge it by"}[verdict]
                lines.append(f"{cat} {key}: {run.name} {b[key]:.3f} vs {base.name} {a[key]:.3f} "
                             f"({b[key] - a[key]:+.3f}) {words}")
    return lines


def markdown_report(runs: list[Run]) -> str:
    """report.md: the summary table, the operating points and (with several runs) the comparison."""
    base = runs[0]
    boot = base.metrics.get("bootstrap") or {}
    text = f"# {base.name}\n\n" + markdown_table(runs)
    text += (f"\nok/total: items judged / items planned (coverage). AUROC strict counts a failed item as the "
             f"worst case for its label. Disputed: verdicts whose model answer disagreed with the measured "
             f"reading (count, and share of the verdicts with a model answer). Intervals: {boot.get('confidence', 0.95):.0%} bootstrap, "
             f"{boot.get('n_boot', '-')} replicates, seed {boot.get('seed', '-')}, images resampled within each label.\n")
    if len(runs) > 1:
        text += "\n`*`: the difference to the first run exceeds both runs' 95% intervals (they do not overlap).\n"
    header, rows = operating_rows(base)
    if rows:
        text += "\n## Operating points\n\n" + _md(header, rows)
    if len(runs) > 1:
        text += "\n## Comparison\n\n" + "".join(f"- {line}\n" for line in compare_lines(runs))
    return text


def terminal_table(runs: list[Run]):
    """The summary table as a `rich.table.Table`."""
    from rich.table import Table

    header, rows = table_rows(runs)
    title = runs[0].name if len(runs) == 1 else f"{runs[0].name} vs " + ", ".join(r.name for r in runs[1:])
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < (2 if len(runs) > 1 else 1) else "right")
    for r in rows:
        table.add_row(*r, style="bold" if r[0] == MEAN else None)
    return table


def print_table(runs: list[Run]) -> None:
    """Print the summary table to stdout (full width when stdout is not a terminal)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=220)
    console.print(terminal_table(runs))


# ----------------------------------------------------------------------------- pictures


def _scored(run: Run, category: str, repeat: int = 0) -> list[dict[str, Any]]:
    """Slim records of one category and repeat (last record per key)."""
    latest: dict[Any, dict[str, Any]] = {}
    for offset, rec in iter_records(run.results, with_offset=True):
        if rec.get("category") != category or int(rec.get("repeat", 0)) != repeat:
            continue
        if run.config_hash and rec.get("config_hash") != run.config_hash:
            continue
        latest[record_key(rec)] = slim_record(rec, offset)
    return list(latest.values())


def roc_plot(runs: list[Run], category: str, out: Path) -> Path | None:
    """ROC curves of one category, one per run, as a PNG. None when undefined (one class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from evals.metrics import image_auroc

    fig, ax = plt.subplots(figsize=(4, 4), dpi=90)
    drew = False
    for run in runs:
        recs = [r for r in _scored(run, category) if r["status"] == "ok" and r["pred_score"] is not None]
        y = [r["gt_label"] for r in recs]
        if not recs or len(set(y)) < 2:
            continue
        s = [r["pred_score"] for r in recs]
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{run.name} ({image_auroc(y, s):.3f})")
        drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC: {category}")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def overlay_image(record: dict[str, Any], out: Path, side: int = OVERLAY_SIDE) -> Path:
    """Write the image with its anomaly map (if any), predicted boxes (red) and GT outline (green).

    Returns:
        `out` (PNG, longest side <= `side`).
    """
    import cv2

    from tools.images import load_image
    from tools.maps import overlay
    from tools.types import Region

    image = load_image(record["image"])
    h, w = image.shape[:2]
    mpath = record_map_path(record)
    amap = None
    if mpath and Path(mpath).is_file():
        amap = cv2.imread(mpath, cv2.IMREAD_GRAYSCALE)
    regions = [Region.model_validate(r) for r in record.get("regions") or []]
    if amap is not None:
        rgb = overlay(image, amap.astype(np.float32), alpha=0.45, regions=regions, vmin=0.0, vmax=255.0)
    else:
        rgb = overlay(image, np.zeros((h, w), np.float32), alpha=0.0, regions=regions)
    if record.get("gt_mask"):
        try:
            mask = load_mask(record["gt_mask"]).astype(np.uint8)
            if mask.shape == (h, w):
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
        except OSError:
            pass
    scale = side / max(h, w)
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    elif max(h, w) < 128:  # tiny images: enlarge (nearest) so a person can see them
        f = int(128 // max(h, w)) + 1
        rgb = cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        msg = f"could not write overlay {out}"
        raise OSError(msg)
    return out


def worst_cases(run: Run, category: str, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The k normal images with the highest scores and the k anomalies with the lowest (full records)."""
    recs = [r for r in _scored(run, category) if r["status"] == "ok" and r["pred_score"] is not None]
    fps = sorted((r for r in recs if r["gt_label"] == 0), key=lambda r: -r["pred_score"])[:k]
    fns = sorted((r for r in recs if r["gt_label"] == 1), key=lambda r: r["pred_score"])[:k]
    load = lambda rs: [read_record_at(run.results, r["_offset"]) for r in rs]  # noqa: E731
    return load(fps), load(fns)


def _errors(run: Run, category: str, k: int = 10) -> list[dict[str, Any]]:
    recs = [r for r in _scored(run, category) if r["status"] != "ok"]
    return [read_record_at(run.results, r["_offset"]) for r in recs[:k]]


def _case(run: Run, rec: dict[str, Any], kind: str) -> dict[str, Any]:
    digest = hashlib.sha1(f"{rec['image']}|{rec.get('repeat', 0)}".encode()).hexdigest()[:8]
    rel = Path("overlays") / rec["category"] / f"{kind}-{Path(rec['image']).stem}-{digest}.png"
    picture = None
    note = None
    try:
        overlay_image(rec, run.root / rel)
        picture = rel.as_posix()
    except Exception as exc:  # noqa: BLE001 - a missing picture must not lose the report
        note = f"no picture: {exc}"
    return {
        "image": rec["image"],
        "name": Path(rec["image"]).name,
        "picture": picture,
        "note": note,
        "score": rec.get("pred_score"),
        "pred_label": rec.get("pred_label"),
        "threshold": rec.get("threshold"),
        "gt_defect_type": rec.get("gt_defect_type"),
        "defect_type": rec.get("defect_type"),
        "explanation": rec.get("explanation", ""),
        "evidence": [
            {
                "tool": e.get("tool"),
                "score": e.get("score"),
                "raw_score": e.get("raw_score"),
                "summary": e.get("summary") or e.get("error") or "",
            }
            for e in rec.get("evidence") or []
        ],
    }


def write_report(run_dir: str | Path, compare: list[str | Path] | None = None, top_k: int = 4) -> Path:
    """Write report.md and report.html (with plots/ and overlays/) into the run directory.

    Args:
        run_dir: the run to report.
        compare: other run directories; tables show their deltas to `run_dir`, ROC plots their curves.
        top_k: worst false positives and false negatives shown per category.

    Returns:
        The path of report.html.
    """
    import jinja2

    base = load_run(run_dir)
    runs = [base, *[load_run(c) for c in compare or []]]
    header, rows = table_rows(runs)
    (base.root / "report.md").write_text(markdown_report(runs))
    op_header, op_rows = operating_rows(base)
    sections = []
    for cat in base.categories:
        roc = roc_plot(runs, cat, base.root / "plots" / f"roc_{cat}.png")
        fps, fns = worst_cases(base, cat, top_k)
        sections.append(
            {
                "name": cat,
                "metrics": base.row(cat),
                "coverage": coverage_cell(base.row(cat) or {}),
                "std": base.metrics.get("std", {}).get(cat, {}),
                "roc": roc.relative_to(base.root).as_posix() if roc else None,
                "fps": [_case(base, r, "fp") for r in fps],
                "fns": [_case(base, r, "fn") for r in fns],
                "errors": [{"image": r["image"], "error": r.get("error")} for r in _errors(base, cat)],
            }
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(
        run=base.name,
        config=base.config,
        runs=[r.name for r in runs],
        header=header,
        rows=rows,
        columns=[k for k, _ in COLUMNS],
        sections=sections,
        fmt=_fmt,
        cell=_cell,
        notes=base.metrics.get("mean", {}).get("notes", []),
        op_header=op_header,
        op_rows=op_rows,
        compare=compare_lines(runs),
        target_fpr=base.metrics.get("target_fpr"),
    )
    out = base.root / "report.html"
    out.write_text(html)
    return out
