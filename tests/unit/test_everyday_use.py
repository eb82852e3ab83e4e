"""Issue 15's input handling and words: overlay names, exit precedence, mode notes, hints, banners, packaging."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from agent.commands.common import unique_stems
from agent.commands.detect import coverage_hint, exit_code, summary_line
from agent.errors import UserInputError
from agent.schemas import Verdict
from tools.images import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    ImageStore,
    ImageTooLargeError,
    ImageTooSmallError,
    NotARegularFileError,
    load_image,
)

ROOT = Path(__file__).resolve().parents[2]


# overlay names -----------------------------------------------------------------------------------
def test_unique_stems_for_files_sharing_a_name():
    paths = ["data/test/good/000.png", "data/test/hole/000.png", "data/test/hole/001.png"]
    assert unique_stems(paths) == {paths[0]: "good_000", paths[1]: "hole_000", paths[2]: "001"}


def test_unique_stems_go_up_until_they_differ_and_hash_as_a_last_resort(tmp_path):
    paths = ["a/x/good/000.png", "b/x/good/000.png"]
    assert unique_stems(paths) == {paths[0]: "a_x_good_000", paths[1]: "b_x_good_000"}
    # same stem, different suffix, same folder: no parent tells them apart
    same = ["imgs/000.png", "imgs/000.jpg"]
    names = unique_stems(same)
    assert len(set(names.values())) == 2 and all(n.startswith("000_") for n in names.values())
    # the same file given twice keeps one name; a prefixed name never takes another file's plain stem
    twice = unique_stems(["p/q.png", "p/q.png", "r/q.png", "p_q.png"])
    assert twice["p/q.png"] == "p_q" and len({twice["p/q.png"], twice["r/q.png"], twice["p_q.png"]}) == 3


# detect's exit code and summary --------------------------------------------------------------------
def _ok(label: str) -> Verdict:
    return Verdict(image="x.png", pred_label=label, pred_score=0.9 if label == "anomalous" else 0.1,
                   explanation="patch_knn measured it.")


def test_anomaly_wins_over_failures_with_fail_on_anomaly():
    missing = Verdict.failed("missing.png", "missing.png: file not found", kind="input")
    internal = Verdict.failed("y.png", "internal error: boom", kind="internal")
    assert exit_code([_ok("anomalous"), missing], fail_on_anomaly=True) == 1
    assert exit_code([missing, _ok("anomalous"), internal], fail_on_anomaly=True) == 1
    assert exit_code([_ok("anomalous"), missing], fail_on_anomaly=False) == 2
    assert exit_code([_ok("normal"), missing, internal], fail_on_anomaly=True) == 4
    assert exit_code([_ok("normal")], fail_on_anomaly=True) == 0
    assert summary_line([_ok("anomalous"), _ok("normal"), missing]) == (
        "summary: 2 judged, 1 anomalous, 1 error(s) of 3 image(s)")


def test_a_batch_mostly_flagged_gets_a_hint_about_the_references():
    missing = Verdict.failed("missing.png", "missing.png: file not found", kind="input")
    mostly = [_ok("anomalous")] * 4 + [_ok("normal"), missing]
    hint = coverage_hint(mostly)
    assert hint.startswith("hint: 4 of 5 judged images are anomalous.")
    assert "references do not show how good images vary" in hint and "--label normal" in hint
    assert coverage_hint([_ok("anomalous")] * 3 + [_ok("normal")] * 3) is None  # half is not most
    assert coverage_hint([_ok("anomalous")] * 4) is None  # too few to say
    assert coverage_hint([_ok("anomalous")] * 3 + [missing] * 5) is None  # failures are not flags


def test_detect_takes_a_folder_and_prints_a_missing_file_once(tmp_path, isolated_home, capsys):
    from agent.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    (folder / "notes.txt").write_text("x")
    # ANOMALY_AGENT_MIN_IMAGE_SIDE is 32: each 8x8 image is refused at intake, which is all we need
    code = main(["detect", str(folder), str(tmp_path / "gone.png"), "--backend", "none"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in (out + err).splitlines() if "gone.png" in line]
    assert len(lines) == 1 and lines[0].startswith("error:") and "file not found" in lines[0]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert [Path(line.split(":")[1].strip()).name for line in errors] == ["a.png", "b.png", "gone.png"]
    assert "summary: 0 judged, 0 anomalous, 3 error(s) of 3 image(s)" in err



def test_detect_expands_a_quoted_glob_and_names_one_that_matches_nothing(tmp_path):
    from agent.commands.common import expand_images

    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert expand_images([str(tmp_path / "*")]) == [(str(tmp_path / "a.jpg"), None), (str(tmp_path / "b.png"), None)]
    assert [Path(p).name for p, _ in expand_images([str(tmp_path / "**" / "*.png")])] == ["b.png", "c.png"]
    (item,) = expand_images([str(tmp_path / "*.bmp")])
    assert item[0].endswith("*.bmp") and "no image files match this pattern" in item[1]
    odd = tmp_path / "odd[1].png"  # a file whose name looks like a pattern is taken as it is
    Image.new("RGB", (8, 8)).save(odd)
    assert expand_images([str(odd)]) == [(str(odd), None)]

# intake ------------------------------------------------------------------------------------------------
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: dict = {}

    def read():
        try:
            load_image(fifo)
        except Exception as exc:  # noqa: BLE001
            result["exc"] = exc

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("load_image blocked on a named pipe")
    assert isinstance(result["exc"], NotARegularFileError) and "named pipe" in str(result["exc"])


def test_raising_max_pixels_lifts_pillows_own_limit(tmp_path):
    """A 100 MP header is over Pillow's default bomb limit (89 MP); with our limit raised it must decode."""
    path = tmp_path / "wide.png"
    Image.new("1", (20000, 5000)).save(path)  # 1-bit, compresses to almost nothing
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path)
    assert "ANOMALY_AGENT_MAX_IMAGE_PIXELS" in str(info.value) and "--max-image-pixels" not in str(info.value)
    started = time.perf_counter()
    pixels = load_image(path, max_pixels=200_000_000)
    assert pixels.shape == (5000, 20000, 3) and time.perf_counter() - started < 30
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS != 200_000_000  # restored
    assert DEFAULT_MAX_PIXELS < 20000 * 5000


def test_too_small_and_truncated_headers(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (10000, 10)).save(tmp_path / "strip.png")
    store = ImageStore(min_side=32)
    for name in ("dot.png", "strip.png"):
        with pytest.raises(ImageTooSmallError, match="ANOMALY_AGENT_MIN_IMAGE_SIDE"):
            store.add_file(tmp_path / name)
    assert load_image(tmp_path / "dot.png").shape == (1, 1, 3)  # the library default checks nothing more
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:40])
    with pytest.raises(CorruptImageError):
        load_image(tmp_path / "cut.jpg")


def test_mode_note_for_grey_against_colour():
    from agent.runtime import mode_note

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    grey = np.repeat(colour[..., :1], 3, axis=2)
    store = ImageStore()
    q = store.add_array(grey, source="q", image_id="query")
    store.get(q).mode = "L"
    ref = store.add_array(colour, source="r", prefix="ref")
    store.get(ref).mode = "RGB"
    note = mode_note(store, q, [ref])
    assert note and "greyscale (mode L)" in note and "colour (mode RGB)" in note and "modes differ" in note
    assert "colour (mode RGB) but 1 of 1 reference(s) are greyscale" in mode_note(store, ref, [q])
    grey_ref = store.add_array(grey.copy(), source="g", prefix="ref")  # a grey picture stored as RGB
    assert mode_note(store, q, [grey_ref]) is None
    assert mode_note(store, ref, [ref]) is None


# words ---------------------------------------------------------------------------------------------
def test_no_judge_hint_offers_refs_memory_when_memory_has_normals():
    from agent.runtime import require_references_or_model

    rt = SimpleNamespace(backend=SimpleNamespace(model=None), clip_available=lambda: False)
    with pytest.raises(UserInputError) as info:
        require_references_or_model(rt, 0, memory_normals=3, category="tile")
    assert "memory holds 3 normal example(s) of 'tile'" in str(info.value)
    assert "Fix: pass --refs memory" in str(info.value)
    with pytest.raises(UserInputError, match="--refs memory"):
        require_references_or_model(rt, 0)


def test_auto_banner_is_one_short_line(isolated_home, monkeypatch):
    from agent.backends.factory import build_backend
    from agent.config import load_config

    long_fix = "Fix: " + "download it with huggingface-cli ... " * 25
    module = SimpleNamespace(local_model_status=lambda cfg: (False, f"local model 'Q' not found in the cache. {long_fix}"))
    monkeypatch.setitem(sys.modules, "agent.backends.transformers_backend", module)
    reason = build_backend(load_config()).reason
    assert len(reason) < 300 and "\n" not in reason
    assert "not found in the cache" in reason and "doctor" in reason and "huggingface-cli" not in reason


def test_timeout_message_names_settings_that_exist():
    import httpx

    from agent.backends.openai_backend import map_error

    err = map_error(httpx.ReadTimeout("slow"), "http://h/v1", "m", 5.0, 1)
    assert "ANOMALY_AGENT_REQUEST_TIMEOUT_S" in str(err) and "request_timeout_s" in str(err)
    assert "--timeout" not in str(err)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
def test_request_timeout_must_be_finite_and_positive(value, monkeypatch, isolated_home):
    from agent.config import ConfigError, load_config

    monkeypatch.setenv("ANOMALY_AGENT_REQUEST_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match=r"request_timeout_s \(ANOMALY_AGENT_REQUEST_TIMEOUT_S\)"):
        load_config()


# tools run ----------------------------------------------------------------------------------------
def test_tools_run_overlays_of_same_named_files_do_not_collide(tmp_path, isolated_home, capsys, monkeypatch):
    from agent.cli import main
    from tools.base import ToolOutput

    monkeypatch.setattr(ToolOutput, "map_array", property(lambda self: np.zeros((48, 48), np.float32)))

    images = []
    for sub in ("good", "hole"):
        (tmp_path / "test" / sub).mkdir(parents=True)
        path = tmp_path / "test" / sub / "000.png"
        Image.fromarray(np.full((48, 48, 3), 100 if sub == "good" else 200, np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "maps"
    assert main(["tools", "run", "enhance", *images, "--json", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    overlays = [row["overlay"] for row in rows]
    assert all(Path(o).is_file() for o in overlays)
    assert [Path(o).name for o in overlays] == ["good_000_enhance.png", "hole_000_enhance.png"]


# packaging ----------------------------------------------------------------------------------------
def test_aiohttp_is_a_main_dependency():
    """evals/fakeserver.py ships in the wheel and imports aiohttp."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("aiohttp") for dep in project["dependencies"])
    assert "from aiohttp import" in (ROOT / "evals" / "fakeserver.py").read_text()


def test_shipped_packages_never_import_tests():
    """A wheel ships agent, tools, memory, prompts and evals, not tests/: none of them may import it."""
    import ast

    offenders = []
    for package in ("agent", "tools", "memory", "prompts", "evals"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []
