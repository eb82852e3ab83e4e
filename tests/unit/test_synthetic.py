"""evals.synthetic and `anomaly-agent synth`: layout, masks, determinism, realism of normals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from agent.cli import main
from agent.errors import UserInputError
from evals.synthetic import (
    CATEGORIES,
    DEFECTS,
    LOGICAL_DEFECTS,
    MARKER,
    category_spec,
    defect_plan,
    generate_dataset,
    render_image,
)

STRUCTURAL = {"scratch", "stain", "crack", "hole", "cut", "thread"}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_categories_cover_textures_and_logical_arrangements():
    textures = [c for c in CATEGORIES if category_spec(c).kind == "texture"]
    objects = [c for c in CATEGORIES if category_spec(c).kind == "object"]
    assert len(textures) >= 2 and len(objects) >= 2
    for c in textures:
        assert set(DEFECTS[c]) <= STRUCTURAL
    for c in objects:
        logical = set(DEFECTS[c]) & LOGICAL_DEFECTS
        kinds = {d.split("_")[0] for d in logical}
        assert {"missing", "extra", "wrong", "swapped"} <= kinds
        assert set(DEFECTS[c]) - LOGICAL_DEFECTS, f"{c} needs a structural defect too"


def test_layout_masks_and_summary(tmp_path):
    summary = generate_dataset(tmp_path, seed=3, n_train=2, n_test=12, size=128)
    assert set(summary["categories"]) == set(CATEGORIES)
    for cat, row in summary["categories"].items():
        root = tmp_path / cat
        assert (root / MARKER).is_file()
        train = sorted((root / "train" / "good").glob("*.png"))
        assert [p.name for p in train] == ["000.png", "001.png"]
        assert row["test"]["good"] == 6 == len(list((root / "test" / "good").glob("*.png")))
        assert not (root / "ground_truth" / "good").exists()
        plan = [d for d in defect_plan(cat, 12) if d]
        assert sum(v for k, v in row["test"].items() if k != "good") == len(plan) == row["masks"]
        for defect in set(plan):
            images = sorted((root / "test" / defect).glob("*.png"))
            assert len(images) == plan.count(defect) == row["test"][defect]
            for img_path in images:
                mask_path = root / "ground_truth" / defect / f"{img_path.stem}_mask.png"
                img = Image.open(img_path)
                mask = Image.open(mask_path)
                assert img.mode == "RGB" and img.size == (128, 128)
                assert mask.mode == "L" and mask.size == img.size
                m = np.asarray(mask)
                assert set(np.unique(m)) == {0, 255}, f"{mask_path} is not a 0/255 mask"
                frac = (m > 0).mean()
                assert 0.0005 < frac < 0.12, f"{mask_path}: mask covers {frac:.3%}"
        n_files = len([p for p in root.rglob("*.png")])
        assert n_files == 2 + 12 + row["masks"]
    assert summary["n_images"] == len(CATEGORIES) * 14
    assert summary["n_masks"] == sum(r["masks"] for r in summary["categories"].values())


def test_same_seed_gives_byte_identical_files(tmp_path):
    kwargs = {"seed": 7, "n_train": 2, "n_test": 10, "size": 128}  # 10: every defect appears
    generate_dataset(tmp_path / "a", **kwargs)
    generate_dataset(tmp_path / "b", **kwargs)
    a, b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert a == b and len(a) == len(CATEGORIES) * (1 + 2 + 10 + 5)
    # a rerun into the same folder replaces the tree and gives the same bytes again
    (tmp_path / "a" / "tray" / "test" / "good" / "999.png").write_bytes(b"stale")
    generate_dataset(tmp_path / "a", categories=["tray"], **kwargs)
    assert _tree_digest(tmp_path / "a") == a
    # another seed changes the pixels
    other, _ = render_image("metal", None, seed=8, split="train", index=0, size=128)
    same, _ = render_image("metal", None, seed=7, split="train", index=0, size=128)
    first = np.asarray(Image.open(tmp_path / "a" / "metal" / "train" / "good" / "000.png"))
    assert np.array_equal(first, same) and not np.array_equal(first, other)


@pytest.mark.parametrize("category", CATEGORIES)
def test_global_statistics_do_not_separate_anomalies(category):
    """Mean and std intensity of the whole image are near chance at telling anomalies apart."""
    n = 48
    means, stds, labels = [], [], []
    defects = DEFECTS[category]
    for i in range(2 * n):
        defect = None if i < n else defects[i % len(defects)]
        img, _ = render_image(category, defect, seed=0, split="test", index=i, size=128)
        gray = img.astype(np.float32).mean(axis=2)
        means.append(gray.mean())
        stds.append(gray.std())
        labels.append(defect is not None)
    auroc_mean = roc_auc_score(labels, means)
    auroc_std = roc_auc_score(labels, stds)
    assert 0.3 <= auroc_mean <= 0.7, f"mean intensity AUROC {auroc_mean:.3f}"
    assert 0.3 <= auroc_std <= 0.7, f"std intensity AUROC {auroc_std:.3f}"
    # normals really vary (lighting), by several grey levels
    assert np.std(means[:n]) > 4.0


def test_normals_differ_by_pose_and_noise():
    a, _ = render_image("tray", None, seed=0, split="train", index=0)
    b, _ = render_image("tray", None, seed=0, split="train", index=1)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() > 5  # different lighting, pose and noise
    again, mask = render_image("tray", None, seed=0, split="train", index=0)
    assert mask is None and np.array_equal(a, again)


def test_bad_arguments_raise_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="choose from fabric"):
        generate_dataset(tmp_path, categories=["nope"])
    with pytest.raises(UserInputError, match="n_test"):
        generate_dataset(tmp_path, n_test=1)
    with pytest.raises(UserInputError, match="seed"):
        generate_dataset(tmp_path, seed=-1)
    with pytest.raises(UserInputError, match="has no defect"):
        render_image("fabric", "swapped")
    foreign = tmp_path / "out" / "metal"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(UserInputError, match="not written by"):
        generate_dataset(tmp_path / "out", categories=["fabric", "metal"], n_train=1, n_test=2)
    assert (foreign / "keep.txt").read_text() == "user data"
    assert not (tmp_path / "out" / "fabric").exists()  # checked before anything was written


def test_cli_synth_writes_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(
        ["synth", str(out), "--seed", "1", "-c", "fabric,board", "--n-train", "1", "--n-test", "4"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "fabric" in printed and "board" in printed and "wrote 10 images and 4 masks" in printed
    assert sorted(p.name for p in out.iterdir()) == ["board", "fabric"]
    assert main(["synth", str(tmp_path / "x"), "--categories", "bogus"]) == 2
    assert "unknown synthetic category 'bogus'" in capsys.readouterr().err
