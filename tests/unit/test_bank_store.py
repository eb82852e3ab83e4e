"""Stored reference banks: a second process skips the build; a corrupt or stale file is rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.agent_fixtures import write_set
from tools.bank_store import FORMAT, BankStore, stats
from tools.calibration import Calibrator
from tools.patch_knn import ReferenceBank, _flat_index

ROOT = Path(__file__).resolve().parents[2]

DETECT = """
import json, sys
from agent import AnomalyAgent
from tools import bank_store
agent = AnomalyAgent.from_config(backend="none", device="cpu", **json.loads(sys.argv[3]))
v = agent.detect(sys.argv[1], references=sys.argv[2])
print(json.dumps({"stats": dict(bank_store.stats), "score": v.pred_score, "status": v.status}))
"""


def _detect(paths, home: Path, **settings) -> tuple[dict, str]:
    """One detect in a fresh process; the survey's second scale is off, so one bank is built per setting."""
    settings = {"survey_fine_scale": False, **settings}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_AGENT_")}
    env["ANOMALY_AGENT_HOME"] = str(home)
    done = subprocess.run([sys.executable, "-c", DETECT, str(paths["bad"]), str(paths["refs"]), json.dumps(settings)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_second_process_uses_the_stored_bank_and_a_corrupt_one_is_rebuilt(tmp_path):
    paths = write_set(tmp_path, n_refs=2)
    home = tmp_path / "home"
    first, _ = _detect(paths, home)
    assert first["stats"].get("built") == 1 and first["stats"].get("saved") == 1
    files = list((home / "banks").glob("patch_knn-*.npz"))
    assert len(files) == 1
    second, _ = _detect(paths, home)
    assert second["stats"].get("loaded") == 1 and "built" not in second["stats"]  # the build did not run
    assert second["score"] == pytest.approx(first["score"], abs=1e-9)
    # corrupt the stored file: it is rejected, deleted and rebuilt, never trusted
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))
    third, err = _detect(paths, home)
    assert third["stats"].get("rejected") == 1 and third["stats"].get("built") == 1
    assert "not usable" in err and "rebuilding" in err
    assert third["score"] == pytest.approx(first["score"], abs=1e-9)
    # another setting that shapes the bank is another key: built, not loaded
    fourth, _ = _detect(paths, home, patch_position=False)
    assert fourth["stats"].get("built") == 1 and "loaded" not in fourth["stats"]
    assert len(list((home / "banks").glob("patch_knn-*.npz"))) == 2
    # switched off: nothing is read or stored
    fifth, _ = _detect(paths, tmp_path / "home2", bank_cache=False)
    assert fifth["stats"].get("built") == 1 and "saved" not in fifth["stats"]
    assert not (tmp_path / "home2" / "banks").exists()


def _bank(n: int = 50) -> ReferenceBank:
    """Two views' banks (16-d and 8-d vectors), as the default two-view config builds."""
    rng = np.random.default_rng(0)
    indexes = [_flat_index(rng.random((n, 16), dtype=np.float32)), _flat_index(rng.random((n, 8), dtype=np.float32))]
    return ReferenceBank(indexes, [("image", "pos"), ("patch", "image")], [1.2, 0.8], True, Calibrator(1.5, 0.25, 4),
                         [1.0, 1.5, 2.0], 128.0, 8, 4, "leave-one-out", ["position kept: fixed places"], 0.75)


def test_round_trip_keeps_every_field(tmp_path):
    store = BankStore(tmp_path)
    bank = _bank()
    store.save("k1", bank)
    back = store.load("k1", ReferenceBank)
    assert back is not None and [(i.ntotal, i.d) for i in back.indexes] == [(i.ntotal, i.d) for i in bank.indexes]
    assert back.calibrator == bank.calibrator and back.choices == bank.choices
    assert (back.drop_pos, back.normal_scores, back.typical_patch) == (True, [1.0, 1.5, 2.0], 0.75)
    assert back.views == bank.views and back.scales == bank.scales
    for old, new in zip(bank.indexes, back.indexes, strict=True):  # vectors padded to the search width
        q = np.random.default_rng(1).random((3, old.d), dtype=np.float32)
        assert np.allclose(new.search(q, 1)[0], old.search(q, 1)[0])


def _rewrite_header(path: Path, change) -> None:
    with np.load(path) as data:
        index, header = data["index"], json.loads(data["header"].tobytes().decode())
    change(header)
    with open(path, "wb") as fh:
        np.savez(fh, index=index, header=np.frombuffer(json.dumps(header).encode(), np.uint8))


@pytest.mark.parametrize("damage", ["truncated", "not npz", "other format", "wrong key", "edited field",
                                    "index size"])
def test_bad_bank_files_are_rebuilt_not_trusted(tmp_path, damage):
    store = BankStore(tmp_path)
    path = store.save("k1", _bank())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "not npz":
        path.write_text("hello")
    elif damage == "other format":
        _rewrite_header(path, lambda h: h.update(format=FORMAT + 1))
    elif damage == "wrong key":
        _rewrite_header(path, lambda h: h.update(key="k2"))
    elif damage == "edited field":  # the checksum no longer matches
        _rewrite_header(path, lambda h: h["fields"].update(typical_patch=0.1))
    elif damage == "index size":
        _rewrite_header(path, lambda h: h["fields"]["indexes"][1].update(ntotal=49))
    before = stats["rejected"]
    assert store.load("k1", ReferenceBank) is None
    assert stats["rejected"] == before + 1 and not path.exists()


def test_unwritable_folder_keeps_working(tmp_path):
    (tmp_path / "file").write_text("x")
    store = BankStore(tmp_path / "file" / "banks")  # a file in the way
    assert store.save("k1", _bank()) is None
