"""ChromaStore (embedded) with tiny images and hand-made vectors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from memory.store import (
    ChromaStore,
    EmbeddingDimensionError,
    EmbeddingModelMismatchError,
    ExampleConflictError,
    ExampleNotFoundError,
    MemoryStoreError,
    SchemaVersionError,
    StoreNotFoundError,
    collection_name,
    content_id,
)
from tools.images import ImageNotFoundError, NotAnImageError

DIM = 8


def _png(path, seed: int):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)
    return path


def _vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal(dim).astype(np.float32)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    return [_png(folder / f"{i}.png", i) for i in range(6)]


@pytest.fixture
def store(tmp_path):
    s = ChromaStore(tmp_path / "mem")
    yield s
    s.close()


def test_add_copies_image_and_is_idempotent(store, images, tmp_path):
    ex = store.add(images[0], "Bottle", "normal", _vec(0), "fake@1", source="unit")
    assert ex.id == content_id(images[0].read_bytes())
    assert ex.category == "bottle"
    assert ex.embedding_model == "fake@1"
    copied = tmp_path / "mem" / "images" / ex.id[:2] / f"{ex.id}.png"
    assert ex.image_path == str(copied)
    assert copied.read_bytes() == images[0].read_bytes()
    again = store.add(images[0], "bottle", "normal", _vec(0), "fake@1")
    assert again == ex
    assert store.count() == 1
    assert store.get(ex.id) == ex


def test_nearest_orders_by_cosine_similarity_and_filters_label(store, images):
    base = _vec(0)
    store.add(images[0], "bottle", "normal", base, "fake@1")
    store.add(images[1], "bottle", "normal", base + 0.3 * _vec(1), "fake@1")
    store.add(images[2], "bottle", "anomalous", -base, "fake@1", defect_type="crack",
              description="a crack at the neck")
    hits = store.nearest("bottle", base, k=10)
    assert len(hits) == 3
    sims = [s for _, s in hits]
    assert sims == sorted(sims, reverse=True)
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[-1] == pytest.approx(-1.0, abs=1e-5)
    anomalous = store.nearest("bottle", base, k=5, label="anomalous")
    assert [e.defect_type for e, _ in anomalous] == ["crack"]
    assert anomalous[0][0].description == "a crack at the neck"
    assert len(store.nearest("bottle", base, k=2)) == 2
    assert store.nearest("unknown category", base) == []


def test_models_never_mix(store, images):
    store.add(images[0], "bottle", "normal", _vec(0), "fake@1")
    store.add(images[0], "bottle", "normal", _vec(0, 4), "other@2")  # same image, second model
    store.add(images[1], "bottle", "normal", _vec(1, 4), "other@2")
    assert store.embedding_models("bottle") == ["fake@1", "other@2"]
    assert store.count("bottle") == 2  # distinct images
    assert store.count("bottle", embedding_model="fake@1") == 1
    assert [e.embedding_model for e, _ in store.nearest("bottle", _vec(0), embedding_model="fake@1")] == ["fake@1"]
    assert len(store.nearest("bottle", _vec(0, 4), embedding_model="other@2")) == 2
    with pytest.raises(EmbeddingModelMismatchError, match="several embedding models"):
        store.nearest("bottle", _vec(0))
    with pytest.raises(EmbeddingModelMismatchError, match="re-import"):
        store.nearest("bottle", _vec(0), embedding_model="third@3")
    with pytest.raises(EmbeddingDimensionError, match="size 4"):
        store.nearest("bottle", _vec(0, 8), embedding_model="other@2")
    with pytest.raises(EmbeddingDimensionError):
        store.add(images[2], "bottle", "normal", _vec(2, 5), "other@2")


def test_conflicting_label_or_category_is_refused(store, images):
    ex = store.add(images[0], "bottle", "normal", _vec(0), "fake@1")
    with pytest.raises(ExampleConflictError, match=ex.id):
        store.add(images[0], "bottle", "anomalous", _vec(0), "fake@1")
    with pytest.raises(ExampleConflictError, match="cable"):
        store.add(images[0], "cable", "normal", _vec(0), "fake@1")
    assert store.count() == 1


def test_delete_list_stats_categories(store, images):
    a = store.add(images[0], "bottle", "normal", _vec(0), "fake@1")
    store.add(images[1], "bottle", "anomalous", _vec(1), "fake@1", defect_type="crack")
    store.add(images[2], "cable", "normal", _vec(2), "fake@1")
    store.add_note("bottle", "a bright rim is normal", provenance="user", reliability=0.8)
    assert store.categories() == ["bottle", "cable"]
    assert store.stats() == {"bottle": {"normal": 1, "anomalous": 1, "notes": 1},
                             "cable": {"normal": 1, "anomalous": 0, "notes": 0}}
    assert [e.label for e in store.list("bottle")] == ["normal", "anomalous"]
    assert store.count(label="normal") == 2
    assert store.delete(a.id) == 1
    assert not __import__("pathlib").Path(a.image_path).exists()
    with pytest.raises(ExampleNotFoundError):
        store.get(a.id)
    with pytest.raises(ExampleNotFoundError):
        store.delete(a.id)
    assert store.count("bottle") == 1
    store.delete(store.list("cable")[0].id)
    assert store.categories() == ["bottle"]  # an emptied collection disappears


def test_notes_are_idempotent_and_removable(store):
    n1 = store.add_note("Bottle", "a bright  rim is normal", reliability=0.5)
    n2 = store.add_note("bottle", "a bright rim is normal", provenance="expert", reliability=0.9)
    store.add_note("bottle", "dust specks are normal", reliability=1.0)
    store.add_note("cable", "colours vary", reliability=0.2)
    assert n1.id == n2.id
    notes = store.list_notes("bottle")
    assert [n.text for n in notes] == ["dust specks are normal", "a bright rim is normal"]
    assert notes[1].provenance == "expert" and notes[1].reliability == pytest.approx(0.9)
    store.remove_note(n1.id)
    assert len(store.list_notes()) == 2
    with pytest.raises(ExampleNotFoundError):
        store.remove_note(n1.id)
    with pytest.raises(ValueError):
        store.add_note("bottle", "x", reliability=1.5)


def test_reopen_returns_same_nearest(tmp_path, images):
    with ChromaStore(tmp_path / "mem") as s:
        for i, img in enumerate(images):
            s.add(img, "bottle", "normal", _vec(i), "fake@1")
        before = [e.id for e, _ in s.nearest("bottle", _vec(3), k=4)]
    with ChromaStore(tmp_path / "mem", create=False) as s:
        assert [e.id for e, _ in s.nearest("bottle", _vec(3), k=4)] == before
        assert before[0] == content_id(images[3].read_bytes())


def test_bad_inputs(store, tmp_path, images):
    with pytest.raises(ImageNotFoundError):
        store.add(tmp_path / "missing.png", "bottle", "normal", _vec(0), "fake@1")
    text = tmp_path / "a.png"
    text.write_text("not an image")
    with pytest.raises(NotAnImageError):
        store.add(text, "bottle", "normal", _vec(0), "fake@1")
    with pytest.raises(MemoryStoreError, match="label"):
        store.add(images[0], "bottle", "weird", _vec(0), "fake@1")
    with pytest.raises(MemoryStoreError, match="zero"):
        store.add(images[0], "bottle", "normal", np.zeros(DIM), "fake@1")
    with pytest.raises(MemoryStoreError, match="category"):
        store.add(images[0], "  ", "normal", _vec(0), "fake@1")
    assert store.count() == 0


def test_missing_store_and_foreign_folder(tmp_path):
    with pytest.raises(StoreNotFoundError, match="memory import"):
        ChromaStore(tmp_path / "nope", create=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    with pytest.raises(MemoryStoreError, match="not an anomaly-agent memory store"):
        ChromaStore(foreign)


def test_newer_schema_is_refused(tmp_path):
    ChromaStore(tmp_path / "mem").close()
    marker = tmp_path / "mem" / "store.json"
    info = json.loads(marker.read_text())
    info["schema_version"] = 99
    marker.write_text(json.dumps(info))
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        ChromaStore(tmp_path / "mem")


def test_newer_schema_in_meta_collection_is_refused(tmp_path):
    import chromadb
    from chromadb.config import Settings

    ChromaStore(tmp_path / "mem").close()
    client = chromadb.PersistentClient(str(tmp_path / "mem" / "chroma"),
                                       settings=Settings(anonymized_telemetry=False))
    client.get_collection("aa_meta").modify(metadata={"schema_version": 7})
    client.close()
    with pytest.raises(SchemaVersionError, match="upgrade anomaly-agent"):
        ChromaStore(tmp_path / "mem")


@pytest.mark.parametrize("category", ["bottle", "Metal Nut", "x", "--weird//名前--", "a" * 600])
def test_collection_names_follow_chroma_rules(category):
    name = collection_name(category, "clip_vit:ViT-B-16@laion400m_e32")
    assert 3 <= len(name) <= 512
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]", name)
    assert ".." not in name
    assert collection_name(category.upper(), "m") != collection_name(category + "z", "m")
