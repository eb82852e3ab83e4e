"""Issue 22, item 5: an eval cannot see its own answers through memory.

The agent runs over real HTTP against the fake vLLM-like server, which records every image and
text it was shown (PNG, so pixels compare exactly).
"""

from __future__ import annotations

import json

import numpy as np

from agent.cli import main
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer, inspection_responder
from memory.embed import default_embedder
from memory.store import open_store
from tests.eval_helpers import anomalous_image, make_folder_tree, write_png
from tools.images import load_image

LEAK = "LEAK: the test image itself"
OTHER = "a scratch from another batch"


def _user_memory(tmp_path, root):
    """A user's store holding the test anomaly (as feedback would put it there) and one other anomaly."""
    cfg = load_config(memory_path=tmp_path / "user-memory", threads=2)
    embedder = default_embedder(cfg.tool_settings())
    test_image = root / "alpha" / "test" / "scratch" / "000.png"
    other = write_png(tmp_path / "elsewhere" / "other.png", anomalous_image(999, value=200)[0])
    with open_store(cfg) as store:
        for path, text in ((test_image, LEAK), (other, OTHER)):
            store.add(path, "alpha", "anomalous", embedder.embed(load_image(path)), embedder.model_id,
                      defect_type="scratch", description=text)
    return cfg.memory_path, test_image


def _eval(srv, root, out, *extra) -> int:
    return main(["eval", str(root), "--backend", "openai", "--base-url", srv.base_url, "--model", srv.models[0],
                 "--shots", "1", "--concurrency", "1", "--no-progress", "--no-report", "--bootstrap", "0",
                 "--out", str(out), *extra])


def _shown(requests, query: np.ndarray) -> list[tuple[str, int]]:
    """(request text, how many of its images are `query`'s pixels) for the requests about `query`
    (whose first image is the query)."""
    rows = []
    for r in requests:
        images = [img for img in r.images if isinstance(img, np.ndarray)]
        if images and images[0].shape == query.shape and np.array_equal(images[0], query):
            same = sum(1 for img in images if img.shape == query.shape and np.array_equal(img, query))
            rows.append((json.dumps(r.messages), same))
    return rows


def test_a_test_image_in_the_users_memory_is_never_shown_to_the_model(tmp_path, isolated_home, monkeypatch):
    monkeypatch.setenv("ANOMALY_AGENT_IMAGE_FORMAT", "PNG")
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=1, defects=("scratch",), n_bad=1)
    memory, test_image = _user_memory(tmp_path, root)
    query = load_image(test_image)
    with FakeOpenAIServer(responder=inspection_responder) as srv:
        code = _eval(srv, root, tmp_path / "run", "--memory", str(memory))
        requests = list(srv.requests)
    assert code == 0
    about_query = _shown(requests, query)
    assert about_query, "no request showed the test image as its query"
    for text, same in about_query:
        assert same == 1, "the query's own image was shown again as a memory example"
        assert LEAK not in text
        assert OTHER in text  # the other labelled anomaly was retrieved and shown: memory was read
    # the other query was shown the test anomaly as a labelled example (retrieval works; only the
    # query's own image is left out)
    assert any(LEAK in json.dumps(r.messages) for r in requests)
    identity = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["memory"]
    assert identity["scope"] == "path" and identity["path"] == str(memory) and identity["examples"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["memory_leave_out"] == "near-copies"


def test_eval_without_memory_reads_none_of_the_users(tmp_path, isolated_home, monkeypatch):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=1, defects=("scratch",), n_bad=1)
    memory, _ = _user_memory(tmp_path, root)
    monkeypatch.setenv("ANOMALY_AGENT_MEMORY_PATH", str(memory))  # the user's default memory
    with FakeOpenAIServer(responder=inspection_responder) as srv:
        code = _eval(srv, root, tmp_path / "run")
        requests = list(srv.requests)
    assert code == 0 and requests
    text = " ".join(json.dumps(r.messages) for r in requests)
    assert LEAK not in text and OTHER not in text
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["memory"]["scope"] == "run"


def test_resume_refuses_a_memory_whose_contents_changed(tmp_path, isolated_home, capsys):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=1, defects=("scratch",), n_bad=1)
    memory, _ = _user_memory(tmp_path, root)
    with FakeOpenAIServer(responder=inspection_responder) as srv:
        assert _eval(srv, root, tmp_path / "run", "--memory", str(memory)) == 0
        cfg = load_config(memory_path=memory)
        with open_store(cfg) as store:
            store.add_note("alpha", "feedback: scratches near the rim are normal")
        code = _eval(srv, root, tmp_path / "run", "--memory", str(memory), "--resume")
    assert code == 2
    assert "was run with another configuration" in capsys.readouterr().err


def test_anomaly_shots_never_write_into_a_shared_memory_server(tmp_path, isolated_home, monkeypatch, capsys):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=1, defects=("scratch",), n_bad=2)
    monkeypatch.setenv("ANOMALY_AGENT_MEMORY_HOST", "memory.example.invalid")
    code = main(["eval", str(root), "--backend", "none", "--anomaly-shots", "1", "--memory", "server",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "would write held-out test anomalies into the shared memory server memory.example.invalid:8000" in err
    assert "Fix: drop --memory" in err
    assert not (tmp_path / "run").exists()


def test_anomaly_shots_with_a_configured_server_go_to_the_runs_own_memory(tmp_path, isolated_home, monkeypatch):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_good=1, defects=("scratch",), n_bad=2)
    # a server that does not exist: any write to it would fail the run
    monkeypatch.setenv("ANOMALY_AGENT_MEMORY_HOST", "memory.example.invalid")
    code = main(["eval", str(root), "--backend", "none", "--anomaly-shots", "1", "--shots", "1", "--no-progress", "--no-report",
                 "--bootstrap", "0", "--out", str(tmp_path / "run")])
    assert code == 0
    assert (tmp_path / "run" / "memory" / "r0").is_dir()  # the held-out anomaly went into the run's store


def test_a_re_encoded_copy_of_the_query_is_left_out_and_its_defect_twin_kept(tmp_path):
    """With "near-copies" (what an eval reading a user's memory uses) the own-image filter compares pixels
    loosely: a JPEG (or half-size) copy of the query is the query; the same scene with a small clear defect,
    or another normal image, is not. "same-pixels" (detect, serve) leaves out only identical pixels."""
    import hashlib
    import io
    from types import SimpleNamespace

    from PIL import Image

    from agent.nodes.memory import not_the_query
    from memory.examples import MemoryExample

    rng = np.random.default_rng(3)
    query = np.clip(rng.normal(128, 20, (192, 256, 3)), 0, 255).astype(np.uint8)
    query = np.ascontiguousarray(np.repeat(np.repeat(query[::8, ::8], 8, 0), 8, 1))  # blocky texture, 8 px cells
    other = np.ascontiguousarray(np.roll(query, 8, axis=1))  # another normal: the texture shifted one cell
    twin = query.copy()
    twin[90:100, 120:130] = 0  # the same part with a small dark defect
    hits = []
    for name, pixels, fmt in (("same", query, "PNG"), ("jpeg", query, "JPEG"), ("half", query[::2, ::2], "PNG"),
                              ("twin", twin, "PNG"), ("other", other, "PNG")):
        path = tmp_path / f"{name}.{fmt.lower()}"
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt, **({"quality": 80} if fmt == "JPEG" else {}))
        path.write_bytes(buf.getvalue())
        hits.append((MemoryExample(id=name.rjust(32, "0"), category="c", label="anomalous", image_path=str(path),
                                   embedding_model="m"), 0.9))
    stored = SimpleNamespace(pixels=query, digest=hashlib.sha256(query.tobytes()).hexdigest())

    def kept(leave_out):
        return [ex.id.lstrip("0") for ex, _ in not_the_query(hits, stored, 10**8, 10, leave_out)]

    assert kept("near-copies") == ["twin", "other"]
    assert kept("same-pixels") == ["jpeg", "half", "twin", "other"]
