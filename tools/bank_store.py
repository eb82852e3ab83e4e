"""Reference banks stored on disk, so the next process with the same references skips the build.

A bank file is ``<bank_dir>/<tool>-<key>.npz``. The key is a sha256 over everything that shapes the
bank: the file format, the source code of the modules that compute it (`CODE_MODULES`), the
backbone's id, device and a digest of its weights, the tool's config, and the references' pixel
digests in order (`store_key`). The file holds the faiss index (serialised) and a JSON header with
the other fields, the key and a sha256 checksum over both. A file that cannot be read, has another
format or key, fails its checksum or whose index has the wrong size is deleted and rebuilt, never
trusted. At most `MAX_FILES` banks stay per folder (least recently used deleted). Writes go to a temporary name first and are renamed into place (no half-written bank is
ever read; concurrent writers of one key write the same bytes).

`stats` counts builds, loads, rejected files and failed writes (the tests and benchmarks read it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import typing
import weakref
from collections import Counter
from pathlib import Path

import numpy as np

FORMAT = 1
MAX_FILES = 64  # per folder: the least recently used beyond this are deleted after each save
CODE_MODULES = ("tools/patch_knn.py", "tools/backbones.py", "tools/calibration.py", "tools/bank_store.py")
log = logging.getLogger(__name__)
stats: Counter = Counter()
_weights_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_code: str | None = None


_WARNED: set[str] = set()


def _warn(text: str) -> None:
    """One "warning:" line on stderr (like the progress lines; the run goes on), once per process and text
    (the survey's two scales store two banks in the same folder)."""
    log.info(text)
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"warning: {text}", file=sys.stderr)


class BankFileError(ValueError):
    """A stored bank that must not be used (unreadable, other format or key, bad checksum or shape)."""


def code_digest() -> str:
    """sha256 of the source of the modules that compute a bank (any change there makes new keys)."""
    global _code
    if _code is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for rel in CODE_MODULES:
            path = root / rel
            h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"missing"))
        _code = h.hexdigest()
    return _code


def weights_digest(module) -> str:
    """sha256 over a torch module's parameters and buffers (names, shapes, values); cached per module."""
    with _lock:
        if module in _weights_digests:
            return _weights_digests[module]
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    with _lock:
        _weights_digests[module] = digest
    return digest


def _byte_dtype():
    import torch

    return torch.uint8


def store_key(parts: dict) -> str:
    """The file key of a bank from the settings that shape it (JSON-able values)."""
    blob = json.dumps({"format": FORMAT, "code": code_digest(), **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _plain(value):
    """numpy scalars as Python numbers (JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    msg = f"cannot store {type(value).__name__} in a bank header"
    raise TypeError(msg)


def _is_index(value) -> bool:
    return hasattr(value, "ntotal") and hasattr(value, "d")


def _checksum(index_bytes: bytes, header: dict) -> str:
    h = hashlib.sha256(index_bytes)
    h.update(json.dumps(header, sort_keys=True, default=_plain).encode())
    return h.hexdigest()


class BankStore:
    """Banks of one tool in one folder."""

    def __init__(self, folder: Path, tool: str = "patch_knn") -> None:
        self.folder = Path(folder)
        self.tool = tool

    def path(self, key: str) -> Path:
        return self.folder / f"{self.tool}-{key}.npz"

    def save(self, key: str, bank) -> Path | None:
        """Write a bank dataclass (faiss index fields, or lists of them; dataclass fields; JSON-able
        fields). Returns the path, or None when the folder cannot be written (logged; the run goes on
        with the bank in memory)."""
        import faiss

        fields, index_name, kinds = {}, None, {}
        chunks: list[bytes] = []  # every index's bytes, in field order; the header gives their sizes
        for f in dataclasses.fields(bank):
            value = getattr(bank, f.name)
            if _is_index(value) or (isinstance(value, list) and value and all(_is_index(v) for v in value)):
                index_name, kinds[f.name] = f.name, "faiss" if _is_index(value) else "faiss_list"
                described = []
                for index in [value] if _is_index(value) else value:
                    chunks.append(faiss.serialize_index(index).tobytes())
                    described.append({"ntotal": int(index.ntotal), "d": int(index.d), "nbytes": len(chunks[-1])})
                fields[f.name] = described[0] if _is_index(value) else described
            elif dataclasses.is_dataclass(value):
                kinds[f.name], fields[f.name] = "dataclass", json.loads(json.dumps(dataclasses.asdict(value),
                                                                                   default=_plain))
            else:
                kinds[f.name], fields[f.name] = "json", json.loads(json.dumps(value, default=_plain))
        if index_name is None:
            msg = "a stored bank needs a faiss index field"
            raise ValueError(msg)
        index_bytes = b"".join(chunks)
        header = {"format": FORMAT, "tool": self.tool, "key": key, "kinds": kinds, "fields": fields}
        header["checksum"] = _checksum(index_bytes, header)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, index=np.frombuffer(index_bytes, np.uint8),
                         header=np.frombuffer(json.dumps(header).encode(), np.uint8))
            os.replace(tmp, path)
        except OSError as exc:
            stats["write_failed"] += 1
            _warn(f"could not store the reference bank in {self.folder} ({exc.strerror or exc}); it is rebuilt "
                  "next time. Fix: make bank_dir (ANOMALY_AGENT_BANK_DIR) writable, or set bank_cache to false")
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        stats["saved"] += 1
        self._prune()
        return path

    def _prune(self) -> None:
        """Keep the `MAX_FILES` most recently used bank files (a load touches its file)."""
        try:
            files = sorted(self.folder.glob(f"{self.tool}-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[MAX_FILES:]:
                old.unlink(missing_ok=True)
        except OSError:  # another process pruned first
            pass

    def _read(self, path: Path, key: str, cls):
        import faiss

        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(data["header"].tobytes().decode())
                index_bytes = data["index"].tobytes()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
            raise BankFileError(f"unreadable ({type(exc).__name__})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BankFileError(f"format {header.get('format') if isinstance(header, dict) else '?'}, not {FORMAT}")
        if header.get("key") != key or header.get("tool") != self.tool:
            raise BankFileError("its key does not match its name")
        checksum = header.pop("checksum", None)
        if checksum != _checksum(index_bytes, header):
            raise BankFileError("checksum mismatch")
        hints = typing.get_type_hints(cls)
        values = {}
        offset = 0
        for name, kind in header["kinds"].items():
            raw = header["fields"][name]
            if kind in ("faiss", "faiss_list"):
                indexes = []
                for desc in [raw] if kind == "faiss" else raw:
                    nbytes = desc.get("nbytes", len(index_bytes) - offset)
                    try:
                        index = faiss.deserialize_index(
                            np.frombuffer(index_bytes[offset:offset + nbytes], np.uint8).copy())
                    except Exception as exc:  # noqa: BLE001 - bytes faiss cannot read: rebuilt
                        raise BankFileError(f"unreadable index ({type(exc).__name__})") from None
                    offset += nbytes
                    if (index.ntotal, index.d) != (desc["ntotal"], desc["d"]):
                        raise BankFileError(f"index holds {index.ntotal}x{index.d}, header says "
                                            f"{desc['ntotal']}x{desc['d']}")
                    indexes.append(index)
                values[name] = indexes[0] if kind == "faiss" else indexes
            elif kind == "dataclass":
                values[name] = hints[name](**raw)
            else:
                values[name] = raw
        if set(values) != {f.name for f in dataclasses.fields(cls)}:
            raise BankFileError("its fields differ from this version's")
        return cls(**values)

    def load(self, key: str, cls):
        """The stored bank of `key` as a `cls`, or None (no file, or a bad one: deleted, said in the log)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            bank = self._read(path, key, cls)
        except BankFileError as exc:
            stats["rejected"] += 1
            _warn(f"stored reference bank {path} is not usable ({exc}): rebuilding it")
            path.unlink(missing_ok=True)
            return None
        stats["loaded"] += 1
        try:
            os.utime(path)  # most recently used: kept by `_prune`
        except OSError:
            pass
        return bank


def stored_bank(folder: Path | None, backbone, config, refs, build: typing.Callable[[], typing.Any],
                calibrate: list[bool] | None = None):
    """patch_knn's bank for `refs`: loaded from `folder` when stored there with the same key, else built
    (with progress on stderr when it takes over a second) and stored. `folder` None: never stored.

    Args:
        folder: the bank folder (`ToolSettings.bank_dir`), or None.
        backbone: the `tools.backbones.Backbone` (its id, device and weights go into the key).
        config: the tool's config dataclass (every field goes into the key).
        refs: the references (`StoredImage`s; their pixel digests, in order, go into the key).
        build: builds the bank (a dataclass with a faiss index field, or a list of them).
        calibrate: per reference, whether it is held out for calibration (None or all True: every one; a
            bank-only reference changes the key).
    """
    from tools.patch_knn import ReferenceBank
    from tools.progress import activity

    store = key = None
    if folder is not None:
        store = BankStore(folder)
        key = store_key({
            "tool": "patch_knn", "backbone": backbone.model_id, "device": str(backbone.device),
            "weights": weights_digest(backbone.module), "config": dataclasses.asdict(config),
            "refs": [r.digest for r in refs],
            **({"bank_only": [not c for c in calibrate]} if calibrate is not None and not all(calibrate) else {}),
        })
        bank = store.load(key, ReferenceBank)
        if bank is not None:
            return bank
    with activity(f"building the reference bank of {len(refs)} reference(s)") as info:
        bank = build()
        stats["built"] += 1
        if store is not None and key is not None:
            path = store.save(key, bank)
            info["done"] = f"built and stored in {path.parent}" if path else "built (not stored)"
        else:
            info["done"] = "built"
    return bank
