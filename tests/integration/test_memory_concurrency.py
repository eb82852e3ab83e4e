"""The embedded store across processes: concurrent writers, a killed import, a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memory.importer import TreeItem, import_items
from memory.store import ChromaStore, content_id

REPO = Path(__file__).resolve().parents[2]
MODEL = "fake@1"
DIM = 16

HELPERS = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from memory.store import ChromaStore

    def vec(i):
        return np.random.default_rng(10_000 + i).standard_normal(16).astype(np.float32)

    class SlowEmbedder:
        model_id = "fake@1"
        dim = 16
        def embed(self, pixels):
            time.sleep(0.05)
            return vec(int(pixels[0, 0, 0]) * 256 + int(pixels[0, 0, 1]))
    """
)

WRITER = HELPERS + textwrap.dedent(
    """
    store_path, image_dir, start, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if len(sys.argv) > 5:  # a common start time, so both writers open the new store at once
        time.sleep(max(0.0, float(sys.argv[5]) - time.time()))
    store = ChromaStore(store_path)
    for i in range(start, start + n):
        store.add(image_dir / f"{i:04d}.png", "part", "normal", vec(i), "fake@1")
    print("ok", start)
    """
)

IMPORTER = HELPERS + textwrap.dedent(
    """
    from memory.importer import TreeItem, import_items
    store_path, image_dir, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    items = [TreeItem(image_dir / f"{i:04d}.png", "part", "normal") for i in range(n)]
    import_items(ChromaStore(store_path), SlowEmbedder(), items, batch_size=4)
    print("finished")
    """
)

QUERY = HELPERS + textwrap.dedent(
    """
    store = ChromaStore(sys.argv[1], create=False)
    for q in (3, 17, 30):
        print(",".join(e.id for e, _ in store.nearest("part", vec(q), k=5)))
    """
)


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(10_000 + i).standard_normal(DIM).astype(np.float32)


def _images(folder: Path, n: int) -> Path:
    """Distinct tiny PNGs whose first pixel encodes their index (for SlowEmbedder)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        px = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        px[0, 0, 0], px[0, 0, 1] = i // 256, i % 256
        Image.fromarray(px).save(folder / f"{i:04d}.png")
    return folder


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _popen(script: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_add_concurrently_without_losing_items(tmp_path):
    """Both writers start on a store that does not exist yet: creating the Chroma database and the
    collection race too (without the write lock one of them fails)."""
    n = 30
    images = _images(tmp_path / "imgs", 2 * n)
    script = _script(tmp_path, "writer.py", WRITER)
    go = time.time() + 4.0  # after both interpreters have imported chromadb
    procs = [_popen(script, tmp_path / "mem", images, start, n, go) for start in (0, n)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    with ChromaStore(tmp_path / "mem", create=False) as reader:
        assert reader.count("part") == 2 * n
        assert reader.count("part", embedding_model=MODEL) == 2 * n  # raw entries: no duplicates
        for i in range(2 * n):  # every vector is in the index, not only in the metadata
            (top, sim), = reader.nearest("part", _vec(i), k=1)
            assert top.id == content_id((images / f"{i:04d}.png").read_bytes())
            assert sim == pytest.approx(1.0, abs=1e-4)


def test_a_long_lived_reader_sees_another_process_writes(tmp_path):
    images = _images(tmp_path / "imgs", 20)
    reader = ChromaStore(tmp_path / "mem")
    reader.add(images / "0000.png", "part", "normal", _vec(0), MODEL)
    assert len(reader.nearest("part", _vec(5), k=20)) == 1  # loads this process's index
    proc = _popen(_script(tmp_path, "writer.py", WRITER), tmp_path / "mem", images, 1, 19)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    hits = reader.nearest("part", _vec(5), k=20)
    assert len(hits) == 20
    assert hits[0][0].id == content_id((images / "0005.png").read_bytes())
    reader.close()


def test_killed_import_leaves_a_store_that_opens_and_a_rerun_completes(tmp_path):
    n = 40
    images = _images(tmp_path / "imgs", n)
    store = ChromaStore(tmp_path / "mem")
    proc = _popen(_script(tmp_path, "importer.py", IMPORTER), tmp_path / "mem", images, n)
    deadline = time.monotonic() + 60
    while store.count() < 8:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the import made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store.close()

    reopened = ChromaStore(tmp_path / "mem", create=False)
    partial = reopened.count()
    assert 8 <= partial < n

    class Embedder:
        model_id, dim = MODEL, DIM

        def embed(self, pixels):
            return _vec(int(pixels[0, 0, 0]) * 256 + int(pixels[0, 0, 1]))

    items = [TreeItem(images / f"{i:04d}.png", "part", "normal") for i in range(n)]
    report = import_items(reopened, Embedder(), items)
    assert report.added == n - partial and report.skipped == partial
    assert reopened.count("part") == n
    assert reopened.count("part", embedding_model=MODEL) == n  # raw entries == distinct ids
    assert len(list((tmp_path / "mem" / "images").rglob("*.png"))) == n
    assert import_items(reopened, Embedder(), items).added == 0
    reopened.close()


def test_restart_in_a_new_process_returns_the_same_nearest_ids(tmp_path):
    images = _images(tmp_path / "imgs", 40)
    with ChromaStore(tmp_path / "mem") as store:
        for i in range(40):
            store.add(images / f"{i:04d}.png", "part", "normal", _vec(i), MODEL)
        expected = [",".join(e.id for e, _ in store.nearest("part", _vec(q), k=5)) for q in (3, 17, 30)]
    proc = _popen(_script(tmp_path, "query.py", QUERY), tmp_path / "mem")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == expected
