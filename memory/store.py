"""The example store: few-shot references and class notes per category, in Chroma.

Layout and rules:
- One Chroma collection per (category, embedding model id), named
  ``ex__<category-slug>-<hash8>__<model-slug>-<hash8>``; its metadata records the exact category,
  the model id, the vector dimension and the schema version. Retrieval queries one collection, so it
  needs no metadata filter, and vectors of two embedding models never meet: a query names its model
  and reaches that model's collection only (a dimension mismatch is a clear error).
- An example's id is the content hash of its image file (sha256, first 32 hex chars). Adding the
  same image again is a no-op that returns the stored example. One image belongs to one category
  with one label; it may be indexed by several embedding models.
- Similarities are cosine similarities in [-1, 1] (the collections use the cosine space;
  similarity = 1 - Chroma's cosine distance); vectors are L2-normalised on the way in.
- Embedded mode (default): ``<path>/store.json`` (format marker and schema version),
  ``<path>/chroma/`` (the `chromadb.PersistentClient` data), ``<path>/images/<id[:2]>/<id>.<ext>``
  (copies of the images, so the folder is self-contained), ``<path>/.write.lock`` and
  ``<path>/generation`` (see `memory.lock`). Writers in several processes are serialised by the
  lock; a reader reopens its client when another process has written since.
- Server mode: `chromadb.HttpClient(host, port)` with an optional bearer token; the server
  serialises writes. Each image's bytes are also stored in the server (`memory.blobs`, content
  addressed), so a worker on another machine can show the model a memory example: it writes the
  bytes into its own ``images_dir`` on first use. Images are copied into ``images_dir`` when given,
  else the original paths are recorded.
- The schema version lives in a meta collection (and in ``store.json`` when embedded); a store of a
  newer schema is refused with `SchemaVersionError`.
- Class notes live in one ``aa_notes`` collection (a constant 1-d vector: they are listed by
  category, never searched by similarity).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memory.examples import LABELS, ClassNote, MemoryExample
from memory.lock import StoreLock
from tools.images import ImageNotFoundError, NotAnImageError

if TYPE_CHECKING:  # memory never imports agent at run time (DESIGN.md, dependency direction)
    from agent.config import AgentConfig

SCHEMA_VERSION = 1
STORE_FORMAT = "anomaly-agent-memory"
META_COLLECTION = "aa_meta"
NOTES_COLLECTION = "aa_notes"
EXAMPLE_PREFIX = "ex__"
ID_CHARS = 32


class MemoryStoreError(ValueError):
    """A memory-store problem the user can fix; the message names the cause and the fix."""


class StoreNotFoundError(MemoryStoreError):
    """No store at the given path (and creating one was not asked for)."""


class SchemaVersionError(MemoryStoreError):
    """The store was written by a newer schema than this code reads."""


class ServerUnreachableError(MemoryStoreError):
    """The Chroma server does not answer."""


class EmbeddingModelMismatchError(MemoryStoreError):
    """The query's embedding model has no examples of the category, but other models do."""


class EmbeddingDimensionError(MemoryStoreError):
    """A vector's dimension differs from the collection's."""


class ExampleNotFoundError(MemoryStoreError):
    """No example or note with that id."""


class ExampleConflictError(MemoryStoreError):
    """The image is already stored under another category or label."""


def normalize_category(name: str) -> str:
    """Category names compare case- and whitespace-insensitively: "Metal  Nut" -> "metal nut"."""
    norm = " ".join(str(name).split()).lower()
    if not norm:
        msg = "empty category name. Fix: pass --category NAME (e.g. bottle)"
        raise MemoryStoreError(msg)
    return norm


def _slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def collection_name(category: str, embedding_model: str) -> str:
    """Chroma collection of (normalised category, model id); valid under Chroma's name rules
    (3-512 chars of [a-zA-Z0-9._-], alphanumeric first and last)."""
    cat = normalize_category(category)
    return f"{EXAMPLE_PREFIX}{_slug(cat)}-{_hash8(cat)}__{_slug(embedding_model)}-{_hash8(embedding_model)}"


def content_id(data: bytes) -> str:
    """The example id of an image file's bytes: sha256 hex, first `ID_CHARS` characters."""
    return hashlib.sha256(data).hexdigest()[:ID_CHARS]


def _unit_vector(embedding: Any, what: str = "embedding") -> np.ndarray:
    vec = np.asarray(embedding, dtype=np.float32)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or vec.size == 0:
        msg = f"{what} must be a 1-d vector (D,), got shape {vec.shape}"
        raise MemoryStoreError(msg)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        msg = f"{what} has a zero or non-finite norm; it cannot be compared by cosine similarity"
        raise MemoryStoreError(msg)
    return vec / norm


@dataclass
class ExampleInput:
    """One example to add.

    Attributes:
        image: path of an image file, or its encoded bytes (PNG, JPEG, ...).
        category: category name (normalised on the way in).
        label: "normal" or "anomalous".
        embedding: (D,) float vector from the embedder named by `embedding_model`.
        embedding_model: the embedder's model id.
        defect_type, description, source: optional fields of `MemoryExample`.
    """

    image: str | Path | bytes
    category: str
    label: str
    embedding: Any
    embedding_model: str
    defect_type: str | None = None
    description: str | None = None
    source: str | None = None


@dataclass
class _Prepared:
    id: str
    data: bytes
    ext: str
    item: ExampleInput
    category: str
    vector: np.ndarray


def _read_image_bytes(image: str | Path | bytes) -> tuple[bytes, str, str | None]:
    """(file bytes, extension with dot, source path or None); checks the header is an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, bytes | bytearray):
        data, source, name = bytes(image), None, "<bytes>"
    else:
        path = Path(image).expanduser()
        name = str(image)
        if not path.is_file():
            if path.is_dir():
                raise NotAnImageError(name, "it is a directory")
            raise ImageNotFoundError(name)
        data, source = path.read_bytes(), str(path.resolve())
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "").upper()
    except (UnidentifiedImageError, OSError) as exc:
        raise NotAnImageError(name, "unrecognised format") from exc
    ext = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}.get(fmt)
    if ext is None:
        raise NotAnImageError(name, f"format {fmt or 'unknown'} is not supported")
    return data, ext, source


class ExampleStore(ABC):
    """Few-shot examples and class notes, per category. See the module docstring for the rules."""

    @abstractmethod
    def add_many(self, items: Sequence[ExampleInput]) -> list[MemoryExample]:
        """Add examples (idempotent by content hash); returns the stored examples, in order.

        Raises:
            ImageInputError: a path is missing or not an image.
            ExampleConflictError: an image is already stored under another category or label.
            EmbeddingDimensionError: a vector's size differs from its collection's.
        """

    def add(
        self,
        image: str | Path | bytes,
        category: str,
        label: str,
        embedding: Any,
        embedding_model: str,
        *,
        defect_type: str | None = None,
        description: str | None = None,
        source: str | None = None,
    ) -> MemoryExample:
        """Add one example (a no-op returning the stored one if the image is already there)."""
        item = ExampleInput(image, category, label, embedding, embedding_model, defect_type,
                            description, source)
        return self.add_many([item])[0]

    @abstractmethod
    def get(self, example_id: str, embedding_model: str | None = None) -> MemoryExample:
        """The example with this id. Raises `ExampleNotFoundError`."""

    @abstractmethod
    def has(self, example_id: str, embedding_model: str | None = None) -> bool:
        """Whether the example is stored (under `embedding_model`, or any model)."""

    @abstractmethod
    def delete(self, example_id: str) -> int:
        """Remove the example from every model's collection; returns how many entries went.
        Raises `ExampleNotFoundError`."""

    @abstractmethod
    def list(
        self, category: str | None = None, label: str | None = None, embedding_model: str | None = None
    ) -> list[MemoryExample]:
        """Examples, one per id (sorted by category, label, id)."""

    @abstractmethod
    def nearest(
        self,
        category: str,
        embedding: Any,
        k: int = 5,
        label: str | None = None,
        embedding_model: str | None = None,
    ) -> list[tuple[MemoryExample, float]]:
        """The k examples of `category` nearest to `embedding`.

        Args:
            category: category name.
            embedding: (D,) query vector from the embedder `embedding_model`.
            k: how many to return (fewer when the category has fewer).
            label: only "normal" or only "anomalous" examples; None = both.
            embedding_model: the query vector's model id. None: the category's only model (an
                error when it has several).

        Returns:
            (example, cosine similarity in [-1, 1]) pairs, most similar first; [] when the category
            has no examples at all.

        Raises:
            EmbeddingModelMismatchError: the category only has examples of other models.
            EmbeddingDimensionError: the vector's size differs from the collection's.
        """

    @abstractmethod
    def count(
        self, category: str | None = None, label: str | None = None, embedding_model: str | None = None
    ) -> int:
        """Number of distinct examples matching the filters."""

    @abstractmethod
    def categories(self) -> list[str]:
        """Categories with at least one example, sorted."""

    @abstractmethod
    def embedding_models(self, category: str | None = None) -> list[str]:
        """Model ids with examples (of `category`), sorted."""

    @abstractmethod
    def add_note(
        self, category: str, text: str, provenance: str = "user", reliability: float = 1.0
    ) -> ClassNote:
        """Add (or update the provenance/reliability of) a class note; idempotent by (category, text)."""

    @abstractmethod
    def list_notes(self, category: str | None = None) -> list[ClassNote]:
        """Notes (of `category`), most reliable first."""

    @abstractmethod
    def remove_note(self, note_id: str) -> None:
        """Remove a note. Raises `ExampleNotFoundError`."""

    def stats(self) -> dict[str, dict[str, int]]:
        """{category: {"normal": n, "anomalous": m, "notes": k}} counting distinct examples."""
        out: dict[str, dict[str, int]] = {}
        for ex in self.list():
            row = out.setdefault(ex.category, {"normal": 0, "anomalous": 0, "notes": 0})
            row[ex.label] += 1
        for note in self.list_notes():
            out.setdefault(note.category, {"normal": 0, "anomalous": 0, "notes": 0})["notes"] += 1
        return dict(sorted(out.items()))


def _serialized(method: Callable) -> Callable:
    """Run a `ChromaStore` method under the store's thread lock (a reopen must not race a query)."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._thread_lock:
            return method(self, *args, **kwargs)

    return wrapper


class ChromaStore(ExampleStore):
    """`ExampleStore` on Chroma: embedded (`PersistentClient`) by default, or a shared server.

    Args:
        path: store folder (embedded mode). Ignored for the vectors when `host` is given.
        host, port, ssl: a Chroma server (``chroma run --path DIR --port P``); enables server mode.
        token: bearer token sent as ``Authorization: Bearer <token>`` to the server.
        images_dir: where image copies go (embedded: ``<path>/images``; server: None = record the
            original paths).
        copy_images: copy images into `images_dir` (default) or record the original paths.
        create: create the store when it does not exist (else `StoreNotFoundError`).
        lock_timeout_s: how long an embedded writer waits for another process's write lock.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        token: str | None = None,
        images_dir: str | Path | None = None,
        copy_images: bool = True,
        create: bool = True,
        lock_timeout_s: float = 300.0,
    ) -> None:
        self._thread_lock = threading.RLock()
        self._blobs = None
        self.host, self.port = host, port
        self.root = Path(path).expanduser().resolve() if path is not None else None
        self._lock: StoreLock | None = None
        self._generation = 0
        self._cols: dict[str, Any] = {}
        self._models_by_category: dict[str, list[str]] | None = None
        if host:
            self.images_dir = Path(images_dir).expanduser().resolve() if images_dir else None
            self._client = self._connect_server(host, port, ssl, token)
            self.location = f"chroma server {host}:{port}"
        else:
            if self.root is None:
                msg = "ChromaStore needs a path (embedded) or a host (server)"
                raise MemoryStoreError(msg)
            self.images_dir = Path(images_dir).expanduser().resolve() if images_dir else self.root / "images"
            self.location = str(self.root)
            self._prepare_folder(create, check_empty=False)
            self._lock = StoreLock(self.root, timeout_s=lock_timeout_s)
            with self._lock.held():
                self._prepare_folder(create, check_empty=True)
                self._write_marker()
                self._generation = self._lock.generation()
                self._client = self._open_embedded()
        self.copy_images = copy_images and self.images_dir is not None
        with self._writing(bump=False):
            self._check_schema()
        if host:  # the image bytes every worker can read (see `memory.blobs`)
            from memory.blobs import BlobStore

            self._blobs = BlobStore(self._client, SCHEMA_VERSION)

    # --- connection -------------------------------------------------------------------------
    def _prepare_folder(self, create: bool, check_empty: bool) -> None:
        """Refuse a missing store (create=False), a file, or (check_empty, with the lock held) a
        non-empty folder that is not a store; create the folder."""
        root = self.root
        assert root is not None
        marker = root / "store.json"
        if marker.exists():
            return
        if not create:
            msg = (
                f"no memory store at {root}. Fix: create one with `anomaly-agent memory import ROOT` "
                "or `memory add`, or point --memory / ANOMALY_AGENT_MEMORY_PATH at an existing store"
            )
            raise StoreNotFoundError(msg)
        if root.exists() and not root.is_dir():
            msg = f"memory path {root} is a file. Fix: point --memory at a folder"
            raise MemoryStoreError(msg)
        if check_empty and root.exists() and any(
            p.name not in (".write.lock", "generation") for p in root.iterdir()
        ):
            msg = (
                f"{root} is not empty and is not an anomaly-agent memory store (no store.json). "
                "Fix: point --memory at an empty or new folder"
            )
            raise MemoryStoreError(msg)
        root.mkdir(parents=True, exist_ok=True)

    def _write_marker(self) -> None:
        assert self.root is not None
        marker = self.root / "store.json"
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
            except json.JSONDecodeError:
                info = {}
            self._refuse_newer(int(info.get("schema_version", 0)))
            return
        info = {"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION, "created": time.time()}
        tmp = marker.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, marker)

    def _open_embedded(self):
        import chromadb
        from chromadb.config import Settings

        assert self.root is not None
        return chromadb.PersistentClient(
            path=str(self.root / "chroma"), settings=Settings(anonymized_telemetry=False)
        )

    @staticmethod
    def _connect_server(host: str, port: int, ssl: bool, token: str | None):
        import chromadb
        from chromadb.config import Settings

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            client = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=headers,
                settings=Settings(anonymized_telemetry=False),
            )
            client.heartbeat()
        except Exception as exc:  # noqa: BLE001 - httpx/chromadb raise many kinds; all mean "unreachable"
            msg = (
                f"cannot reach the Chroma server at {host}:{port} ({type(exc).__name__}: {exc}). Fix: "
                f"start it (`chroma run --path DIR --host {host} --port {port}`), check "
                "ANOMALY_AGENT_MEMORY_HOST/PORT/TOKEN, or unset ANOMALY_AGENT_MEMORY_HOST for the "
                "embedded store"
            )
            raise ServerUnreachableError(msg) from None
        return client

    @_serialized
    def close(self) -> None:
        """Release the embedded client (the store object must not be used afterwards)."""
        client, self._client = getattr(self, "_client", None), None
        self._cols.clear()
        if client is not None and self.host is None:
            client.close()

    def __enter__(self) -> ChromaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refresh(self) -> None:
        """Embedded: reopen the client when another process wrote since (its index would be stale)."""
        if self._lock is None:
            return
        gen = self._lock.generation()
        if gen != self._generation:
            self._cols.clear()
            self._models_by_category = None
            if self._client is not None:
                self._client.close()
            self._client = self._open_embedded()
            self._generation = gen

    @contextmanager
    def _writing(self, bump: bool = True) -> Iterator[None]:
        """Embedded: hold the write lock with a fresh client, and bump the generation after."""
        guard = self._lock.held() if self._lock is not None else nullcontext()
        with guard:
            self._refresh()
            yield
            if bump and self._lock is not None:
                self._generation = self._lock.bump()

    # --- schema -----------------------------------------------------------------------------
    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            msg = (
                f"the memory store at {self.location} has schema version {version}, newer than "
                f"this anomaly-agent reads ({SCHEMA_VERSION}). Fix: upgrade anomaly-agent, or use "
                "another store (--memory PATH)"
            )
            raise SchemaVersionError(msg)

    def _check_schema(self) -> None:
        meta = self._client.get_or_create_collection(
            META_COLLECTION,
            metadata={"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION},
            embedding_function=None,
        )
        self._refuse_newer(int((meta.metadata or {}).get("schema_version", 0)))

    # --- collections ------------------------------------------------------------------------
    def _example_collections(self) -> list[Any]:
        cols = [c for c in self._client.list_collections() if c.name.startswith(EXAMPLE_PREFIX)]
        for col in cols:
            self._refuse_newer(int((col.metadata or {}).get("schema_version", 0)))
        return cols

    def _models_index(self, refresh: bool = False) -> dict[str, list[str]]:
        if self._models_by_category is None or refresh:
            index: dict[str, list[str]] = {}
            for col in self._example_collections():
                md = col.metadata or {}
                index.setdefault(md["category"], []).append(md["embedding_model"])
            self._models_by_category = {k: sorted(v) for k, v in index.items()}
        return self._models_by_category

    def _collection(self, category: str, model: str, create: bool = False, dim: int | None = None):
        name = collection_name(category, model)
        col = self._cols.get(name)
        if col is not None:
            return col
        from chromadb.errors import NotFoundError

        if create:
            assert dim is not None
            col = self._client.get_or_create_collection(
                name,
                metadata={
                    "kind": "examples", "category": category, "embedding_model": model,
                    "dim": int(dim), "schema_version": SCHEMA_VERSION,
                },
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
            self._models_by_category = None
        else:
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except NotFoundError:
                return None
        self._refuse_newer(int((col.metadata or {}).get("schema_version", 0)))
        self._cols[name] = col
        return col

    def _select(self, category: str | None, embedding_model: str | None) -> list[Any]:
        cat = normalize_category(category) if category is not None else None
        out = []
        for col in self._example_collections():
            md = col.metadata or {}
            if cat is not None and md.get("category") != cat:
                continue
            if embedding_model is not None and md.get("embedding_model") != embedding_model:
                continue
            out.append(col)
        return sorted(out, key=lambda c: (c.metadata["category"], c.metadata["embedding_model"]))

    @staticmethod
    def _check_dim(col, vec: np.ndarray) -> None:
        dim = int((col.metadata or {}).get("dim", vec.size))
        if vec.size != dim:
            md = col.metadata or {}
            msg = (
                f"embedding of size {vec.size} does not fit the collection of "
                f"'{md.get('category')}' / {md.get('embedding_model')} (size {dim}). Fix: embed with "
                f"the model named {md.get('embedding_model')!r}; vectors of different models never mix"
            )
            raise EmbeddingDimensionError(msg)

    # --- examples ---------------------------------------------------------------------------
    def _to_example(self, example_id: str, md: dict, document: str | None) -> MemoryExample:
        stored = md["image"]
        if md.get("copied") and self.images_dir is not None:
            image_path = str(self.images_dir / stored)
            if md.get("blob") and self._blobs is not None:  # another machine's copy: fetch the bytes once
                self._blobs.materialize(example_id, self.images_dir / stored)
        else:
            image_path = stored
        return MemoryExample(
            id=example_id, image_path=image_path, category=md["category"], label=md["label"],
            defect_type=md.get("defect_type") or None, description=document or None,
            embedding_model=md["embedding_model"], source=md.get("source") or None,
        )

    def _prepare(self, item: ExampleInput) -> _Prepared:
        if item.label not in LABELS:
            msg = f"label must be one of {', '.join(LABELS)}, got {item.label!r}"
            raise MemoryStoreError(msg)
        if not item.embedding_model:
            msg = "embedding_model (the embedder's model id) is required"
            raise MemoryStoreError(msg)
        data, ext, source = _read_image_bytes(item.image)
        return _Prepared(
            id=content_id(data), data=data, ext=ext, item=item,
            category=normalize_category(item.category), vector=_unit_vector(item.embedding),
        )

    def _find(self, ids: list[str]) -> dict[str, list[tuple[Any, dict, str]]]:
        """{id: [(collection, metadata, document)]} for the ids stored anywhere."""
        found: dict[str, list[tuple[Any, dict, str]]] = {}
        if not ids:
            return found
        for col in self._example_collections():
            res = col.get(ids=list(ids), include=["metadatas", "documents"])
            for i, md, doc in zip(res["ids"], res["metadatas"], res["documents"], strict=True):
                found.setdefault(i, []).append((col, dict(md), doc))
        return found

    def _copy_image(self, prep: _Prepared) -> tuple[str, bool]:
        """(stored image reference, copied?) — a path relative to images_dir, or the original path."""
        if not self.copy_images:
            if isinstance(prep.item.image, bytes | bytearray):
                msg = "image bytes can only be added to a store that copies images (copy_images=True)"
                raise MemoryStoreError(msg)
            return str(Path(prep.item.image).expanduser().resolve()), False
        assert self.images_dir is not None
        rel = f"{prep.id[:2]}/{prep.id}{prep.ext}"
        dest = self.images_dir / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            tmp.write_bytes(prep.data)
            os.replace(tmp, dest)
        return rel, True

    @_serialized
    def add_many(self, items: Sequence[ExampleInput]) -> list[MemoryExample]:
        prepared = [self._prepare(item) for item in items]
        if not prepared:
            return []
        with self._writing():
            existing = self._find(sorted({p.id for p in prepared}))
            results: dict[tuple[str, str], MemoryExample] = {}
            pending: dict[str, list[tuple[_Prepared, dict, str]]] = {}
            queued: set[tuple[str, str]] = set()
            for prep in prepared:
                key = (prep.id, prep.item.embedding_model)
                if key in results or key in queued:
                    continue
                earlier = [({"category": q.category, "label": q.item.label,
                             "embedding_model": q.item.embedding_model}, "")
                           for q in prepared if q.id == prep.id and q is not prep]
                for md, _ in earlier:
                    if md["category"] != prep.category or md["label"] != prep.item.label:
                        msg = (
                            f"the same image (id {prep.id}) is given twice, as {md['label']} "
                            f"'{md['category']}' and as {prep.item.label} '{prep.category}'. Fix: "
                            "give each image one category and one label"
                        )
                        raise ExampleConflictError(msg)
                for _col, md, doc in existing.get(prep.id, []):
                    if md["category"] != prep.category or md["label"] != prep.item.label:
                        msg = (
                            f"image {prep.item.image if not isinstance(prep.item.image, bytes) else '<bytes>'} "
                            f"(id {prep.id}) is already in memory as {md['label']} '{md['category']}'; "
                            f"it cannot also be {prep.item.label} '{prep.category}'. Fix: "
                            f"`anomaly-agent memory remove {prep.id}` first"
                        )
                        raise ExampleConflictError(msg)
                    if md["embedding_model"] == prep.item.embedding_model:
                        results[key] = self._to_example(prep.id, md, doc)
                if key in results:
                    continue
                queued.add(key)
                image_ref, copied = self._copy_image(prep)
                md = {
                    "category": prep.category, "label": prep.item.label,
                    "embedding_model": prep.item.embedding_model, "image": image_ref,
                    "copied": copied, "added_at": time.time(),
                }
                if self._blobs is not None and copied:
                    self._blobs.put(prep.id, prep.data, prep.ext)
                    md["blob"] = True
                if prep.item.defect_type:
                    md["defect_type"] = str(prep.item.defect_type)
                source = prep.item.source or (
                    None if isinstance(prep.item.image, bytes | bytearray)
                    else str(Path(prep.item.image).expanduser().resolve())
                )
                if source:
                    md["source"] = source
                pending.setdefault(self._name_of(prep), []).append((prep, md, prep.item.description or ""))
            for rows in pending.values():
                first = rows[0][0]
                col = self._collection(first.category, first.item.embedding_model, create=True,
                                       dim=first.vector.size)
                for prep, _, _ in rows:
                    self._check_dim(col, prep.vector)
                col.add(
                    ids=[p.id for p, _, _ in rows],
                    embeddings=np.stack([p.vector for p, _, _ in rows]),
                    metadatas=[md for _, md, _ in rows],
                    documents=[doc for _, _, doc in rows],
                )
                for prep, md, doc in rows:
                    results[(prep.id, prep.item.embedding_model)] = self._to_example(prep.id, md, doc)
        return [results[(p.id, p.item.embedding_model)] for p in prepared]

    @staticmethod
    def _name_of(prep: _Prepared) -> str:
        return collection_name(prep.category, prep.item.embedding_model)

    @_serialized
    def get(self, example_id: str, embedding_model: str | None = None) -> MemoryExample:
        self._refresh()
        hits = [
            (col, md, doc) for col, md, doc in self._find([example_id]).get(example_id, [])
            if embedding_model is None or md["embedding_model"] == embedding_model
        ]
        if not hits:
            model = f" under embedding model {embedding_model}" if embedding_model else ""
            msg = f"no example with id {example_id!r}{model} in {self.location}. Fix: see `anomaly-agent memory list`"
            raise ExampleNotFoundError(msg)
        hits.sort(key=lambda h: h[1]["embedding_model"])
        _col, md, doc = hits[0]
        return self._to_example(example_id, md, doc)

    def has(self, example_id: str, embedding_model: str | None = None) -> bool:
        try:
            self.get(example_id, embedding_model)
        except ExampleNotFoundError:
            return False
        return True

    @_serialized
    def find(self, ids: Sequence[str]) -> dict[str, list[MemoryExample]]:
        """{id: [the example under each embedding model]} for those of `ids` that are stored."""
        self._refresh()
        return {
            i: [self._to_example(i, md, doc) for _col, md, doc in hits]
            for i, hits in self._find(list(dict.fromkeys(ids))).items()
        }

    @_serialized
    def missing(self, ids: Sequence[str], embedding_model: str) -> set[str]:
        """The ids (of `ids`) not yet stored under `embedding_model` (one lookup for many ids)."""
        self._refresh()
        found = self._find(list(dict.fromkeys(ids)))
        return {
            i for i in ids
            if not any(md["embedding_model"] == embedding_model for _, md, _ in found.get(i, []))
        }

    @_serialized
    def delete(self, example_id: str) -> int:
        with self._writing():
            hits = self._find([example_id]).get(example_id, [])
            if not hits:
                msg = f"no example with id {example_id!r} in {self.location}. Fix: see `anomaly-agent memory list`"
                raise ExampleNotFoundError(msg)
            for col, md, _doc in hits:
                col.delete(ids=[example_id])
                if md.get("copied") and self.images_dir is not None:
                    (self.images_dir / md["image"]).unlink(missing_ok=True)
                if md.get("blob") and self._blobs is not None:
                    self._blobs.delete(example_id)
                if col.count() == 0:
                    self._client.delete_collection(col.name)
                    self._cols.pop(col.name, None)
                    self._models_by_category = None
        return len(hits)

    @_serialized
    def list(
        self, category: str | None = None, label: str | None = None, embedding_model: str | None = None
    ) -> list[MemoryExample]:
        self._refresh()
        where = {"label": label} if label else None
        seen: dict[str, MemoryExample] = {}
        for col in self._select(category, embedding_model):
            res = col.get(where=where, include=["metadatas", "documents"])
            for i, md, doc in zip(res["ids"], res["metadatas"], res["documents"], strict=True):
                if i not in seen:
                    seen[i] = self._to_example(i, dict(md), doc)
        return sorted(seen.values(), key=lambda e: (e.category, e.label != "normal", e.id))

    @_serialized
    def records(
        self, category: str | None = None, embedding_model: str | None = None
    ) -> list[tuple[MemoryExample, np.ndarray]]:
        """Every (example, (D,) float32 vector) entry, one per (id, model), for export."""
        self._refresh()
        out = []
        for col in self._select(category, embedding_model):
            res = col.get(include=["metadatas", "documents", "embeddings"])
            for i, md, doc, emb in zip(res["ids"], res["metadatas"], res["documents"],
                                       res["embeddings"], strict=True):
                out.append((self._to_example(i, dict(md), doc), np.asarray(emb, dtype=np.float32)))
        return out

    @_serialized
    def count(
        self, category: str | None = None, label: str | None = None, embedding_model: str | None = None
    ) -> int:
        self._refresh()
        cols = self._select(category, embedding_model)
        if embedding_model is not None and label is None:
            return sum(col.count() for col in cols)
        ids: set[str] = set()
        for col in cols:
            ids.update(col.get(where={"label": label} if label else None, include=[])["ids"])
        return len(ids)

    @_serialized
    def categories(self) -> list[str]:
        self._refresh()
        return sorted(self._models_index(refresh=True))

    @_serialized
    def embedding_models(self, category: str | None = None) -> list[str]:
        self._refresh()
        index = self._models_index(refresh=True)
        if category is not None:
            return list(index.get(normalize_category(category), []))
        return sorted({m for models in index.values() for m in models})

    @_serialized
    def nearest(
        self,
        category: str,
        embedding: Any,
        k: int = 5,
        label: str | None = None,
        embedding_model: str | None = None,
    ) -> list[tuple[MemoryExample, float]]:
        if label is not None and label not in LABELS:
            msg = f"label must be one of {', '.join(LABELS)} or None, got {label!r}"
            raise MemoryStoreError(msg)
        if k <= 0:
            return []
        self._refresh()
        cat = normalize_category(category)
        vec = _unit_vector(embedding, "query embedding")
        if embedding_model is None:
            models = self._models_index().get(cat) or self._models_index(refresh=True).get(cat, [])
            if not models:
                return []
            if len(models) > 1:
                msg = (
                    f"'{cat}' has examples of several embedding models ({', '.join(models)}); "
                    "pass embedding_model= the id of the embedder that made the query vector"
                )
                raise EmbeddingModelMismatchError(msg)
            embedding_model = models[0]
        col = self._collection(cat, embedding_model)
        if col is None:
            others = self._models_index(refresh=True).get(cat, [])
            if others:
                msg = (
                    f"memory has examples of '{cat}' embedded with {', '.join(others)}, but the query "
                    f"was embedded with {embedding_model}; vectors of different models cannot be "
                    f"compared. Fix: re-import the examples with the current embedder (`anomaly-agent "
                    f"memory import ROOT` adds the {embedding_model} vectors), or configure the "
                    "embedder that built the memory"
                )
                raise EmbeddingModelMismatchError(msg)
            return []
        self._check_dim(col, vec)
        res = col.query(
            query_embeddings=vec[None, :], n_results=int(k),
            where={"label": label} if label else None,
            include=["metadatas", "documents", "distances"],
        )
        return [
            (self._to_example(i, dict(md), doc), float(1.0 - dist))
            for i, md, doc, dist in zip(res["ids"][0], res["metadatas"][0], res["documents"][0],
                                        res["distances"][0], strict=True)
        ]

    # --- notes ------------------------------------------------------------------------------
    def _notes(self):
        return self._client.get_or_create_collection(
            NOTES_COLLECTION, metadata={"kind": "notes", "schema_version": SCHEMA_VERSION},
            embedding_function=None,
        )

    @_serialized
    def add_note(
        self, category: str, text: str, provenance: str = "user", reliability: float = 1.0
    ) -> ClassNote:
        cat = normalize_category(category)
        text = " ".join(str(text).split())
        if not text:
            msg = "empty note text. Fix: pass the note, e.g. \"a thin bright seam on the left edge is normal\""
            raise MemoryStoreError(msg)
        note = ClassNote(
            id=hashlib.sha256(f"{cat}\n{text}".encode()).hexdigest()[:16], category=cat, text=text,
            provenance=provenance or "user", reliability=reliability,
        )
        with self._writing():
            self._notes().upsert(
                ids=[note.id], embeddings=[[1.0]], documents=[note.text],
                metadatas=[{"category": cat, "provenance": note.provenance,
                            "reliability": float(note.reliability)}],
            )
        return note

    @_serialized
    def list_notes(self, category: str | None = None) -> list[ClassNote]:
        self._refresh()
        where = {"category": normalize_category(category)} if category is not None else None
        res = self._notes().get(where=where, include=["metadatas", "documents"])
        notes = [
            ClassNote(id=i, category=md["category"], text=doc, provenance=md.get("provenance", "user"),
                      reliability=float(md.get("reliability", 1.0)))
            for i, md, doc in zip(res["ids"], res["metadatas"], res["documents"], strict=True)
        ]
        return sorted(notes, key=lambda n: (n.category, -n.reliability, n.text))

    @_serialized
    def remove_note(self, note_id: str) -> None:
        with self._writing():
            notes = self._notes()
            if not notes.get(ids=[note_id], include=[])["ids"]:
                msg = f"no note with id {note_id!r} in {self.location}. Fix: see `anomaly-agent memory note list`"
                raise ExampleNotFoundError(msg)
            notes.delete(ids=[note_id])


def open_store(config: AgentConfig, *, create: bool = True) -> ChromaStore:
    """The store the config names: a Chroma server when ``memory_host`` is set (images copied
    under ``memory_path/images``), else the embedded store at ``memory_path``."""
    token = config.memory_token.get_secret_value() if config.memory_token is not None else None
    if config.memory_host:
        return ChromaStore(
            host=config.memory_host, port=config.memory_port, token=token,
            images_dir=Path(config.memory_path) / "images",
        )
    return ChromaStore(config.memory_path, create=create)

