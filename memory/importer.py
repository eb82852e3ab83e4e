"""Filling the memory: MVTec-style trees, and JSON export/import of a whole store.

Tree layout (MVTec AD, VisA after its split script, or any such tree)::

    ROOT/<category>/train/good/*.png          -> normal examples
    ROOT/<category>/test/<defect_type>/*.png  -> labelled anomalies (with ``with_anomalies=N``:
                                                 the first N files by name per defect type)
    ROOT/<category>/ground_truth/<defect_type>/<stem>_mask.png   (optional, used in descriptions)

ROOT may also be one category folder (it has ``train/``); its name is the category. Test folders
named good/normal/ok hold normals and are not imported as anomalies.

An anomaly's description comes from, in order: a sidecar text file next to the image
(``<name>.<ext>.txt`` or ``<stem>.txt``); a ``descriptions.yaml`` in the category folder or ROOT
(keys: the image path relative to the category folder, the file name, or the defect type); else
the template ``"<defect type> (from <category>/test/<type>)"`` plus, when a ground-truth mask
exists, where the defect lies ("region x 10-52, y 80-120 of the 256x256 image, 3.1% of its area").

Imports are idempotent and resumable: images already stored under the embedder's model id are
skipped before embedding, and examples are written in small batches, so a killed import re-run
completes without duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from memory.embed import Embedder
from memory.store import (
    SCHEMA_VERSION,
    ChromaStore,
    ExampleConflictError,
    ExampleInput,
    MemoryStoreError,
    content_id,
    normalize_category,
)
from tools.images import ImageNotFoundError, NotAnImageError, load_image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NORMAL_DIRS = ("good", "normal", "ok")
EXPORT_FORMAT = "anomaly-agent-memory-export"

Progress = Callable[[int, int], None]


@dataclass
class TreeItem:
    """One image found in a tree, with what the memory will record about it."""

    path: Path
    category: str
    label: str
    defect_type: str | None = None
    description: str | None = None


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        added: examples newly stored.
        skipped: examples already stored under this embedding model (not re-embedded).
        per_category: {category: {"normal": added, "anomalous": added}}.
        embedding_model: the embedder's model id.
    """

    added: int = 0
    skipped: int = 0
    per_category: dict[str, dict[str, int]] = field(default_factory=dict)
    embedding_model: str = ""

    def to_dict(self) -> dict:
        return {"added": self.added, "skipped": self.skipped, "per_category": self.per_category,
                "embedding_model": self.embedding_model}


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _category_dirs(root: Path) -> list[Path]:
    if (root / "train").is_dir():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()))


def _load_descriptions(*folders: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    for folder in folders:
        path = folder / "descriptions.yaml"
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            msg = f"{path} is not valid YAML ({exc}). Fix: correct it or delete it"
            raise MemoryStoreError(msg) from None
        if not isinstance(data, dict):
            msg = f"{path} must map image paths, file names or defect types to descriptions"
            raise MemoryStoreError(msg)
        for key, value in data.items():
            table.setdefault(str(key), str(value))  # the category folder's file wins over ROOT's
    return table


def _mask_location(cat_dir: Path, defect: str, image: Path) -> str | None:
    """'region x 10-52, y 80-120 of the 256x256 image, 3.1% of its area' from the GT mask, if any."""
    gt = cat_dir / "ground_truth" / defect
    candidates = [gt / f"{image.stem}_mask{ext}" for ext in (".png", image.suffix)]
    candidates += [gt / f"{image.stem}{ext}" for ext in (".png", image.suffix)]
    mask_path = next((c for c in candidates if c.is_file()), None)
    if mask_path is None:
        return None
    from PIL import Image

    with Image.open(mask_path) as img:
        mask = np.asarray(img.convert("L")) > 0
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    h, w = mask.shape
    return (
        f"region x {xs.min()}-{xs.max()}, y {ys.min()}-{ys.max()} of the {w}x{h} image, "
        f"{100.0 * xs.size / mask.size:.1f}% of its area"
    )


def _description(cat_dir: Path, category: str, defect: str, image: Path, table: dict[str, str]) -> str:
    for sidecar in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if sidecar.is_file():
            text = " ".join(sidecar.read_text().split())
            if text:
                return text
    rel = image.relative_to(cat_dir).as_posix()
    for key in (rel, image.name, defect):
        if key in table:
            return table[key]
    text = f"{defect.replace('_', ' ')} (from {category}/test/{defect})"
    where = _mask_location(cat_dir, defect, image)
    return f"{text}; {where}" if where else text


def scan_tree(root: str | Path, categories: Sequence[str] | None = None, with_anomalies: int = 0) -> list[TreeItem]:
    """The images an import of `root` would add, in a stable order.

    Args:
        root: dataset root (category folders inside) or one category folder.
        categories: only these categories (names compare case-insensitively); None = all.
        with_anomalies: also take the first N images (by name) of each defect type in test/.

    Raises:
        MemoryStoreError: `root` is not a folder, has no category with train/good images, or a
            requested category is absent (the message lists what was found).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        msg = f"{root} is not a folder. Fix: pass an MVTec-style root (<category>/train/good/*.png)"
        raise MemoryStoreError(msg)
    cat_dirs = {normalize_category(d.name): d for d in _category_dirs(root)}
    if categories:
        wanted = [normalize_category(c) for c in categories]
        unknown = [c for c in wanted if c not in cat_dirs]
        if unknown:
            msg = (
                f"categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} not found under "
                f"{root}; found: {', '.join(sorted(cat_dirs)) or 'none'}"
            )
            raise MemoryStoreError(msg)
        cat_dirs = {c: cat_dirs[c] for c in wanted}
    items: list[TreeItem] = []
    root_table_dirs = [root] if root not in cat_dirs.values() else []
    for category, cat_dir in cat_dirs.items():
        items += [TreeItem(p, category, "normal") for p in _images_in(cat_dir / "train" / "good")]
        if with_anomalies <= 0:
            continue
        table = _load_descriptions(cat_dir, *root_table_dirs)
        test_dir = cat_dir / "test"
        defects = sorted(d.name for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
        for defect in defects:
            if defect.lower() in NORMAL_DIRS:
                continue
            for image in _images_in(test_dir / defect)[:with_anomalies]:
                items.append(TreeItem(image, category, "anomalous", defect,
                                      _description(cat_dir, category, defect, image, table)))
    if not items:
        msg = (
            f"no images to import under {root}. Fix: pass an MVTec-style tree "
            "(<category>/train/good/*.png, and test/<defect>/*.png with --with-anomalies N)"
        )
        raise MemoryStoreError(msg)
    return items


def _file_bytes(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    if p.is_dir():
        raise NotAnImageError(str(path), "it is a directory")
    if not p.is_file():
        raise ImageNotFoundError(str(path))
    return p.read_bytes()


def import_items(
    store: ChromaStore,
    embedder: Embedder,
    items: Sequence[TreeItem],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> ImportReport:
    """Embed and store `items`, skipping those already stored under `embedder.model_id`.

    Args:
        progress: called as progress(done, total) after each image (skipped ones included).

    Raises:
        ImageInputError: an image cannot be read (the message names it); earlier batches stay stored.
    """
    report = ImportReport(embedding_model=embedder.model_id)
    total = len(items)
    ids = [content_id(_file_bytes(it.path)) for it in items]
    stored = store.find(ids)
    done = 0
    batch: list[ExampleInput] = []
    queued: dict[str, TreeItem] = {}

    def flush() -> None:
        if batch:
            store.add_many(batch)
            batch.clear()

    for item, item_id in zip(items, ids, strict=True):
        category = normalize_category(item.category)
        earlier = [(e.category, e.label, str(e.source or e.image_path)) for e in stored.get(item_id, [])]
        if item_id in queued:
            earlier.append((queued[item_id].category, queued[item_id].label, str(queued[item_id].path)))
        for cat, label, where in earlier:
            if (cat, label) != (category, item.label):
                msg = (
                    f"{item.path} is the same image as {where}, already taken as {label} '{cat}'; it "
                    f"cannot also be {item.label} '{category}'. Fix: remove the duplicate file, or "
                    f"`anomaly-agent memory remove {item_id}` first"
                )
                raise ExampleConflictError(msg)
        already = any(e.embedding_model == embedder.model_id for e in stored.get(item_id, []))
        if already or item_id in queued:
            report.skipped += 1
        else:
            queued[item_id] = TreeItem(item.path, category, item.label)
            vector = embedder.embed(load_image(item.path))
            batch.append(ExampleInput(
                image=item.path, category=item.category, label=item.label, embedding=vector,
                embedding_model=embedder.model_id, defect_type=item.defect_type,
                description=item.description, source=str(Path(item.path).resolve()),
            ))
            row = report.per_category.setdefault(category, {"normal": 0, "anomalous": 0})
            row[item.label] += 1
            report.added += 1
            if len(batch) >= batch_size:
                flush()
        done += 1
        if progress is not None:
            progress(done, total)
    flush()
    return report


def import_tree(
    store: ChromaStore,
    embedder: Embedder,
    root: str | Path,
    categories: Sequence[str] | None = None,
    with_anomalies: int = 0,
    progress: Progress | None = None,
) -> ImportReport:
    """`scan_tree` then `import_items`."""
    return import_items(store, embedder, scan_tree(root, categories, with_anomalies), progress=progress)


def export_json(store: ChromaStore, path: str | Path, category: str | None = None) -> dict[str, int]:
    """Write every example (with its vector and image path) and note to a JSON file.

    Returns:
        {"examples": entries written, "notes": notes written}.
    """
    records = store.records(category)
    notes = store.list_notes(category)
    data = {
        "format": EXPORT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "examples": [
            {**ex.model_dump(mode="json"), "embedding": [float(v) for v in vec]} for ex, vec in records
        ],
        "notes": [n.model_dump(mode="json") for n in notes],
    }
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return {"examples": len(records), "notes": len(notes)}


def _existing_path(record: dict) -> str:
    """The exported copy if it still exists, else the original source path (else the copy's path,
    which then fails with a clear ImageNotFoundError)."""
    for key in ("image_path", "source"):
        if record.get(key) and Path(record[key]).is_file():
            return record[key]
    return record["image_path"]


def import_json(store: ChromaStore, path: str | Path, progress: Progress | None = None) -> ImportReport:
    """Add the examples and notes of an `export_json` file (idempotent; images are copied in).

    Raises:
        MemoryStoreError: not an export file, or one of a newer schema.
        ImageInputError: an exported image path no longer exists.
    """
    src = Path(path).expanduser()
    try:
        data = json.loads(src.read_text())
    except FileNotFoundError:
        msg = f"{src} not found. Fix: check the path of the file written by `memory export`"
        raise MemoryStoreError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"{src} is not JSON ({exc}). Fix: pass a file written by `anomaly-agent memory export`"
        raise MemoryStoreError(msg) from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        msg = f"{src} is not a memory export (format {EXPORT_FORMAT!r} expected)"
        raise MemoryStoreError(msg)
    if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        msg = (
            f"{src} has schema version {data['schema_version']}, newer than this anomaly-agent reads "
            f"({SCHEMA_VERSION}). Fix: upgrade anomaly-agent"
        )
        raise MemoryStoreError(msg)
    examples = data.get("examples", [])
    report = ImportReport(embedding_model=",".join(sorted({e["embedding_model"] for e in examples})))
    total = len(examples)
    for start in range(0, total, 64):
        chunk = examples[start : start + 64]
        before = set()
        for model in {e["embedding_model"] for e in chunk}:
            ids = [e["id"] for e in chunk if e["embedding_model"] == model]
            before |= {(i, model) for i in set(ids) - store.missing(ids, model)}
        store.add_many([
            ExampleInput(
                image=_existing_path(e), category=e["category"], label=e["label"],
                embedding=np.asarray(e["embedding"], np.float32), embedding_model=e["embedding_model"],
                defect_type=e.get("defect_type"), description=e.get("description"), source=e.get("source"),
            )
            for e in chunk
        ])
        for e in chunk:
            if (e["id"], e["embedding_model"]) in before:
                report.skipped += 1
            else:
                report.added += 1
                row = report.per_category.setdefault(e["category"], {"normal": 0, "anomalous": 0})
                row[e["label"]] += 1
        if progress is not None:
            progress(min(start + 64, total), total)
    for note in data.get("notes", []):
        store.add_note(note["category"], note["text"], note.get("provenance", "import"),
                       float(note.get("reliability", 1.0)))
    return report
