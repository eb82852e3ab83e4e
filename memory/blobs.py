"""Image bytes kept in the Chroma store itself (server mode), content-addressed.

With a shared Chroma server (``HttpClient``) every worker reads the same vectors, but an image copy
under one machine's ``memory_path/images`` is invisible to the others. So in server mode each
example's image bytes also go into the ``aa_blobs`` collection: id = the example id (the sha256
content id of the bytes), document = the bytes in base64, metadata = file suffix and size, and a
constant 1-d vector (blobs are fetched by id, never searched). A reader that lacks the local copy
fetches the bytes once and writes them to its own ``images_dir`` (the same content-addressed
relative path), so the path it hands to the agent is a local file.

Size: base64 adds a third; Chroma keeps documents in SQLite, which is fine for the images a memory
holds (tens of KB to a few MB each).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

BLOBS_COLLECTION = "aa_blobs"


class BlobStore:
    """Content-addressed image bytes in one Chroma collection of `client`."""

    def __init__(self, client: Any, schema_version: int) -> None:
        self._col = client.get_or_create_collection(
            BLOBS_COLLECTION, metadata={"kind": "blobs", "schema_version": schema_version},
            embedding_function=None,
        )

    def put(self, blob_id: str, data: bytes, ext: str) -> None:
        """Store `data` under `blob_id` (a no-op when it is there already)."""
        if self._col.get(ids=[blob_id], include=[])["ids"]:
            return
        self._col.upsert(ids=[blob_id], embeddings=[[1.0]], documents=[base64.b64encode(data).decode("ascii")],
                         metadatas=[{"ext": ext, "size": len(data)}])

    def get(self, blob_id: str) -> bytes | None:
        """The bytes stored under `blob_id`, or None."""
        res = self._col.get(ids=[blob_id], include=["documents"])
        if not res["ids"]:
            return None
        return base64.b64decode(res["documents"][0])

    def delete(self, blob_id: str) -> None:
        self._col.delete(ids=[blob_id])

    def materialize(self, blob_id: str, dest: Path) -> bool:
        """Write the blob to `dest` unless it exists (atomic); False when the store lacks it."""
        if dest.exists():
            return True
        data = self.get(blob_id)
        if data is None:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return True
