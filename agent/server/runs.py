"""The server's own files: one folder per run under ``<data_dir>/runs/<run id>`` and uploaded reference sets
under ``<data_dir>/refsets/<content hash>``. Every path is built from an id the server minted and checked by
pattern; a client never names a path that is opened.

A run folder holds ``query<ext>`` (the uploaded bytes), ``meta.json``, ``record.json`` (the verdict as served),
``overlay.png`` (map as heat + boxes, as `detect --out`), ``heat.png`` (the map as an RGBA heat layer for the
web page) and ``e<i>.png`` (each evidence map).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from agent.schemas import Verdict
from agent.server.errors import ApiError
from agent.server.prune import prune_oldest, touch

RUN_ID = re.compile(r"[0-9a-f]{32}")  # ids and names are checked with fullmatch
REFSET_ID = re.compile(r"[0-9a-f]{24}")
FILES = {"image", "overlay.png", "heat.png", "map.png"}
EVIDENCE_FILE = re.compile(r"e(\d{1,3})\.png")


def _not_found(run_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no run {run_id!r} on this server",
                    "use a run_id returned by POST /v1/detect (GET /v1/runs lists recent ones)")


def heat_layer(grey: np.ndarray) -> np.ndarray:
    """HxW uint8 map -> HxWx4 uint8 RGBA heat layer (jet colours, alpha grows with the value)."""
    colour = cv2.applyColorMap(grey, cv2.COLORMAP_JET)[..., ::-1]
    alpha = np.clip((grey.astype(np.float32) - 60.0) * 1.2, 0, 210).astype(np.uint8)  # low values stay clear
    return np.dstack([colour, alpha])


class RunStore:
    """Runs and uploaded reference sets on disk (thread-safe for the operations it offers)."""

    def __init__(self, root: Path, max_runs: int = 2000, redactor=None) -> None:
        self.root = Path(root)
        self.redactor = redactor
        self.runs_dir = self.root / "runs"
        self.refsets_dir = self.root / "refsets"
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.refsets_dir.mkdir(parents=True, exist_ok=True)

    # reference sets --------------------------------------------------------------------------
    def reference_set(self, images: list[tuple[bytes, str]]) -> list[str]:
        """Store uploaded references (bytes, extension) once per content; returns their paths in order."""
        import hashlib

        key = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d, _ in images)).hexdigest()[:24]
        folder = self.refsets_dir / key
        paths = [folder / f"ref{i:02d}{ext}" for i, (_, ext) in enumerate(images)]
        with self._lock:
            if all(p.is_file() for p in paths):
                touch(folder)  # in use again: pruned last
            else:
                tmp = self.refsets_dir / f".{key}.{uuid.uuid4().hex[:8]}"
                tmp.mkdir(parents=True)
                for (data, _), path in zip(images, paths, strict=True):
                    (tmp / path.name).write_bytes(data)
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
        return [str(p) for p in paths]

    # runs ------------------------------------------------------------------------------------
    def folder(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise _not_found(run_id)
        folder = self.runs_dir / run_id
        if not folder.is_dir():
            raise _not_found(run_id)
        return folder

    def new_run(self, data: bytes, ext: str, meta: dict) -> tuple[str, Path]:
        """A new run folder holding the query bytes; returns (run id, query path)."""
        run_id = uuid.uuid4().hex
        folder = self.runs_dir / run_id
        folder.mkdir(parents=True)
        path = folder / f"query{ext}"
        path.write_bytes(data)
        (folder / "meta.json").write_text(json.dumps({**meta, "run_id": run_id, "created": time.time(),
                                                      "query": path.name}))
        return run_id, path

    def meta(self, run_id: str) -> dict:
        return json.loads((self.folder(run_id) / "meta.json").read_text())

    def finish(self, run_id: str, verdict: Verdict, name: str, max_pixels: int | None = None,
               extra: dict | None = None) -> dict:
        """Copy the run's maps into its folder, write the overlay and heat layer, save and return the record:
        every `Verdict` field, ``image`` (the upload's name), ``run_id``, URLs (``overlay``, ``map``,
        ``image_url``; each evidence's ``map_path`` becomes its URL) and the fields of `extra`."""
        folder = self.folder(run_id)
        meta = self.meta(run_id)
        base = f"/v1/runs/{run_id}"
        record = verdict.model_dump(mode="json")
        urls: dict[str, str | None] = {"image_url": f"{base}/image", "overlay": None, "map": None}
        temp_dirs: set[Path] = set()
        if verdict.status == "ok":
            from agent.overlays import verdict_map, write_verdict_overlay

            write_verdict_overlay(verdict, folder / meta["query"], folder / "overlay.png", max_pixels)
            urls["overlay"] = f"{base}/overlay.png"
            amap = verdict_map(verdict)
            if amap is not None:
                grey = np.clip(amap * 255.0, 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / "map.png"), grey)
                cv2.imwrite(str(folder / "heat.png"), cv2.cvtColor(heat_layer(grey), cv2.COLOR_RGBA2BGRA))
                urls["map"] = f"{base}/map.png"
                urls["heat"] = f"{base}/heat.png"
            for i, (ev, item) in enumerate(zip(verdict.evidence, record["evidence"], strict=True)):
                if ev.map_path and Path(ev.map_path).is_file():
                    shutil.copyfile(ev.map_path, folder / f"e{i}.png")
                    item["map_path"] = f"{base}/e{i}.png"
                    temp_dirs.add(Path(ev.map_path).parent)
                else:
                    item["map_path"] = None
        record.update({"image": name, "run_id": run_id, "category": verdict.category, **urls, **(extra or {})})
        if self.redactor is not None:  # no server folder in a reply (e.g. inside an error's text)
            record = self.redactor.json(record)
        (folder / "record.json").write_text(json.dumps(record))
        for temp in temp_dirs:  # the tools' per-run temporary folder: its files are copied above
            if temp.name.startswith("anomaly-agent-") and temp.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(temp, ignore_errors=True)
        self.prune()
        return record

    def record(self, run_id: str) -> dict:
        path = self.folder(run_id) / "record.json"
        if not path.is_file():
            raise ApiError(409, "not_ready", f"run {run_id} has no verdict yet", "retry when the run has finished")
        return json.loads(path.read_text())

    def file(self, run_id: str, name: str) -> Path:
        """The path of one of a run's files, by its fixed name ("image", "overlay.png", "heat.png", "map.png",
        "e<i>.png")."""
        folder = self.folder(run_id)
        if name == "image":
            path = folder / self.meta(run_id)["query"]
        elif name in FILES or EVIDENCE_FILE.fullmatch(name):
            path = folder / name
        else:
            path = None
        if path is None or not path.is_file():
            raise ApiError(404, "not_found", f"run {run_id} has no file {name!r}",
                           "use the URLs in the run's record (GET /v1/runs/{id})")
        return path

    def recent(self, limit: int = 20, disputed: bool | None = None) -> list[dict]:
        """The newest finished runs' records (short form), newest first; `disputed` True/False keeps only the
        verdicts whose model disagreed (or agreed) with the measured reading (`Verdict.disputed`)."""
        out = []
        folders = sorted(self.runs_dir.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in folders:
            path = folder / "record.json"
            if RUN_ID.fullmatch(folder.name) and path.is_file():
                rec = json.loads(path.read_text())
                if disputed is not None and bool(rec.get("disputed")) != disputed:
                    continue
                out.append({k: rec.get(k) for k in ("run_id", "image", "category", "pred_label", "pred_score",
                                                    "threshold", "status", "error", "image_url", "overlay",
                                                    "disputed", "policy")})
                if len(out) >= limit:
                    break
        return out

    def prune(self) -> None:
        """Remove the oldest runs beyond `max_runs`, and the oldest uploaded reference sets beyond as many (a
        set is marked used whenever a request uploads it again)."""
        with self._lock:
            prune_oldest(self.runs_dir, self.max_runs, RUN_ID)
            prune_oldest(self.refsets_dir, self.max_runs, REFSET_ID)
