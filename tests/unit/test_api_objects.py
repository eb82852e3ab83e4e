"""The Python API takes PIL images and numpy arrays as the image and as references; maps as arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.agent_fixtures import texture, with_defect
from tools.images import UnsupportedArrayError, load_any


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    import os

    os.environ.pop("ANOMALY_AGENT_BACKEND", None)
    from agent import AnomalyAgent

    home = tmp_path_factory.mktemp("home")
    return AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False,
                                    memory_path=home / "memory", sessions_path=home / "s.sqlite")


def test_arrays_and_pil_images_match_the_same_pixels_from_files(agent, tmp_path):
    refs = [texture(i) for i in range(2)]
    bad = with_defect(texture(101))
    paths = []
    for i, px in enumerate(refs):
        Image.fromarray(px).save(tmp_path / f"r{i}.png")
        paths.append(tmp_path / f"r{i}.png")
    Image.fromarray(bad).save(tmp_path / "bad.png")
    from_files = agent.detect(tmp_path / "bad.png", references=paths)
    from_arrays = agent.detect(bad, references=refs)
    from_pil = agent.detect(Image.fromarray(bad), references=[Image.fromarray(r) for r in refs])
    grey = agent.detect(bad[..., 0], references=[r[..., 0] for r in refs])  # HxW grey arrays
    mixed = agent.detect(bad, references=[paths[0], refs[1]])
    for v in (from_files, from_arrays, from_pil, grey, mixed):
        assert v.status == "ok", v.error
    assert from_arrays.pred_score == pytest.approx(from_files.pred_score, abs=1e-6)
    assert from_pil.pred_score == pytest.approx(from_files.pred_score, abs=1e-6)
    assert grey.pred_score == pytest.approx(from_files.pred_score, abs=1e-6)  # the texture is grey already
    assert mixed.pred_score == pytest.approx(from_files.pred_score, abs=1e-6)
    assert from_arrays.image is None
    amap = from_arrays.maps()["patch_knn"]
    assert amap.shape == bad.shape[:2] and amap.dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.float32), np.zeros((64, 64, 4), np.uint8),
                                 np.zeros((2, 64, 64, 3), np.uint8), np.zeros((4, 4), np.uint8), 42])
def test_unusable_objects_are_error_verdicts_not_exceptions(agent, bad):
    verdict = agent.detect(bad, references=[texture(0)])
    assert verdict.status == "error" and verdict.error_kind == "input"
    assert "Fix:" in verdict.error and "internal" not in verdict.error


def test_load_any_names_shape_and_dtype():
    with pytest.raises(UnsupportedArrayError, match=r"shape \(8, 8\), dtype float64.*uint8"):
        load_any(np.zeros((8, 8)))
    pixels, mode, label = load_any(Image.fromarray(np.zeros((8, 9), np.uint8)))
    assert pixels.shape == (8, 9, 3) and mode == "L" and label == "<PIL image 9x8 L>"


def test_chat_wants_a_path(agent):
    from agent.errors import UserInputError

    with pytest.raises(UserInputError, match="as a path"):
        agent.chat("what is wrong?", image=texture(0))
