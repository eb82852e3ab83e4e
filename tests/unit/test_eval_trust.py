"""Issue 14: evaluation numbers a reviewer can trust.

One section per problem: folds, failures counted (coverage, strict AUROC, error kinds, exit code),
float maps for pixel metrics, one image-AUROC implementation and the run-directory lock, bootstrap
intervals, and operating points (leakage across repeats is in test_runner.py).
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import evals.metrics
from agent.schemas import Verdict
from evals.datasets import DatasetError, load_dataset
from evals.report import compare_lines, load_run, markdown_report
from evals.results import iter_records
from evals.runlock import RunDirLockedError
from evals.runner import EvalSpec, RunningAuroc, WorkItem, _judge, evaluate
from evals.scoring import _pixel_for, category_metrics, compute_metrics
from evals.uncertainty import bootstrap_image, normal_only_threshold, operating_point
from tests.eval_helpers import BrightnessDetector, make_folder_tree
from tools.maps import float_map_path, write_map_png

CFG = {"backend": "fake", "threshold": 0.25}
REPO = Path(__file__).resolve().parents[2]


def _eval(tmp_path, det, spec=None, root=None, **kw):
    root = root or make_folder_tree(tmp_path / "ds")
    kw.setdefault("progress", False)
    return evaluate(det, load_dataset(root), spec or EvalSpec(shots=2), tmp_path / "run", CFG, {}, **kw)


# ----------------------------------------------------------------------------- folds


def _write_index(root: Path, fold_of) -> Path:
    """index.csv beside the category folders, listing every image with a fold."""
    rows = []
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if "ground_truth" in rel.parts:
            continue
        split = rel.parts[1]
        label = 0 if rel.parts[2] == "good" else 1
        fold = "train" if split == "train" else fold_of(rel)
        rows.append({"path": rel.as_posix(), "category": rel.parts[0], "split": split, "label": label,
                     "defect_type": rel.parts[2], "mask": "", "fold": fold})
    index = root / "index.csv"
    with index.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return index


def _alternate(rel: Path) -> str:
    return "dev" if int(rel.stem) % 2 == 0 else "test"


def test_folder_tree_reads_folds_from_a_sibling_index_csv(tmp_path):
    root = make_folder_tree(tmp_path / "ds", n_good=4, n_bad=2)
    _write_index(root, _alternate)
    every = {s.path for c in load_dataset(root) for s in c.test}
    dev = load_dataset(root, fold="dev")
    test = load_dataset(root, fold="test")
    dev_paths = {s.path for c in dev for s in c.test}
    test_paths = {s.path for c in test for s in c.test}
    assert dev_paths and test_paths and not dev_paths & test_paths and dev_paths | test_paths == every
    assert all(s.fold == "dev" and int(Path(s.path).stem) % 2 == 0 for c in dev for s in c.test)
    assert dev[0].train_good == test[0].train_good  # the references are the same in both folds
    # the csv layout reads the same column
    csv_test = {s.path for c in load_dataset(root / "index.csv", layout="csv", fold="test") for s in c.test}
    assert csv_test == {str(Path(p).resolve()) for p in test_paths}


def test_fold_errors_name_the_cause(tmp_path):
    root = make_folder_tree(tmp_path / "ds")
    with pytest.raises(DatasetError, match="has no fold column"):
        load_dataset(root, fold="dev")
    _write_index(root, _alternate)
    with pytest.raises(DatasetError, match="use one of dev, test"):
        load_dataset(root, fold="holdout")


def test_eval_cli_fold_selects_its_images(tmp_path, isolated_home, capsys):
    from agent.cli import main

    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=2, defects=("scratch",), n_bad=2)
    _write_index(root, _alternate)
    out = tmp_path / "run"
    code = main(["eval", str(root), "--fold", "dev", "--shots", "2", "--backend", "none", "--out", str(out),
                 "--no-progress", "--no-report", "--bootstrap", "50"])
    assert code == 0, capsys.readouterr().err
    recs = list(iter_records(out / "results.jsonl"))
    assert recs and all(int(Path(r["image"]).stem) % 2 == 0 for r in recs)
    assert json.loads((out / "config.json").read_text())["dataset"]["fold"] == "dev"


# ----------------------------------------------------------------------------- failures counted


def test_failures_count_in_coverage_and_strict_auroc(tmp_path):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    # the brightest anomaly fails: dropping it would make the ok-only AUROC look no worse
    bad = sorted((root / "alpha" / "test" / "scratch").glob("*.png"))[0]
    bad.rename(bad.with_name("fail_" + bad.name))
    paths, stats, metrics = _eval(tmp_path, BrightnessDetector(), root=root, n_boot=0)
    row = metrics["per_category"]["alpha"]
    assert (row["n_ok"], row["n_total"], row["n_errors"]) == (6, 7, 1)
    assert row["coverage"] == pytest.approx(6 / 7) and metrics["mean"]["coverage"] == pytest.approx(6 / 7)
    assert row["errors_by_kind"] == {"internal": 1}
    recs = list(iter_records(paths.results))
    ok = [r for r in recs if r["status"] == "ok"]
    assert row["auroc"] == pytest.approx(roc_auc_score([r["gt_label"] for r in ok], [r["pred_score"] for r in ok]))
    # strict: the failed anomaly scores below everything
    labels = [r["gt_label"] for r in recs]
    strict = [r["pred_score"] if r["status"] == "ok" else -1.0 for r in recs]
    assert row["auroc_strict"] == pytest.approx(roc_auc_score(labels, strict))
    assert row["auroc_strict"] < row["auroc"]


def test_strict_auroc_counts_a_failed_normal_as_a_false_alarm():
    recs = [
        {"status": "ok", "pred_score": 0.9, "gt_label": 1, "category": "c"},
        {"status": "ok", "pred_score": 0.1, "gt_label": 0, "category": "c"},
        {"status": "error", "pred_score": None, "gt_label": 0, "error_kind": "timeout", "category": "c"},
    ]
    row = category_metrics(recs, pixel=False, n_boot=0)
    assert row["auroc"] == 1.0 and row["auroc_strict"] == pytest.approx(0.5)
    assert row["errors_by_kind"] == {"timeout": 1}


def test_error_kinds_timeout_and_internal(tmp_path):
    from evals.datasets import Sample

    class Slow:
        async def adetect(self, image, *, category=None, references=None):
            await asyncio.sleep(5)

    class Buggy:
        async def adetect(self, image, *, category=None, references=None):
            raise KeyError("oops")

    class WrongType:
        async def adetect(self, image, *, category=None, references=None):
            return {"pred_score": 1.0}

    item = WorkItem(Sample("x.png", "c", 0, "good"), [], 0)
    assert asyncio.run(_judge(Slow(), item, 0.05)).error_kind == "timeout"
    assert asyncio.run(_judge(Buggy(), item, None)).error_kind == "internal"
    assert asyncio.run(_judge(WrongType(), item, None)).error_kind == "internal"
    from agent.api import error_verdict

    assert error_verdict("x.png", "c", TimeoutError("model call")).error_kind == "timeout"
    assert Verdict.failed("x", "t", kind="timeout").error_kind == "timeout"


def test_planned_item_without_a_record_counts_as_missing(tmp_path):
    paths, _, _ = _eval(tmp_path, BrightnessDetector(), n_boot=0)
    recs = list(iter_records(paths.results))
    planned = {(r["category"], r["image"], r["config_hash"], r["repeat"]): r for r in recs}
    kept = recs[1:]
    paths.results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    m = compute_metrics(paths.results, recs[0]["config_hash"], planned=planned, n_boot=0)
    row = m["per_category"][recs[0]["category"]]
    assert row["n_total"] == 7 and row["n_ok"] == 6 and row["errors_by_kind"] == {"missing": 1}


def test_eval_cli_exits_nonzero_below_min_coverage_after_writing(tmp_path, isolated_home, capsys):
    from agent.cli import main

    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=2, defects=("scratch",), n_bad=2)
    (root / "alpha" / "test" / "good" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "run"
    args = ["eval", str(root), "--shots", "2", "--backend", "none", "--out", str(out), "--no-progress",
            "--bootstrap", "20"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 3 and "coverage 3/4" in err and "--min-coverage" in err and "input 1" in err
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "metrics.json").read_text())["mean"]["coverage"] == pytest.approx(0.75)
    assert main([*args, "--resume", "--min-coverage", "0.7"]) == 0


# ----------------------------------------------------------------------------- float maps


def test_map_writer_keeps_the_raw_float_map(tmp_path):
    amap = np.linspace(-2.0, 7.5, 12 * 10, dtype=np.float32).reshape(12, 10)
    png = write_map_png(amap, tmp_path / "m.png", vmin=0.0, vmax=1.0)
    raw = np.load(float_map_path(png))
    assert raw.dtype == np.float32 and np.array_equal(raw, amap)  # not clipped, not rescaled


def test_pixel_metrics_read_float_maps_not_per_image_pngs(tmp_path):
    size = 16
    mask = np.zeros((size, size), np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    a = np.full((size, size), 1.0, np.float32)
    a[4:8, 4:8] = 2.0  # anomalous image: its defect scores 2
    b = np.full((size, size), 1.5, np.float32)
    b[0, 0] = 1.0  # normal image: 1.5 everywhere, below the defect but above a's background
    recs = [
        {"gt_label": 1, "gt_mask": str(tmp_path / "mask.png"), "map_path": write_map_png(a, tmp_path / "a.png")},
        {"gt_label": 0, "gt_mask": None, "map_path": write_map_png(b, tmp_path / "b.png")},
    ]
    out = _pixel_for(recs, map_side=64)
    assert out["pixel_auroc"] == pytest.approx(1.0) and out["pixel_coverage"] == 1.0
    # the per-image rescaled PNGs alone would tie b's background with a's defect (both 255)
    for r in recs:
        float_map_path(r["map_path"]).unlink()
    assert _pixel_for(recs, map_side=64)["pixel_auroc"] < 0.9


def test_runner_keeps_float_maps_in_the_run_dir(tmp_path):
    class FloatMaps(BrightnessDetector):
        async def adetect(self, image, *, category=None, references=None):
            v = await super().adetect(image, category=category, references=references)
            grey = np.asarray(Image.open(image).convert("L"), np.float32) / 10.0
            v.evidence[0].map_path = write_map_png(grey, tmp_path / "tmp" / f"{category}-{Path(image).parent.name}-{Path(image).stem}.png")
            return v

    paths, _, metrics = _eval(tmp_path, FloatMaps(), n_boot=0)
    for r in iter_records(paths.results):
        kept = r["evidence"][0]["map_path"]
        assert kept.startswith(str(paths.maps)) and float_map_path(kept).is_file()
    assert metrics["per_category"]["alpha"]["pixel_auroc"] is not None


def _noise_texture(seed: int, h: int = 96, w: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 128 + 30 * rng.standard_normal((h, w))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_patch_knn_display_png_has_one_scale_per_reference_bank(tmp_path):
    from tools.base import ToolContext, ToolSettings
    from tools.images import ImageStore
    from tools.patch_knn import PatchKnn

    store = ImageStore()
    refs = [store.add_array(_noise_texture(s), f"ref {s}", image_id=f"ref{s}") for s in range(3)]
    bad = _noise_texture(50)
    bad[30:60, 30:60] = 10
    store.add_array(bad, "bad", image_id="bad")
    store.add_array(_noise_texture(51), "clean", image_id="clean")
    ctx = ToolContext(store, query_id="bad", reference_ids=refs, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    tool = PatchKnn()
    fits = []
    for image_id in ("bad", "clean"):
        out = tool.run({"image_id": image_id}, ctx)
        raw = np.load(float_map_path(out.map_path)).ravel()
        grey = np.asarray(Image.open(out.map_path), np.float64).ravel()
        inside = (grey > 2) & (grey < 253)  # unclipped pixels: grey = a * raw + b
        fits.append(np.polyfit(raw[inside], grey[inside], 1))
    assert fits[0] == pytest.approx(fits[1], rel=0.02, abs=0.5)  # the same scale for both images


# ----------------------------------------------------------------------------- one AUROC, one writer


def test_every_image_auroc_goes_through_one_implementation(monkeypatch, tmp_path):
    calls = []
    real = evals.metrics.image_curve_metrics

    def counting(labels, scores):
        calls.append(len(labels))
        return real(labels, scores)

    monkeypatch.setattr(evals.metrics, "image_curve_metrics", counting)
    evals.metrics.image_metrics([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.4])
    assert calls
    calls.clear()
    running = RunningAuroc()
    for label, score in ((0, 0.1), (1, 0.9), (0, 0.3)):
        running.add("c", label, score)
    assert running.value() == 1.0 and calls
    calls.clear()
    from evals.report import roc_plot

    paths, _, _ = _eval(tmp_path, BrightnessDetector(), n_boot=0)
    calls.clear()
    roc_plot([load_run(paths.root)], "alpha", tmp_path / "roc.png")
    assert calls


def test_second_process_on_a_run_dir_gets_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from evals.runlock import RunDirLock
            with RunDirLock({str(run)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        det = BrightnessDetector()
        with pytest.raises(RunDirLockedError, match=rf"in use by another eval \(pid {holder.pid}\)"):
            _eval(tmp_path, det)
        assert det.calls == 0 and not (run / "results.jsonl").exists()
    finally:
        holder.communicate("\n", timeout=30)
    _eval(tmp_path, BrightnessDetector(), n_boot=0)  # released when its holder is done


# ----------------------------------------------------------------------------- intervals


def test_bootstrap_is_seeded_stratified_and_covers_the_estimate(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20, int), np.zeros(30, int)]
    scores = rng.normal(size=50) + 1.0 * labels
    a = bootstrap_image(labels, scores, n_boot=300, seed=3, name="c")
    assert a == bootstrap_image(labels, scores, n_boot=300, seed=3, name="c")
    assert a != bootstrap_image(labels, scores, n_boot=300, seed=4, name="c")
    auroc = roc_auc_score(labels, scores)
    assert a["auroc_lo"] < auroc < a["auroc_hi"] and 0.0 < a["auroc_hi"] - a["auroc_lo"] < 0.5
    assert a["aupr_lo"] < a["aupr_hi"] and a["f1_max_lo"] < a["f1_max_hi"]
    # every replicate keeps the class counts (resampling within each label)
    seen = []
    real = evals.metrics.image_curve_metrics
    monkeypatch.setattr("evals.uncertainty.image_curve_metrics",
                        lambda y, s: seen.append(int(np.sum(y))) or real(y, s))
    bootstrap_image(labels, scores, n_boot=50)
    assert seen == [20] * 50
    # more images, narrower interval
    big_labels = np.repeat(labels, 8)
    big = bootstrap_image(big_labels, np.random.default_rng(1).normal(size=400) + big_labels, n_boot=300)
    assert big["auroc_hi"] - big["auroc_lo"] < a["auroc_hi"] - a["auroc_lo"]


def test_metrics_json_and_report_carry_intervals_and_compare_judges_them(tmp_path):
    root = make_folder_tree(tmp_path / "ds", n_good=8, n_bad=4)
    cats = load_dataset(root)

    class Random(BrightnessDetector):  # scores unrelated to the label
        async def adetect(self, image, *, category=None, references=None):
            v = await super().adetect(image, category=category, references=references)
            v.pred_score = float(np.random.default_rng(abs(hash(Path(image).name)) % 2**32).uniform(0, 1))
            return v

    good, _, mg = evaluate(BrightnessDetector(), cats, EvalSpec(shots=2), tmp_path / "good", CFG, {}, progress=False,
                           n_boot=200)
    rand, _, mr = evaluate(Random(), cats, EvalSpec(shots=2), tmp_path / "rand", {**CFG, "x": 1}, {}, progress=False,
                           n_boot=200)
    row = mg["per_category"]["alpha"]
    assert row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"]
    for key in ("auroc_lo", "auroc_hi", "aupr_lo", "aupr_hi", "f1_max_lo", "f1_max_hi"):
        assert mg["mean"][key] is not None, key
    assert mg["bootstrap"]["n_boot"] == 200
    lines = compare_lines([load_run(rand.root), load_run(good.root)])
    assert any(line.startswith("mean auroc") and "exceeds the 95% intervals" in line for line in lines)
    same = compare_lines([load_run(good.root), load_run(good.root)])
    assert all("within the 95% intervals" in line for line in same)
    md = markdown_report([load_run(good.root)])
    assert f"{row['auroc']:.3f} [{row['auroc_lo']:.3f}, {row['auroc_hi']:.3f}]" in md and "ok/total" in md


# ----------------------------------------------------------------------------- operating points


def test_operating_point_hand_computed():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    flagged = [1, 1, 0, 1, 1, 0, 0, 0, 0]
    types = ["crack", "crack", "hole", "hole", "good", "good", "good", "good", "good"]
    op = operating_point(labels, flagged, types)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (3, 1, 4, 1)
    assert op["precision"] == 0.75 and op["recall"] == 0.75 and op["fpr"] == 0.2 and op["f1"] == 0.75
    crack, hole = op["per_defect_type"]["crack"], op["per_defect_type"]["hole"]
    assert crack["recall"] == 1.0 and crack["precision"] == pytest.approx(2 / 3) and crack["fpr"] == 0.2
    assert hole["recall"] == 0.5 and hole["precision"] == 0.5


def test_normal_only_threshold_flags_at_most_the_target_share():
    assert normal_only_threshold([0.1, 0.4, 0.3, 0.2], 0.05) == 0.4  # 4 scores: none may lie above
    scores = np.arange(20) / 20
    t = normal_only_threshold(scores, 0.05)
    assert np.mean(scores > t) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="target-fpr"):
        normal_only_threshold(scores, 1.0)


def test_eval_reports_operating_points_at_the_verdict_and_normal_only_thresholds(tmp_path):
    root = make_folder_tree(tmp_path / "ds", n_train=5)
    det = BrightnessDetector()
    paths, _, metrics = _eval(tmp_path, det, spec=EvalSpec(shots=4), root=root, target_fpr=0.05, n_boot=0)
    loo = list(iter_records(paths.root / "reference_scores.jsonl"))
    assert len(loo) == 8  # 4 references x 2 categories, each judged with the other 3
    for r in loo:
        assert r["image"] not in r["references"] and len(r["references"]) == 3 and "/train/good/" in r["image"]
    row = metrics["per_category"]["alpha"]
    op = row["operating_point"]
    assert op["threshold"] == 0.25 and set(op["per_defect_type"]) == {"scratch", "dent"}
    recs = [r for r in iter_records(paths.results) if r["category"] == "alpha"]
    flagged = [r["pred_label"] == "anomalous" for r in recs]
    want = operating_point([r["gt_label"] for r in recs], flagged, [r["gt_defect_type"] for r in recs])
    assert op["precision"] == want["precision"] and op["fpr"] == want["fpr"]
    nop = row["operating_point_normal_only"]
    alpha_loo = [r["pred_score"] for r in loo if r["category"] == "alpha"]
    assert nop["threshold"] == max(alpha_loo) and nop["n_reference_scores"] == 4 and nop["target_fpr"] == 0.05
    assert nop["fpr"] == np.mean([r["pred_score"] > nop["threshold"] for r in recs if r["gt_label"] == 0])
    assert metrics["mean"]["operating_point_normal_only"]["recall"] is not None
    md = markdown_report([load_run(paths.root)])
    assert "## Operating points" in md and "normal-only @FPR 0.05" in md and "| alpha | scratch |" in md


# ----------------------------------------------------------------------------- leakage (CLI, real memory)


def test_eval_cli_repeats_with_anomaly_shots_never_retrieve_their_own_test_items(tmp_path, isolated_home, capsys):
    """Every repeat's store (real Chroma) holds exactly its own labelled anomalies, none of its test images."""
    from agent.cli import main
    from agent.config import load_config
    from memory.store import content_id, open_store

    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_train=4, n_good=2, defects=("scratch",), n_bad=4)
    out = tmp_path / "run"
    code = main(["eval", str(root), "--shots", "2", "--shot-seed", "0", "--repeats", "2", "--anomaly-shots", "2",
                 "--backend", "none", "--out", str(out), "--no-progress", "--no-report", "--bootstrap", "0"])
    assert code == 0, capsys.readouterr().err
    used = json.loads((out / "config.json").read_text())["anomaly_shots_used"]
    assert set(used["0/alpha"]) != set(used["1/alpha"])  # different draws: one shared store would leak
    recs = list(iter_records(out / "results.jsonl"))
    for rep in (0, 1):
        with open_store(load_config(None, memory_path=out / "memory" / f"r{rep}"), create=False) as store:
            held = {e.id for e in store.list(category="alpha", label="anomalous")}
        assert held == {content_id(Path(p).read_bytes()) for p in used[f"{rep}/alpha"]}
        tested = {content_id(Path(r["image"]).read_bytes()) for r in recs if r["repeat"] == rep}
        assert len(tested) == 4 and not tested & held
