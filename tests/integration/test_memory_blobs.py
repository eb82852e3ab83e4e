"""One memory for every worker: a real `chroma run` server holds the example images' bytes.

The writer adds examples, then its image files and its local copies are deleted; a worker started in
another working directory, with another (empty) ``memory_path``, judges an image with the server's
memory and shows the fake model the labelled anomaly as an image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer, inspection_responder
from memory.embed import default_embedder
from memory.store import content_id, open_store
from tests.agent_fixtures import write_set
from tests.integration.test_memory_server import chroma_server  # noqa: F401 - the real server fixture
from tools.images import load_image

REPO = Path(__file__).resolve().parents[2]


def _server_env(port: int, memory_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_AGENT_")}
    return {**env, "PYTHONPATH": str(REPO), "ANOMALY_AGENT_MEMORY_HOST": "127.0.0.1",
            "ANOMALY_AGENT_MEMORY_PORT": str(port), "ANOMALY_AGENT_MEMORY_PATH": str(memory_path),
            "ANOMALY_AGENT_HOME": str(memory_path.parent / "home"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def test_a_worker_elsewhere_shows_memory_examples_with_their_images(chroma_server, tmp_path):  # noqa: F811
    writer = tmp_path / "writer"
    images = write_set(writer / "data")
    bad_pixels = np.asarray(Image.open(images["bad"]).convert("RGB"))
    bad_id = content_id(images["bad"].read_bytes())
    cfg = load_config(backend="none", memory_host="127.0.0.1", memory_port=chroma_server,
                      memory_path=writer / "memory")
    embedder = default_embedder(cfg.tool_settings())
    with open_store(cfg) as store:
        for ref in sorted(images["refs"].glob("*.png")):
            store.add(ref, "texture", "normal", embedder.embed(load_image(ref)), embedder.model_id)
        store.add(images["bad"], "texture", "anomalous", embedder.embed(load_image(images["bad"])),
                  embedder.model_id, defect_type="blob", description="a dark round blob")
    query = tmp_path / "query.png"
    shutil.copyfile(images["good"], query)
    shutil.rmtree(writer)  # no file of the writer's is left: only the server has the bytes

    worker = tmp_path / "elsewhere"
    worker.mkdir()
    with FakeOpenAIServer(responder=inspection_responder) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "detect", str(query), "--category", "texture", "--refs", "memory",
             "--backend", "openai", "--base-url", srv.base_url, "--model", "fake-vlm", "--json"],
            cwd=worker, env=_server_env(chroma_server, Path("worker-memory")), capture_output=True, text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
        requests = list(srv.requests)
    assert verdict["status"] == "ok", verdict["error"]
    assert "3 normal reference" in verdict["evidence"][0]["summary"]  # the memory's normals, from the server
    local = worker / "worker-memory" / "images"  # relative memory_path: resolved in the worker's cwd
    assert (local / bad_id[:2] / f"{bad_id}.png").read_bytes() and len(list(local.rglob("*.png"))) == 4
    text = json.dumps(requests[0].body)  # the example's quoted defect type and note, as JSON escapes them
    assert "ANOMALOUS example of 'texture': \\\"blob\\\"" in text and "\\\"a dark round blob\\\"" in text
    shown = [img for req in requests for img in req.images
             if isinstance(img, np.ndarray) and img.shape == bad_pixels.shape]
    # the labelled anomaly reached the model as an image (JPEG-encoded on the way: close, not equal)
    assert any(np.abs(img.astype(int) - bad_pixels.astype(int)).mean() < 6 for img in shown)
