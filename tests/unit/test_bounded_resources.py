"""Bounded resources: the feature LRU, per-run release, no per-call state on tools, one temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.agent_fixtures import write_set
from tools.cache import ByteLRU, RunCache, estimate_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_lru_is_bounded_in_bytes_and_drops_least_recent():
    lru = ByteLRU(max_bytes=3 * 1000 + 400)
    for name in "abc":
        lru[name] = np.zeros(1000, np.uint8)
    assert lru["a"] is not None  # a is now the most recent
    lru["d"] = np.zeros(1000, np.uint8)
    assert set(lru) == {"a", "c", "d"} and lru.evictions == 1
    assert lru.nbytes <= lru.max_bytes
    lru["huge"] = np.zeros(10_000, np.uint8)  # larger than the whole budget: not kept
    assert "huge" not in lru and lru.nbytes <= lru.max_bytes


def test_estimate_counts_arrays_inside_dataclasses_and_lists():
    from tools.calibration import Calibrator
    from tools.patch_knn import ReferenceBank, _flat_index

    vecs = np.zeros((500, 64), np.float32)
    bank = ReferenceBank([_flat_index(vecs), _flat_index(vecs)], [("image", "pos"), ("patch", "image")], [1.0, 1.0], False,
                         Calibrator(1.0, 0.1, 3), [1.0], 100.0, 8, 3, "x", [], 0.5)
    assert estimate_bytes(bank) >= 2 * vecs.nbytes  # both views' indexes
    assert estimate_bytes([vecs, vecs]) >= 2 * vecs.nbytes


def test_run_cache_keeps_reference_entries_and_releases_the_query():
    shared = ByteLRU()
    cache = RunCache(shared, lambda: {"refdigest"})
    cache[("feat", "refdigest", "ref")] = 1
    cache[("bank", ("refdigest", "other"))] = 2
    cache[("feat", "querydigest", "query")] = 3
    assert set(shared) == {("feat", "refdigest", "ref"), ("bank", ("refdigest", "other"))}
    assert cache[("feat", "querydigest", "query")] == 3 and len(cache) == 3
    cache.release()
    assert ("feat", "querydigest", "query") not in cache and len(shared) == 2


def test_agent_memory_does_not_grow_with_the_number_of_images(tmp_path, isolated_home):
    """After the first image, further images add nothing to the agent-wide cache, and no run stays."""
    from agent import AnomalyAgent
    from tests.agent_fixtures import texture, with_defect

    paths = write_set(tmp_path, n_refs=2)
    agent = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False)
    first = agent.detect(paths["bad"], references=paths["refs"])
    assert first.status == "ok", first.error
    entries, size = len(agent.runtime.feature_cache), agent.runtime.feature_cache.nbytes
    from PIL import Image

    for seed in range(3):
        path = tmp_path / f"q{seed}.png"
        Image.fromarray(with_defect(texture(200 + seed))).save(path)
        assert agent.detect(path, references=paths["refs"]).status == "ok"
    assert len(agent.runtime.feature_cache) == entries
    assert agent.runtime.feature_cache.nbytes == size
    assert agent.runtime.runs == {}
    tool = agent.runtime.tool("patch_knn")
    assert not {"last_map", "last_result", "_grid_shape"} & set(vars(tool))


def test_feature_cache_budget_is_a_setting(isolated_home):
    from agent import AnomalyAgent

    agent = AnomalyAgent.from_config(backend="none", feature_cache_mb=5)
    assert agent.runtime.feature_cache.max_bytes == 5 * 2**20


def test_verdict_maps_are_arrays(tmp_path, isolated_home):
    from agent import AnomalyAgent

    paths = write_set(tmp_path, n_refs=2)
    agent = AnomalyAgent.from_config(backend="none", device="cpu", bank_cache=False)
    verdict = agent.detect(paths["bad"], references=paths["refs"])
    maps = verdict.maps()
    assert "patch_knn" in maps
    assert maps["patch_knn"].shape == (128, 128) and maps["patch_knn"].dtype == np.float32


def test_temporary_files_live_in_one_folder_removed_at_exit(tmp_path):
    code = (
        "from tools.base import ToolContext\nfrom tools.images import ImageStore\n"
        "a = ToolContext(ImageStore()).out_dir\nb = ToolContext(ImageStore()).out_dir\n"
        "assert a.parent == b.parent and a != b\n(a / 'map.png').write_bytes(b'x')\nprint(a.parent)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    root = Path(done.stdout.strip())
    assert root.parent == tmp_path and root.name.startswith("anomaly-agent-")
    assert not root.exists()  # removed at exit
    assert list(tmp_path.iterdir()) == []


def test_a_long_running_process_keeps_only_the_last_map_folders(monkeypatch):
    from tools import base
    from tools.base import ToolContext
    from tools.images import ImageStore

    monkeypatch.setattr(base, "MAPS_KEPT", 3)
    folders = [ToolContext(ImageStore()).out_dir for _ in range(5)]
    assert [f.exists() for f in folders] == [False, False, True, True, True]
