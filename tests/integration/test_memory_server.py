"""ChromaStore against a real `chroma run` server on 127.0.0.1 (HttpClient)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from memory.store import ChromaStore, ServerUnreachableError, content_id, open_store

CHROMA = Path(sys.executable).with_name("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    exe = str(CHROMA) if CHROMA.exists() else shutil.which("chroma")
    if exe is None:
        pytest.skip("the `chroma` CLI (shipped with chromadb) is not installed")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen([exe, "run", "--path", str(tmp_path / "server-db"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (9, 9, 3), dtype=np.uint8)).save(path)
    return path


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(50 + i).standard_normal(12).astype(np.float32)


def test_server_store_round_trip(chroma_server, tmp_path):
    config = SimpleNamespace(memory_host="127.0.0.1", memory_port=chroma_server,
                             memory_token=SecretStr("secret"), memory_path=tmp_path / "local")
    store = open_store(config)
    assert store.location == f"chroma server 127.0.0.1:{chroma_server}"
    imgs = [_png(tmp_path / "imgs" / f"{i}.png", i) for i in range(6)]
    for i, img in enumerate(imgs):
        store.add(img, "bottle", "anomalous" if i == 5 else "normal", _vec(i), "fake@1",
                  defect_type="crack" if i == 5 else None)
    assert store.add(imgs[0], "bottle", "normal", _vec(0), "fake@1").id == content_id(imgs[0].read_bytes())
    assert store.count("bottle") == 6
    top = store.nearest("bottle", _vec(2), k=3)
    assert top[0][0].id == content_id(imgs[2].read_bytes()) and top[0][1] == pytest.approx(1.0, abs=1e-4)
    assert Path(top[0][0].image_path).parent.parent == tmp_path / "local" / "images"
    assert Path(top[0][0].image_path).is_file()
    assert [e.defect_type for e, _ in store.nearest("bottle", _vec(2), label="anomalous")] == ["crack"]
    store.add_note("bottle", "a bright rim is normal", reliability=0.6)
    assert store.stats() == {"bottle": {"normal": 5, "anomalous": 1, "notes": 1}}

    other = ChromaStore(host="127.0.0.1", port=chroma_server)  # a second client sees the same data
    assert [e.id for e, _ in other.nearest("bottle", _vec(2), k=3)] == [e.id for e, _ in top]
    other.delete(content_id(imgs[5].read_bytes()))
    assert store.count("bottle", label="anomalous") == 0


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(ServerUnreachableError, match="chroma run"):
        ChromaStore(host="127.0.0.1", port=_free_port())
