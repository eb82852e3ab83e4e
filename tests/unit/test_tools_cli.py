"""`anomaly-agent tools list|run` and the reference resolver."""

from __future__ import annotations

import json

import cv2
import pytest

from agent.cli import main
from tests.unit.test_patch_knn import DEFECT, H, W, texture, with_defect
from tools.references import ReferenceSpecError, resolve_references


@pytest.fixture
def files(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for s in range(3):
        cv2.imwrite(str(refs / f"good_{s}.png"), texture(s))
    (refs / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / "bad.png"), with_defect(100))
    cv2.imwrite(str(tmp_path / "ok.png"), texture(101))
    return tmp_path


def test_tools_list(capsys):
    assert main(["tools", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("patch_knn"))
    assert "reference" in line and len(line.splitlines()) == 1


def test_run_json_lines_and_overlays(files, capsys, monkeypatch, isolated_home):
    monkeypatch.chdir(files)
    code = main(["tools", "run", "patch_knn", "bad.png", "ok.png", "--refs", "refs",
                 "--json", "--out", "out", "--arg", "top_k_regions=1"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == ["bad.png", "ok.png"]
    bad, ok = lines
    assert bad["tool"] == "patch_knn" and bad["n_references"] == 3
    assert bad["score"] > 0.5 > ok["score"]
    assert len(bad["regions"]) == 1
    x0, y0, x1, y1 = bad["regions"][0]["bbox_xyxy"]
    assert x0 < DEFECT[2] and DEFECT[0] < x1 and y0 < DEFECT[3] and DEFECT[1] < y1
    overlay = cv2.imread(str(files / "out" / "bad_patch_knn.png"))
    assert overlay.shape == (H, W, 3)
    assert (files / "out" / "ok_patch_knn.png").is_file()


def test_run_human_readable(files, capsys, isolated_home):
    code = main(["tools", "run", "patch_knn", str(files / "bad.png"), "--refs", str(files / "refs" / "*.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{files / 'bad.png'}:") and "score" in out and "patch_knn compared" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["tools", "run", "patch_knn", "{d}/notes.txt", "--refs", "{d}/refs"], "notes.txt"),
        (["tools", "run", "patch_knn", "{d}/missing.png", "--refs", "{d}/refs"], "file not found"),
        (["tools", "run", "patch_knn", "{d}/ok.png", "--refs", "{d}/refs/*.jpg"], "no reference images"),
        (["tools", "run", "patch_knn", "{d}/ok.png"], "needs at least 1 normal reference"),
        (["tools", "run", "nope", "{d}/ok.png"], "valid tools"),
        (["tools", "run", "patch_knn", "{d}/ok.png", "--refs", "{d}/refs", "--arg", "oops"], "key=value"),
        (["tools", "run", "patch_knn", "{d}/ok.png", "--refs", "{d}/refs", "--arg", "colour=1"], "valid arguments are image_id, top_k_regions"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, capsys, isolated_home, argv, needle):
    (files / "refs" / "notes.txt").rename(files / "notes.txt")
    code = main([a.format(d=files) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err


def test_resolve_references(files):
    folder = resolve_references(files / "refs")
    assert [p.name for p in folder] == ["good_0.png", "good_1.png", "good_2.png"]
    assert resolve_references(str(files / "refs" / "good_[12].png")) == folder[1:]
    assert resolve_references([files / "ok.png", files / "refs"]) == [files / "ok.png", *folder]
    assert resolve_references(None) == []
    with pytest.raises(ReferenceSpecError, match="does not exist"):
        resolve_references(files / "nothing")
    with pytest.raises(ReferenceSpecError, match="no reference images"):
        resolve_references(str(files / "*.jpg"))
    joined = f"{folder[0]},{folder[1]}"  # a list typed as one argument: the fix says how to give several
    with pytest.raises(ReferenceSpecError, match="2 paths joined by commas.*repeat --refs"):
        resolve_references(joined)
    with pytest.raises(ReferenceSpecError, match=r"does not exist\. Fix: pass a folder"):
        resolve_references(f"{folder[0]},{files / 'nothing.png'}")  # not every part exists: the plain message
    with pytest.raises(ReferenceSpecError, match=r"does not exist\. Fix: pass a folder"):
        resolve_references(f"{folder[0]},{files / ('x' * 300 + '.png')}")  # a part whose name is too long
