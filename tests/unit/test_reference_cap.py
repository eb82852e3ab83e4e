"""The reference cap: above max_references the most diverse references are kept, and a note says so."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tools.reference_select import farthest_point, select_references


def test_farthest_point_keeps_the_odd_ones_out_of_near_copies():
    rng = np.random.default_rng(0)
    base = rng.random(48)
    vectors = np.stack([base + rng.normal(0, 0.01, 48) for _ in range(10)] + [base + 1.0, base - 1.0])
    keep = farthest_point(vectors, 3)
    assert keep == sorted(keep) and len(keep) == 3
    assert {10, 11} <= set(keep)  # both outliers kept; one typical copy besides them
    assert farthest_point(vectors, 20) == list(range(12))


def test_within_the_cap_nothing_is_loaded_or_said():
    def load(_path):
        raise AssertionError("nothing to select")

    assert select_references(["a.png", "b.png"], 2, load) == (["a.png", "b.png"], None)


def test_note_names_the_cap_the_method_and_the_fix():
    pixels = {f"r{i}.png": np.full((8, 8, 3), i * 20, np.uint8) for i in range(6)}
    kept, note = select_references(list(pixels), 3, pixels.__getitem__)
    assert len(kept) == 3 and kept == sorted(kept, key=list(pixels).index)
    assert "6 references given, above the cap of 3" in note and "--max-references" in note
    assert "farthest-point" in note and "left out 3" in note


def test_detect_with_more_references_than_the_cap(tmp_path, isolated_home, capsys):
    from agent.cli import main
    from tests.agent_fixtures import texture, write_set

    paths = write_set(tmp_path, n_refs=0)
    refs = tmp_path / "many"
    refs.mkdir()
    for i in range(12):
        Image.fromarray(texture(i)[:64, :64]).save(refs / f"ref{i:02d}.png")
    code = main(["detect", str(paths["good"]), str(paths["bad"]), "--refs", str(refs), "--backend", "none",
                 "--json", "--max-references", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(r) for r in out.splitlines() if r.startswith("{")]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert err.count("note: 12 references given, above the cap of 4") == 1  # once per process, not per image
    assert all("12 references given" in r["explanation"] for r in rows)
    assert all("with 4 normal reference(s)" in r["evidence"][0]["summary"] for r in rows)
