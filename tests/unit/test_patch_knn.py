"""patch_knn on synthetic textures where the answer is known (real EfficientNet-Lite0 weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.base import ToolContext, ToolError, ToolSettings
from tools.images import ImageStore
from tools.maps import box_iou
from tools.patch_knn import PatchKnn, PatchKnnConfig, image_score, normalise_grey, working_size
from tools.registry import create_tool

H, W = 144, 176  # not square, not a multiple of 32: the map must still come back at HxW
DEFECT = (100, 40, 124, 64)  # xyxy


def texture(seed: int) -> np.ndarray:
    """A woven-looking grey texture with random phase and mild noise, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 35 * np.sin(xx / 3.0 + px) * np.sin(yy / 3.0 + py) + rng.normal(0, 4, (H, W))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def with_defect(seed: int) -> np.ndarray:
    img = texture(seed).copy()
    x0, y0, x1, y1 = DEFECT
    cv2.ellipse(img, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360,
                (25, 25, 25), -1)
    return img


def make_ctx(tmp_path, n_refs: int) -> ToolContext:
    store = ImageStore()
    refs = [store.add_array(texture(s), f"ref {s}", image_id=f"ref{s}") for s in range(n_refs)]
    store.add_array(with_defect(100), "defect", image_id="defect")
    store.add_array(texture(101), "clean", image_id="clean")
    settings = ToolSettings(device="cpu", out_dir=tmp_path)
    return ToolContext(store, query_id="defect", reference_ids=refs, settings=settings)


@pytest.fixture(scope="module")
def tool():
    return PatchKnn()


def test_planted_defect_found_in_place_and_clean_scores_low(tmp_path, tool):
    ctx = make_ctx(tmp_path, 3)
    bad = tool.run({}, ctx)
    assert bad.map_array is not None and bad.map_array.shape == (H, W)
    assert bad.map_array.dtype == np.float32
    assert not hasattr(tool, "last_map")  # per-call state lives in the result, not on the shared tool
    clean = tool.run({"image_id": "clean"}, ctx)
    assert bad.score > 0.5 > clean.score
    assert bad.raw_score > clean.raw_score
    assert bad.regions and bad.regions[0].label == "above normal range"
    assert box_iou(bad.regions[0].bbox_xyxy, DEFECT) > 0.2
    # the map PNG is at the original resolution and lights up at the defect
    png = cv2.imread(bad.map_path, cv2.IMREAD_GRAYSCALE)
    assert png.shape == (H, W)
    x0, y0, x1, y1 = DEFECT
    assert png[y0:y1, x0:x1].mean() > 2 * png.mean()
    assert "0.5 is reached" in bad.summary and "box" in bad.summary
    assert bad.n_references == 3 and bad.calibration == "leave-one-out"
    assert bad.normal_range[0] <= bad.normal_range[1] < bad.raw_score


def test_k1_calibrates_on_augmented_copies(tmp_path, tool):
    ctx = make_ctx(tmp_path, 1)
    bad = tool.run({}, ctx)
    clean = tool.run({"image_id": "clean"}, ctx)
    bank = tool.reference_bank(ctx)
    assert bank.calibration == "augmented copies" and len(bank.normal_scores) >= 5
    assert bad.calibration == "augmented copies"
    assert bad.score > 0.5 and bad.score > clean.score
    assert box_iou(bad.regions[0].bbox_xyxy, DEFECT) > 0.2


def test_references_embedded_once_per_session(tmp_path, tool):
    ctx = make_ctx(tmp_path, 2)
    tool.run({}, ctx)
    banks = [k for k in ctx.cache if k[0] == "patch_knn:bank"]
    feats = len([k for k in ctx.cache if k[0] == "patch_knn:feat"])
    bank = ctx.cache[banks[0]]
    tool.run({"image_id": "clean"}, ctx)
    assert [k for k in ctx.cache if k[0] == "patch_knn:bank"] == banks
    assert ctx.cache[banks[0]] is bank
    assert len([k for k in ctx.cache if k[0] == "patch_knn:feat"]) == feats + 1  # only the new query


def test_needs_references_and_known_ids(tmp_path, tool):
    ctx = make_ctx(tmp_path, 0)
    with pytest.raises(ToolError, match="--refs"):
        tool.run({}, ctx)
    ctx = make_ctx(tmp_path, 1)
    with pytest.raises(ToolError, match="unknown image id"):
        tool.run({"image_id": "nope"}, ctx)
    with pytest.raises(ToolError, match="invalid arguments"):
        tool.run({"top_k_regions": 0}, ctx)


def test_registered_and_schema():
    knn = create_tool("patch_knn")
    assert isinstance(knn, PatchKnn)
    props = knn.input_schema()["properties"]
    assert set(props) == {"image_id", "top_k_regions"}


def test_helpers():
    grid = np.zeros((10, 10), np.float32)
    grid[0, 0] = 10.0
    assert image_score(grid, 0) == 10.0
    assert image_score(grid, 0.02) == pytest.approx(5.0)
    cfg = PatchKnnConfig(resolution=320, scale_mode="refs")
    assert working_size(100, 200, cfg, ref_long_side=200) == (160, 320)
    assert working_size(100, 400, cfg, ref_long_side=200) == (160, 640)  # same scale as refs
    assert working_size(100, 200, PatchKnnConfig(resolution=320, scale_mode="fit"), 999) == (160, 320)
    assert working_size(50, 50, PatchKnnConfig(square=True, resolution=224), None) == (224, 224)
    with pytest.raises(ToolError, match="layer_norm"):
        PatchKnn(PatchKnnConfig(layer_norm="patch+bogus"))
    with pytest.raises(ToolError, match="augment"):
        PatchKnn(PatchKnnConfig(augment="rot7"))


def test_coreset_and_padded_search():
    """k_centre keeps the asked fraction and covers outliers; the search is exact, also on a bank stored
    padded with zero columns (as before 2026-12-04)."""
    import faiss

    from tools.patch_knn import _flat_index, k_centre, nn_distance

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(200, 16)).astype(np.float32)
    vecs[7] = 50.0  # an outlier: the farthest point, always kept
    kept = k_centre(vecs, 0.25)
    assert kept.shape == (50, 16) and (kept == 50.0).all(axis=1).any()
    assert k_centre(vecs, 1.0) is vecs
    query = rng.normal(size=(4, 5, 16)).astype(np.float32)
    index = _flat_index(vecs)
    assert index.d == 16
    exact = np.sqrt(((query.reshape(-1, 1, 16) - vecs[None]) ** 2).sum(-1).min(1)).reshape(4, 5)
    assert np.allclose(nn_distance(index, query), exact, atol=1e-3)
    padded = faiss.IndexFlatL2(168)
    padded.add(np.hstack([vecs, np.zeros((200, 152), np.float32)]))
    assert np.allclose(nn_distance(padded, query), exact, atol=1e-3)
    assert np.allclose(nn_distance(index, vecs[:30].reshape(5, 6, 16)), 0.0, atol=1e-2)  # a bank vector finds itself


def arrangement(seed: int, swapped: bool = False) -> np.ndarray:
    """A red disc left of a blue square on a noisy grey board (jittered by a few pixels), HxWx3.

    `swapped`: the two parts trade places.
    """
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(150, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    parts = [("disc", (220, 40, 40)), ("square", (40, 60, 220))]
    for (kind, colour), x in zip(parts[::-1] if swapped else parts, (48, 128), strict=True):
        dx, dy = rng.integers(-3, 4, 2)
        cx, cy = int(x + dx), int(72 + dy)
        if kind == "disc":
            cv2.circle(img, (cx, cy), 18, colour, -1)
        else:
            cv2.rectangle(img, (cx - 18, cy - 18), (cx + 18, cy + 18), colour, -1)
    return img


def test_positional_view_flags_swapped_parts(tmp_path):
    """Every patch of a swapped arrangement occurs in the references, only at the wrong place."""
    store = ImageStore()
    refs = [store.add_array(arrangement(s), f"ref {s}", image_id=f"ref{s}") for s in range(4)]
    store.add_array(arrangement(100, swapped=True), "swapped", image_id="swapped")
    store.add_array(arrangement(101), "clean", image_id="clean")
    ctx = ToolContext(store, query_id="swapped", reference_ids=refs,
                      settings=ToolSettings(device="cpu", out_dir=tmp_path))
    tool = PatchKnn()
    assert "pos" in tool.config.layer_norm
    swapped, clean = tool.run({}, ctx), tool.run({"image_id": "clean"}, ctx)
    assert swapped.score > 0.5 > clean.score
    assert max(box_iou(swapped.regions[0].bbox_xyxy, box) for box in ((30, 54, 66, 90), (110, 54, 146, 90))) > 0.2
    # the parts sit in fixed places, so the position was kept, and the summary says why
    bank = tool.reference_bank(ctx)
    assert not bank.drop_pos and any(c.startswith("position kept") for c in bank.choices)
    assert "Chosen for these references: position kept" in swapped.summary
    # per view one bank of the references' own patches (no copies), 75% of each kept (coreset)
    sizes = [_work(store.get(r), tool) for r in refs]
    kept = sum(int(np.ceil(tool.config.coreset * (h // 8) * (w // 8))) for h, w in sizes)
    assert [i.ntotal for i in bank.indexes] == [kept] * len(bank.views)
    # without it (setting patch_position off), a swap looks normal patch by patch
    ctx.settings = ToolSettings(device="cpu", out_dir=tmp_path, patch_position=False)
    plain = PatchKnn()
    assert plain.run({}, ctx).score < 0.5
    assert plain.config.layer_norm == "image,patch+image"


def test_position_left_out_when_parts_sit_anywhere(tmp_path):
    """References whose parts sit at random places: the position would only cost, so it is dropped."""
    store = ImageStore()
    rng = np.random.default_rng(0)
    refs = []
    for s in range(4):
        img = np.clip(rng.normal(150, 6, (H, W, 3)), 0, 255).astype(np.uint8)
        for _ in range(6):  # discs scattered anywhere
            cx, cy = int(rng.integers(20, W - 20)), int(rng.integers(20, H - 20))
            cv2.circle(img, (cx, cy), 10, (220, 40, 40), -1)
        refs.append(store.add_array(img, f"ref {s}", image_id=f"ref{s}"))
    ctx = ToolContext(store, query_id=refs[0], reference_ids=refs, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    bank = PatchKnn().reference_bank(ctx)
    assert bank.drop_pos, bank.choices
    assert any(c.startswith("position left out") for c in bank.choices)
    # a single reference cannot show it: the position is kept, and the choice says why
    ctx.reference_ids = refs[:1]
    one = PatchKnn().reference_bank(ctx)
    assert not one.drop_pos and "one reference" in " ".join(one.choices)


def _work(img, tool):
    from tools.patch_knn import working_size

    return working_size(img.height, img.width, tool.config, None)


def test_flatfield_removes_an_illumination_ramp():
    ramp = np.linspace(60, 200, W, dtype=np.float32)[None, :].repeat(H, 0)
    img = texture(3)[..., 0].astype(np.float32) - 128 + ramp
    grey = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    left, right = slice(40, 70), slice(W - 70, W - 40)  # away from the edges, where the blur reflects
    flat = normalise_grey(grey, "flatfield")[..., 0].astype(np.float32)
    std = normalise_grey(grey, "standardise")[..., 0].astype(np.float32)
    assert abs(std[:, right].mean() - std[:, left].mean()) > 40  # standardising keeps the ramp
    assert abs(flat[:, right].mean() - flat[:, left].mean()) < 5
    assert flat.std() > 20  # the texture stays
    colour = texture(3).copy()
    colour[..., 0] = 0
    assert np.array_equal(normalise_grey(colour, "flatfield"), colour)  # colour images pass unchanged
