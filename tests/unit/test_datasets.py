"""Dataset loaders: every layout on tiny trees written here, errors, shots; the real sets when present."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from evals.datasets import (
    DatasetError,
    detect_layout,
    load_dataset,
    load_mask,
    select_anomaly_shots,
    select_references,
)
from tests.eval_helpers import SIZE, anomalous_image, make_folder_tree, normal_image, write_png


def test_mvtec_ad_tree(tmp_path):
    root = make_folder_tree(tmp_path / "ds")
    assert detect_layout(root) == "folder"
    cats = load_dataset(root)
    assert [c.name for c in cats] == ["alpha", "beta"]
    alpha = cats[0]
    assert len(alpha.train_good) == 4 and alpha.train_good == sorted(alpha.train_good)
    assert len(alpha.test) == 3 + 2 * 2
    assert sum(s.label for s in alpha.test) == 4
    assert {s.defect_type for s in alpha.test} == {"good", "scratch", "dent"}
    for s in alpha.test:
        assert (s.mask_path is not None) == (s.label == 1)
        if s.mask_path:
            assert s.mask_path.endswith(f"{Path(s.path).stem}_mask.png")
    assert alpha.has_masks
    mask = load_mask(alpha.test[0].mask_path) if alpha.test[0].mask_path else None
    anomalous = [s for s in alpha.test if s.label][0]
    mask = load_mask(anomalous.mask_path)
    assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and mask.sum() == 144
    assert load_mask(None, (5, 7)).shape == (5, 7)


def test_visa_after_split_script(tmp_path):
    root = make_folder_tree(tmp_path / "visa_pytorch", categories=("candle",), defects=("bad",), mask_suffix="", ext=".JPG")
    cats = load_dataset(root, layout="auto")
    bad = [s for s in cats[0].test if s.label]
    assert len(bad) == 2 and all(s.mask_path and s.mask_path.endswith(".png") for s in bad)


def test_single_category_folder_and_category_filter(tmp_path):
    root = make_folder_tree(tmp_path / "ds")
    cats = load_dataset(root / "beta")
    assert [c.name for c in cats] == ["beta"]
    assert [c.name for c in load_dataset(root, categories=["beta", "alpha"])] == ["beta", "alpha"]
    with pytest.raises(DatasetError, match="unknown category gamma.*alpha, beta"):
        load_dataset(root, categories=["gamma"])


def test_mvtec_loco_nested_masks_are_merged(tmp_path):
    cat = tmp_path / "loco" / "juice"
    write_png(cat / "train" / "good" / "000.png", normal_image(1))
    write_png(cat / "test" / "good" / "000.png", normal_image(2))
    img, _ = anomalous_image(3)
    write_png(cat / "test" / "logical_anomalies" / "000.png", img)
    m1 = np.zeros((SIZE, SIZE), np.uint8)
    m1[0:4, 0:4] = 255
    m2 = np.zeros((SIZE, SIZE), np.uint8)
    m2[10:12, 10:15] = 255
    write_png(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", m1)
    write_png(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", m2)
    assert detect_layout(tmp_path / "loco") == "mvtec_loco"
    (c,) = load_dataset(tmp_path / "loco")
    bad = [s for s in c.test if s.label][0]
    assert Path(bad.mask_path).is_dir()
    assert load_mask(bad.mask_path).sum() == 16 + 10


def test_mvtec_3d_rgb(tmp_path):
    cat = tmp_path / "m3d" / "bagel"
    write_png(cat / "train" / "good" / "rgb" / "000.png", normal_image(1))
    write_png(cat / "test" / "good" / "rgb" / "000.png", normal_image(2))
    img, mask = anomalous_image(3)
    write_png(cat / "test" / "crack" / "rgb" / "000.png", img)
    write_png(cat / "test" / "crack" / "gt" / "000.png", mask)
    (cat / "test" / "crack" / "xyz").mkdir()
    assert detect_layout(tmp_path / "m3d") == "mvtec_3d"
    (c,) = load_dataset(tmp_path / "m3d")
    assert len(c.train_good) == 1 and c.train_good[0].endswith("rgb/000.png")
    bad = [s for s in c.test if s.label]
    assert len(bad) == 1 and bad[0].mask_path.endswith("gt/000.png") and bad[0].defect_type == "crack"


def test_visa_split_csv(tmp_path):
    root = tmp_path / "VisA"
    write_png(root / "pcb1" / "Data" / "Images" / "Normal" / "0000.JPG", normal_image(1))
    write_png(root / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG", normal_image(2))
    img, mask = anomalous_image(3)
    write_png(root / "pcb1" / "Data" / "Images" / "Anomaly" / "000.JPG", img)
    write_png(root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png", (mask > 0).astype(np.uint8))  # 0/1 mask
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n"
        "pcb1,test,normal,pcb1/Data/Images/Normal/0001.JPG,\n"
        "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png\n"
    )
    assert detect_layout(root) == "visa"
    (c,) = load_dataset(root)
    assert c.name == "pcb1" and len(c.train_good) == 1 and [s.label for s in c.test] == [1, 0]
    assert load_mask(c.test[0].mask_path).sum() == 144  # 0/1 class masks count non-zero pixels


def test_csv_list(tmp_path):
    img, mask = anomalous_image(3)
    write_png(tmp_path / "imgs" / "a.png", normal_image(1))
    write_png(tmp_path / "imgs" / "b.png", img)
    write_png(tmp_path / "imgs" / "b_mask.png", mask)
    write_png(tmp_path / "imgs" / "r.png", normal_image(2))
    lst = tmp_path / "list.csv"
    with lst.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "mask", "category", "split"])
        w.writerow(["imgs/a.png", "normal", "", "widget", "test"])
        w.writerow(["imgs/b.png", "1", "imgs/b_mask.png", "widget", ""])
        w.writerow(["imgs/r.png", "0", "", "widget", "train"])
    assert detect_layout(lst) == "csv"
    (c,) = load_dataset(lst)
    assert c.name == "widget" and len(c.train_good) == 1
    assert [(s.label, s.defect_type) for s in c.test] == [(1, "anomalous"), (0, "good")]
    assert Path(c.test[0].mask_path).is_file()

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimgs/a.png,maybe\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: label 'maybe'"):
        load_dataset(bad)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("path\nimgs/a.png\n")
    with pytest.raises(DatasetError, match="missing column 'label'"):
        load_dataset(nolabel)


def test_empty_category_is_an_error(tmp_path):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    (root / "empty" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="'empty' has no test images"):
        load_dataset(root)


def test_mask_size_mismatch_is_an_error(tmp_path):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    write_png(root / "alpha" / "ground_truth" / "dent" / "000_mask.png", np.zeros((SIZE + 4, SIZE), np.uint8))
    with pytest.raises(DatasetError, match=r"000_mask.png is 32x36 but its image .*000.png is 32x32"):
        load_dataset(root)
    assert load_dataset(root, check=False)  # checks can be switched off


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no category folders"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_dataset(tmp_path / "empty", layout="kitti")


def test_select_references():
    pool = [f"/t/{i:02d}.png" for i in range(10)][::-1]
    assert select_references(pool, 0) == []
    assert select_references(pool, 3) == ["/t/00.png", "/t/01.png", "/t/02.png"]
    a = select_references(pool, 3, seed=1, repeat=0)
    assert a == select_references(pool, 3, seed=1, repeat=0)
    draws = {tuple(select_references(pool, 3, seed=1, repeat=r)) for r in range(5)}
    assert len(draws) > 1
    with pytest.raises(DatasetError, match="--shots 11 needs 11"):
        select_references(pool, 11)


def test_select_anomaly_shots_round_robin(tmp_path):
    (c,) = load_dataset(make_folder_tree(tmp_path / "ds", categories=("alpha",), n_bad=3))
    picked = select_anomaly_shots(c.test, 2)
    assert {s.defect_type for s in picked} == {"dent", "scratch"} and all(s.label for s in picked)
    with pytest.raises(DatasetError, match="--anomaly-shots 99"):
        select_anomaly_shots(c.test, 99)


def test_realsets(realsets):
    cats = load_dataset(realsets)
    by = {c.name: c for c in cats}
    rows = list(csv.DictReader((realsets / "index.csv").open()))
    assert set(by) == {r["category"] for r in rows}
    for name, cat in by.items():
        test_rows = [r for r in rows if r["category"] == name and r["split"] == "test"]
        assert len(cat.test) == len(test_rows)
        assert sum(s.label for s in cat.test) == sum(int(r["label"]) for r in test_rows)
        assert len(cat.train_good) == sum(1 for r in rows if r["category"] == name and r["split"] == "train")
    assert by["magnetic_tile"].has_masks and not by["elpv_mono"].has_masks
    # the index.csv lists the same images as the folder tree
    csv_cats = {c.name: c for c in load_dataset(realsets, layout="csv")}
    assert {s.path for s in csv_cats["magnetic_tile"].test} == {str(Path(s.path).resolve()) for s in by["magnetic_tile"].test}
    # the folder tree reads its folds from the index.csv beside it
    for fold in ("dev", "test"):
        fold_rows = [r for r in rows if r["split"] == "test" and r["fold"] == fold]
        assert sum(len(c.test) for c in load_dataset(realsets, fold=fold)) == len(fold_rows)
