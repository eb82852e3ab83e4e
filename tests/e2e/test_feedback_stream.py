"""The feedback stream (`eval --feedback-stream`) end to end on a tiny tree: feedback follows exactly the wrong
verdicts, a missed defect becomes a known defect that the next similar image is compared with (recorded in the
row), and the run-scoped memory never touches the user's."""

from __future__ import annotations

import numpy as np
from PIL import Image

from evals.datasets import load_dataset
from evals.feedback_stream import halves, run_stream
from tests.agent_fixtures import texture, with_defect


def _faint(seed: int, contrast: float) -> np.ndarray:
    """The fixture's dark blob at a fraction of its contrast (below the edge of normal when small)."""
    plain = texture(seed).astype(np.float32)
    return np.clip(plain + contrast * (with_defect(texture(seed)).astype(np.float32) - plain), 0, 255).astype(np.uint8)


def _tree(root):
    for i in range(4):
        Image.fromarray(texture(i)).save(_mk(root / "tile" / "train" / "good") / f"{i:03d}.png")
    for i, seed in enumerate((200, 201)):
        Image.fromarray(texture(seed)).save(_mk(root / "tile" / "test" / "good") / f"{i:03d}.png")
    for i, seed in enumerate((300, 301, 302)):
        Image.fromarray(_faint(seed, 0.08)).save(_mk(root / "tile" / "test" / "blob") / f"{i:03d}.png")
    return root


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_stream_gives_the_truth_after_wrong_verdicts_and_learns_the_defect(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ANOMALY_AGENT_HOME", str(home))
    monkeypatch.setenv("HOME", str(home))
    [category] = load_dataset(_tree(tmp_path / "data"))
    anomalies = [s for s in category.test if s.label == 1]
    normals = [s for s in category.test if s.label == 0]
    order = [anomalies[0], normals[0], anomalies[1], normals[1], anomalies[2]]

    without = run_stream(category, order, feedback=False, threads=1)
    with_fb = run_stream(category, order, feedback=True, threads=1)

    assert [r["image"] for r in with_fb] == [s.path.rsplit("/", 1)[-1] for s in order]
    assert all(r["status"] == "ok" for r in without + with_fb)
    assert without[0]["pred"] == "normal"  # the faint blob is missed against four normals
    assert all(not r["feedback"] for r in without)
    for row in with_fb:  # the truth follows exactly the wrong verdicts
        assert bool(row["feedback"]) == row["wrong"]
    assert with_fb[0]["wrong"] and "stored as a labelled anomaly of 'tile'" in with_fb[0]["feedback"]
    # the next faint blob is compared with the labelled one, and the row says so
    assert without[2]["known_defect"] is None
    known = with_fb[2]["known_defect"]
    assert known is not None and "blob" in known["example"] and known["raw_after"] > known["raw_before"]
    assert with_fb[2]["score"] > without[2]["score"]
    assert [with_fb[i]["pred"] for i in (1, 3)] == ["normal", "normal"]  # the normals are not pulled up with it
    first, second = halves(with_fb)
    assert first["n"] + second["n"] == len(order)
    assert not home.exists() or not any(home.rglob("*operating-points*"))  # the user's memory is untouched


def test_the_stream_counts_the_verdicts_hard_normals_made_normal_and_the_defects_among_them():
    from evals.feedback_stream import taught_normal

    def row(truth, pred, threshold, without):
        return {"truth": truth, "pred": pred, "threshold": threshold,
                "hard_normals": None if without is None else {"n": 1, "score_without": without}}

    rows = [row("anomalous", "normal", 0.5, 0.7),  # hidden by a hard normal: a defect
            row("normal", "normal", 0.5, 0.6),  # a false alarm the hard normal fixed
            row("normal", "normal", 0.62, 0.55),  # normal without them too
            row("anomalous", "anomalous", 0.5, 0.9),  # flagged anyway
            row("normal", "normal", 0.5, None)]  # no hard normal among the references
    assert taught_normal(rows) == (2, 1)
