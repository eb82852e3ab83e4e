"""Learning from the inspector without a model: known defects raise similar images' scores and are named,
hard normals join uploaded references, feedback refits the category's threshold and says so, undo reverts."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.agent_fixtures import texture, with_defect, write_set
from tools.base import ToolContext, ToolSettings
from tools.images import ImageStore
from tools.patch_knn import PatchKnn


def _faint_defect(pixels: np.ndarray, contrast: float = 0.2) -> np.ndarray:
    """The fixture's blob at a fraction of its contrast (0.2: near the edge of normal; 0.08: below it)."""
    strong = with_defect(pixels).astype(np.float32)
    return np.clip(pixels + contrast * (strong - pixels), 0, 255).astype(np.uint8)


def test_a_known_defect_raises_the_score_of_a_similar_patch_and_is_named(tmp_path):
    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    ctx.reference_ids = [store.add_array(texture(i), source=f"ref{i}", prefix="ref") for i in range(3)]
    query = store.add_array(with_defect(texture(50)), source="query", prefix="query")
    good = store.add_array(texture(51), source="good", prefix="query")
    tool = PatchKnn()
    plain, plain_good = tool.measure(ctx, query), tool.measure(ctx, good)
    known = store.add_array(with_defect(texture(60)), source="known", prefix="known")
    ctx.known_defects = [(known, "'blob' (memory example abc12345)")]
    boosted, boosted_good = tool.measure(ctx, query), tool.measure(ctx, good)
    assert boosted.raw_score > plain.raw_score * 1.2
    assert boosted.known is not None and boosted.known.example == "'blob' (memory example abc12345)"
    assert boosted_good.raw_score < boosted.raw_score / 2  # a normal image is not pulled up with it
    assert boosted_good.raw_score <= plain_good.raw_score * 1.1
    out = tool.run({"image_id": query}, ctx)
    assert "resembles the known defect 'blob'" in out.summary
    assert out.known_defect is not None and out.known_defect.example == "'blob' (memory example abc12345)"
    assert out.known_defect.ratio > 1 and out.known_defect.raw_after == round(out.raw_score, 4)
    assert out.known_defect.raw_before == round(plain.raw_score, 4)
    good_out = tool.run({"image_id": good}, ctx)
    assert (good_out.known_defect is None) == (boosted_good.known is None or boosted_good.known.example is None)


def test_the_known_defect_itself_is_not_boosted_by_its_own_copy(tmp_path):
    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    ctx.reference_ids = [store.add_array(texture(i), source=f"ref{i}", prefix="ref") for i in range(3)]
    bad = with_defect(texture(70))
    query = store.add_array(bad, source="query", prefix="query")
    plain = PatchKnn().measure(ctx, query).raw_score
    ctx.known_defects = [(store.add_array(bad.copy(), source="same", prefix="known"), "same")]
    assert PatchKnn().measure(ctx, query).raw_score == plain


def test_feedback_through_the_agent_learns_and_undo_reverts(tmp_path):
    from agent import AnomalyAgent
    from agent.feedback import record_feedback

    paths = write_set(tmp_path, n_refs=3)
    faint = tmp_path / "faint.png"
    Image.fromarray(_faint_defect(texture(102))).save(faint)
    agent = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False, memory_path=tmp_path / "mem")
    rt = agent.runtime
    first = agent.detect(faint, category="tile", references=paths["refs"])
    assert first.status == "ok", first.error
    from memory.store import open_store

    store = open_store(rt.config)
    rt._memory, rt._memory_checked = store, True
    result = record_feedback(rt, store, paths["bad"], "tile", "anomalous", 0.45, run_id="r1", defect_type="blob")
    assert "stored as a labelled anomaly of 'tile'" in result.message
    assert "threshold moved 0.50 ->" in result.message and result.threshold_after < 0.5
    again = agent.detect(faint, category="tile", references=paths["refs"])
    assert again.threshold == result.threshold_after
    assert again.threshold_source.startswith("refit for 'tile'")
    assert again.pred_score > first.pred_score
    pk = next(e for e in again.evidence if e.tool == "patch_knn")
    assert "known defect 'blob'" in pk.summary
    assert pk.known_defect is not None and "'blob'" in pk.known_defect.example  # structured, in the verdict JSON
    assert pk.known_defect.raw_after > pk.known_defect.raw_before
    assert next(e for e in first.evidence if e.tool == "patch_knn").known_defect is None
    # a configured threshold wins over the refit one
    fixed = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False, memory_path=tmp_path / "mem",
                                     threshold=0.5)
    assert fixed.runtime.active_threshold("tile") == (0.5, "configured")
    # undo: the example leaves memory and its label leaves the threshold
    store.delete(result.example.id)
    rt.operating_points().remove(result.example.id)
    assert rt.active_threshold("tile") == (0.5, "default")
    store.close()


def _rough(seed: int) -> np.ndarray:
    """A normal of the fixture's texture with twice its grain: an unusual normal (a likely false alarm)."""
    pixels = texture(seed).astype(np.float32)
    noise = np.random.default_rng(seed + 1000).normal(0, 12, pixels.shape[:2])[..., None]
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def test_a_hard_normal_widens_the_bank_but_does_not_move_the_edge_of_normal(tmp_path):
    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    originals = [store.add_array(texture(i), source=f"ref{i}", prefix="ref") for i in range(3)]
    hard = store.add_array(_rough(40), source="hard", prefix="ref")
    ctx.reference_ids = [*originals, hard]
    query = store.add_array(_rough(41), source="query", prefix="query")
    tool = PatchKnn()
    everyone = tool.measure(ctx, query)  # the hard normal is held out too
    ctx.bank_only_ids = {hard}
    bank_only = tool.measure(ctx, query)
    assert len(everyone.bank.normal_scores) == 4  # the hard normal's own leave-one-out score is in the edge
    assert len(bank_only.bank.normal_scores) == 3  # only the other references calibrate
    ctx.reference_ids, ctx.bank_only_ids = originals, set()
    without = tool.measure(ctx, query)
    assert bank_only.score < without.score  # a query like the hard normal is nearer to the bank
    ctx.reference_ids, ctx.bank_only_ids = [originals[0], hard], {hard}  # one reference left to calibrate on
    assert tool.reference_bank(ctx).calibration == "augmented copies"


def test_references_from_memory_mark_the_inspectors_hard_normals_bank_only(tmp_path):
    from agent.nodes.memory import is_hard_normal

    assert is_hard_normal({"label": "normal", "source": "feedback on run r1"})
    assert not is_hard_normal({"label": "normal", "source": "import of /data"})
    assert not is_hard_normal({"label": "anomalous", "source": "feedback on run r1"})


def test_a_missed_defect_below_the_edge_still_teaches_its_strongest_patches(tmp_path):
    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    ctx.reference_ids = [store.add_array(texture(i), source=f"ref{i}", prefix="ref") for i in range(3)]
    tool = PatchKnn()
    missed = store.add_array(_faint_defect(texture(60), 0.08), source="missed", prefix="known")
    query = store.add_array(_faint_defect(texture(50), 0.08), source="query", prefix="query")
    bank = tool.reference_bank(ctx)
    assert tool.measure(ctx, missed).raw_score < bank.edge  # the labelled example itself reads as normal
    plain = tool.measure(ctx, query)
    ctx.known_defects = [(missed, "'faint blob' (memory example 0a1b2c3d)")]
    assert tool.defect_bank(ctx, bank).kept[0] >= 1
    boosted = tool.measure(ctx, query)
    assert boosted.raw_score > plain.raw_score
    assert boosted.known is not None and boosted.known.example == "'faint blob' (memory example 0a1b2c3d)"


def test_with_references_from_memory_a_false_alarm_marked_normal_widens_the_bank_only(tmp_path):
    from agent import AnomalyAgent
    from agent.feedback import record_feedback
    from memory.importer import TreeItem, import_items
    from memory.store import open_store

    write_set(tmp_path, n_refs=3)
    rough = tmp_path / "rough.png"
    Image.fromarray(_rough(41)).save(rough)
    agent = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False, memory_path=tmp_path / "mem")
    rt = agent.runtime
    store = open_store(rt.config)
    rt._memory, rt._memory_checked = store, True
    import_items(store, rt.embedder(), [TreeItem(p, "tile", "normal", None, None)
                                        for p in sorted((tmp_path / "refs").glob("*.png"))])
    first = agent.detect(rough, category="tile", references="memory")
    assert first.status == "ok", first.error
    record_feedback(rt, store, rough, "tile", "normal", first.pred_score, run_id="r1")
    again = agent.detect(tmp_path / "good.png", category="tile", references="memory")
    pk = next(e for e in again.evidence if e.tool == "patch_knn")
    assert "1 reference(s) the inspector marked as false alarms widen the bank" in pk.summary
    assert "calibrated on the other 3" in pk.summary
    store.close()


def test_each_scale_reports_its_score_without_the_hard_normals(tmp_path):
    from tools.patch_knn import PatchKnnFine

    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=tmp_path))
    originals = [store.add_array(texture(i), source=f"ref{i}", prefix="ref") for i in range(3)]
    hard = store.add_array(_rough(40), source="hard", prefix="ref")
    query = store.add_array(_rough(41), source="query", prefix="query")
    for tool in (PatchKnn(), PatchKnnFine()):
        ctx.reference_ids, ctx.bank_only_ids = originals, set()
        alone = tool.measure(ctx, query)
        assert tool.without_hard_normals(ctx, query) is None  # no hard normal among the references
        assert tool.run({"image_id": query}, ctx).hard_normals is None
        ctx.reference_ids, ctx.bank_only_ids = [*originals, hard], {hard}
        without = tool.without_hard_normals(ctx, query)
        assert without is not None and without.n == 1
        assert without.raw_without == alone.raw_score  # exactly the bank of the other references
        assert without.score_without == alone.score
        assert without.reference_scores_without == alone.bank.normal_scores
        assert tool.measure(ctx, query).score < alone.score  # the query is like the hard normal
        out = tool.run({"image_id": query}, ctx)
        assert out.hard_normals == without
        assert f"it would score {alone.score:.2f}" in out.summary
    ctx.reference_ids = [hard]  # only hard normals: nothing else to compare with, nothing reported
    assert PatchKnn().without_hard_normals(ctx, query) is None


def test_a_verdict_that_is_normal_only_because_of_hard_normals_says_so_and_how_to_undo(tmp_path):
    from agent import AnomalyAgent
    from agent.feedback import record_feedback
    from memory.store import open_store

    refs = []
    for i in range(3):
        refs.append(tmp_path / f"ref{i}.png")
        Image.fromarray(texture(i)).save(refs[-1])
    rough = []
    for seed in (40, 41, 42):
        rough.append(tmp_path / f"rough{seed}.png")
        Image.fromarray(_rough(seed)).save(rough[-1])
    agent = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False, memory_path=tmp_path / "mem",
                                     threshold=0.9)
    rt = agent.runtime
    first = agent.detect(rough[2], category="tile", references=refs)
    assert first.status == "ok", first.error
    assert first.pred_label == "anomalous"
    assert "because of the inspector's feedback" not in first.explanation
    store = open_store(rt.config)
    rt._memory, rt._memory_checked = store, True
    ids = [record_feedback(rt, store, p, "tile", "normal", 0.95, run_id=f"r{i}").example.id
           for i, p in enumerate(rough[:2])]
    again = agent.detect(rough[2], category="tile", references=refs)
    survey = next(e for e in again.evidence if e.tool == "survey")
    assert survey.hard_normals is not None and survey.hard_normals.n == 2
    assert survey.score < survey.hard_normals.score_without
    assert survey.hard_normals.score_without == first.pred_score  # the same references, the same reading
    assert again.pred_label == "normal", again.explanation
    assert "Normal because of the inspector's feedback: without the 2 image(s)" in again.explanation
    assert all(i in again.explanation for i in ids) and "memory remove" in again.explanation
    store.close()
