"""Memory reaches the agent: retrieved normals become references, labelled anomalies are shown as
examples, class notes go into the system prompt."""

from __future__ import annotations

from langchain_core.messages import SystemMessage

from agent.api import AnomalyAgent
from agent.backends.factory import build_backend
from agent.config import load_config
from memory.embed import default_embedder
from memory.store import open_store
from tests.agent_fixtures import label_logprobs, verdict_json, write_set
from tools.images import load_image


def test_references_examples_and_notes_from_memory(tmp_path):
    images = write_set(tmp_path)
    cfg = load_config(backend="scripted", memory_path=tmp_path / "memory", threads=2)
    store = open_store(cfg)
    embedder = default_embedder(cfg.tool_settings())
    for ref in sorted(images["refs"].glob("*.png")):
        store.add(ref, "texture", "normal", embedder.embed(load_image(ref)), embedder.model_id)
    store.add(images["bad"], "texture", "anomalous", embedder.embed(load_image(images["bad"])), embedder.model_id,
              defect_type="blob", description="a dark round blob")
    store.add_note("texture", "Vertical stripes are normal for this texture.", reliability=0.9)

    script = [{"content": "Looks like the references."},
              {"content": verdict_json("normal", "patch_knn scored low."), "logprobs": label_logprobs(0.1)}]
    backend = build_backend(cfg, script=script)
    agent = AnomalyAgent(cfg, backend=backend)
    v = agent.detect(images["good"], category="texture", references="memory")
    assert v.status == "ok", v.error
    first = backend.model.calls[0]
    system = [m for m in first if isinstance(m, SystemMessage)]
    assert "Vertical stripes are normal" in system[0].content
    text = " ".join(str(m.content) for m in first)
    blocks = [b.get("text", "") for m in first if isinstance(m.content, list) for b in m.content if isinstance(b, dict)]
    assert any("ANOMALOUS example of 'texture': \"blob\"" in b and '"a dark round blob"' in b for b in blocks)
    assert "3 normal reference image(s)" in text  # the memory's normals became the references
    assert "4 normal reference" not in text  # the anomalous example is not used as a reference
    assert "patch_knn compared each patch with 3 normal reference" in v.evidence[0].summary
