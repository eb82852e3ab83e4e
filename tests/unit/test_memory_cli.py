"""`anomaly-agent memory ...` in-process, with a tiny deterministic embedder (no weights)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from agent.cli import main


class ThumbEmbedder:
    """4x4 RGB thumbnail, centred and L2-normalised: deterministic, fast, similarity-preserving."""

    model_id = "thumb4@test"
    dim = 48

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        thumb = np.asarray(Image.fromarray(pixels).resize((4, 4), Image.Resampling.BILINEAR), np.float32)
        vec = thumb.reshape(-1) - 127.5
        return (vec / (np.linalg.norm(vec) + 1e-6)).astype(np.float32)


@pytest.fixture(autouse=True)
def fake_embedder(monkeypatch, isolated_home):
    from memory import embed

    monkeypatch.setattr(embed, "get_embedder", lambda name, settings=None: ThumbEmbedder())


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _tree(root):
    seed = iter(range(10_000))
    for cat in ("bottle", "cable"):
        for i in range(3):
            _img(root / cat / "train" / "good" / f"{i:03d}.png", next(seed))
        for i in range(2):
            _img(root / cat / "test" / "good" / f"{i:03d}.png", next(seed))
        for defect in ("crack", "scratch"):
            for i in range(3):
                _img(root / cat / "test" / defect / f"{i:03d}.png", next(seed))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 2:6] = 255
    (root / "bottle" / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(mask).save(root / "bottle" / "ground_truth" / "crack" / "000_mask.png")
    (root / "bottle" / "test" / "scratch" / "000.png.txt").write_text("a long scratch across the label\n")
    (root / "cable" / "descriptions.yaml").write_text("crack: insulation cracked open\n")
    return root


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_stats_and_second_run_adds_nothing(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "import", str(root), "--memory", mem, "--with-anomalies", "2", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["added"] == 2 * (3 + 2 * 2)
    assert report["per_category"]["bottle"] == {"normal": 3, "anomalous": 4}
    code, out, _ = _run(capsys, "memory", "stats", "--memory", mem, "--json")
    cats = json.loads(out)["categories"]
    assert cats["bottle"]["normal"] == 3 and cats["bottle"]["anomalous"] == 4
    assert cats["cable"]["embedding_models"] == ["thumb4@test"]
    code, out, _ = _run(capsys, "memory", "import", str(root), "--memory", mem, "--with-anomalies", "2", "--json")
    assert json.loads(out)["added"] == 0 and json.loads(out)["skipped"] == 14
    code, out, _ = _run(capsys, "memory", "stats", "--memory", mem)
    assert code == 0 and "bottle" in out and "thumb4@test" in out


def test_import_descriptions_sidecar_yaml_mask_template(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    mem = str(tmp_path / "mem")
    _run(capsys, "memory", "import", str(root), "--memory", mem, "--with-anomalies", "1", "--category", "Bottle")
    _run(capsys, "memory", "import", str(root), "--memory", mem, "--with-anomalies", "1", "--category", "cable")
    code, out, _ = _run(capsys, "memory", "list", "--memory", mem, "--label", "anomalous", "--json")
    desc = {(e["category"], e["defect_type"]): e["description"] for e in json.loads(out)}
    assert desc[("bottle", "scratch")] == "a long scratch across the label"
    assert desc[("bottle", "crack")] == (
        "crack (from bottle/test/crack); region x 2-5, y 4-7 of the 16x16 image, 6.2% of its area"
    )
    assert desc[("cable", "crack")] == "insulation cracked open"
    assert desc[("cable", "scratch")] == "scratch (from cable/test/scratch)"


def test_add_list_remove_notes_export_import(tmp_path, capsys):
    a, b = _img(tmp_path / "a.png", 1), _img(tmp_path / "b.png", 2)
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "add", str(a), str(b), "--category", "screw", "--label", "anomalous",
                        "--defect", "thread", "--description", "a damaged thread", "--memory", mem, "--json")
    assert code == 0 and json.loads(out)["added"] == 2
    code, out, _ = _run(capsys, "memory", "list", "--memory", mem, "--json")
    listed = json.loads(out)
    assert {e["defect_type"] for e in listed} == {"thread"}
    assert all(e["image_path"].startswith(mem) for e in listed)
    code, out, _ = _run(capsys, "memory", "note", "add", "dark tips are normal", "-c", "screw",
                        "--reliability", "0.7", "--memory", mem, "--json")
    note = json.loads(out)
    code, out, _ = _run(capsys, "memory", "note", "list", "--memory", mem)
    assert "dark tips are normal" in out and "0.70" in out
    export = tmp_path / "export.json"
    assert _run(capsys, "memory", "export", str(export), "--memory", mem)[0] == 0
    code, out, _ = _run(capsys, "memory", "remove", listed[0]["id"], "--memory", mem, "--json")
    assert json.loads(out)["removed"] == {listed[0]["id"]: 1}
    assert _run(capsys, "memory", "note", "remove", note["id"], "--memory", mem)[0] == 0
    other = str(tmp_path / "mem2")
    code, out, _ = _run(capsys, "memory", "import-json", str(export), "--memory", other, "--json")
    assert code == 0 and json.loads(out)["added"] == 2
    code, out, _ = _run(capsys, "memory", "stats", "--memory", other, "--json")
    assert json.loads(out)["categories"]["screw"] == {"normal": 0, "anomalous": 2, "notes": 1,
                                                      "embedding_models": ["thumb4@test"]}
    code, out, _ = _run(capsys, "memory", "import-json", str(export), "--memory", other, "--json")
    assert json.loads(out)["added"] == 0



def test_add_takes_a_folder_or_a_quoted_glob_and_names_one_with_no_images(tmp_path, capsys):
    for i in range(3):
        _img(tmp_path / "good" / f"{i:03d}.png", i)
    (tmp_path / "good" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "add", str(tmp_path / "good"), "-c", "gasket", "--label", "normal",
                        "--memory", mem, "--json")
    assert code == 0 and json.loads(out)["added"] == 3
    _img(tmp_path / "more" / "a.png", 7)
    code, out, _ = _run(capsys, "memory", "add", str(tmp_path / "*" / "*.png"), "-c", "gasket", "--label", "normal",
                        "--memory", mem, "--json")
    assert code == 0 and (json.loads(out)["added"], json.loads(out)["skipped"]) == (1, 3)
    code, _, err = _run(capsys, "memory", "add", str(tmp_path / "empty"), "-c", "gasket", "--label", "normal",
                        "--memory", mem)
    assert code == 2 and "no image files in this folder" in err
    code, _, err = _run(capsys, "memory", "add", str(tmp_path / "*.bmp"), "-c", "gasket", "--label", "normal",
                        "--memory", mem)
    assert code == 2 and "no image files match this pattern" in err


def _part(path, seed, spot=False):
    """A 64x64 textured part (the same texture for every seed, a little noise); `spot`: a dark blob on it."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).integers(90, 170, (64, 64, 3)).astype(np.int16)
    img = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    if spot:
        img[24:40, 24:40] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def test_feedback_stores_a_hard_normal_moves_the_threshold_and_undo_reverts_it(tmp_path, capsys):
    image = _img(tmp_path / "alarm.png", 5)
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "feedback", str(image), "-c", "gasket", "--label", "normal",
                        "--score", "0.9", "--memory", mem, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["score_from"] == "--score" and got["score"] == 0.9
    assert got["threshold"]["before"] == 0.5 and got["threshold"]["after"] > 0.55
    assert "a hard normal" in got["message"] and got["undo"] == f"anomaly-agent memory remove {got['example_id']}"
    code, out, _ = _run(capsys, "memory", "list", "--memory", mem, "--json")
    (example,) = json.loads(out)
    assert example["label"] == "normal" and example["source"].startswith("feedback")  # a hard normal
    code, out, _ = _run(capsys, "memory", "thresholds", "--memory", mem, "--json")
    (point,) = json.loads(out)["categories"].values()
    assert point["threshold"] == got["threshold"]["after"] and point["n_normal"] == 1
    assert [(h["label"], h["score"], h["after"]) for h in point["history"]] == [("normal", 0.9, got["example_id"])]
    code, out, _ = _run(capsys, "memory", "thresholds", "--memory", mem)
    assert code == 0 and "gasket: threshold 0.6" in out and "0.50 -> 0.6" in out
    code, out, _ = _run(capsys, "memory", "remove", got["example_id"], "--memory", mem)
    assert code == 0 and "0.50" in out  # the threshold is back at the edge
    code, out, _ = _run(capsys, "memory", "thresholds", "--memory", mem)
    assert code == 0 and "no labelled verdicts yet" in out
    code, out, _ = _run(capsys, "memory", "feedback", str(image), "-c", "gasket", "--label", "anomalous",
                        "--score", "0.2", "--defect", "crack", "--memory", mem)
    assert code == 0 and "labelled anomaly of 'gasket'" in out and "0.50 -> 0." in out


def test_feedback_without_a_score_judges_the_image_again_tools_only(tmp_path, capsys):
    refs = [_part(tmp_path / "refs" / f"{i}.png", i) for i in range(3)]
    query = _part(tmp_path / "query.png", 9, spot=True)
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "feedback", str(query), "-c", "gasket", "--label", "anomalous",
                        "--refs", str(tmp_path / "refs"), "--memory", mem, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["score_from"] == "judged again, tools only" and len(refs) == 3
    assert got["score"] > 0.5 and "threshold stayed at 0.50" in got["message"]  # the spot reads anomalous: right
    code, _, err = _run(capsys, "memory", "feedback", str(query), "-c", "other", "--label", "normal",
                        "--memory", str(tmp_path / "mem2"))
    assert code == 2 and "could not be judged again" in err and "--score" in err
    code, _, err = _run(capsys, "memory", "feedback", str(query), "-c", "gasket", "--label", "fine",
                        "--score", "0.5", "--memory", mem)
    assert code == 2 and "--label must be normal or anomalous" in err
    code, _, err = _run(capsys, "memory", "feedback", str(tmp_path / "gone.png"), "-c", "gasket", "--label", "normal",
                        "--memory", mem)
    assert code == 2 and "file not found" in err and "judged again" not in err
    (tmp_path / "mem-operating-points.json").write_text("{not json")
    code, _, err = _run(capsys, "memory", "thresholds", "--memory", mem)
    assert code == 2 and "unreadable" in err and "delete it" in err

def test_errors_exit_2_with_a_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    mem = str(tmp_path / "mem")
    code, _, err = _run(capsys, "memory", "add", str(bad), "-c", "x", "--label", "normal", "--memory", mem)
    assert code == 2 and "not an image" in err
    code, _, err = _run(capsys, "memory", "add", str(tmp_path / "nope.png"), "-c", "x", "--label", "normal",
                        "--memory", mem)
    assert code == 2 and "file not found" in err
    code, _, err = _run(capsys, "memory", "stats", "--memory", str(tmp_path / "empty"))
    assert code == 2 and "no memory store" in err
    code, _, err = _run(capsys, "memory", "import", str(tmp_path / "data"), "--memory", mem)
    assert code == 2 and "not a folder" in err
    _tree(tmp_path / "data")
    code, _, err = _run(capsys, "memory", "import", str(tmp_path / "data"), "-c", "bolt", "--memory", mem)
    assert code == 2 and "found: bottle, cable" in err
    code, _, err = _run(capsys, "memory", "remove", "deadbeef", "--memory", mem)
    assert code == 2 and "no example" in err
    dup = tmp_path / "data" / "cable" / "test" / "crack" / "000.png"
    (tmp_path / "data" / "bottle" / "train" / "good" / "000.png").write_bytes(dup.read_bytes())
    code, _, err = _run(capsys, "memory", "import", str(tmp_path / "data"), "--with-anomalies", "1",
                        "--memory", str(tmp_path / "mem3"))
    assert code == 2 and "same image" in err and "cannot also be anomalous 'cable'" in err


def test_realsets_import_counts_and_rerun_adds_nothing(realsets, tmp_path, capsys):
    rows = list(csv.DictReader((realsets / "index.csv").open()))
    want = {c: (sum(1 for r in rows if r["category"] == c and r["split"] == "train"), 0) for c in {r["category"] for r in rows}}
    n_train = sum(n for n, _ in want.values())
    mem = str(tmp_path / "mem")
    code, out, _ = _run(capsys, "memory", "import", str(realsets), "--memory", mem, "--json")
    assert code == 0 and json.loads(out)["added"] == n_train
    code, out, _ = _run(capsys, "memory", "stats", "--memory", mem, "--json")
    cats = json.loads(out)["categories"]
    assert {c: (row["normal"], row["anomalous"]) for c, row in cats.items()} == want
    code, out, _ = _run(capsys, "memory", "import", str(realsets), "--memory", mem, "--json")
    assert json.loads(out)["added"] == 0 and json.loads(out)["skipped"] == n_train
