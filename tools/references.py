"""Resolve a user's reference specification (folder, glob, or list of paths) to a sorted file list."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ReferenceSpecError(FileNotFoundError):
    """No reference images match what the user gave; the message names it and the fix."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links
        return False


def image_files_in(folder: Path) -> list[Path]:
    """The image files directly in `folder` (by suffix, not recursive), sorted."""
    return sorted(p for p in folder.iterdir() if _is_image(p))


def image_files_matching(pattern: str | Path) -> list[Path]:
    """The image files a glob pattern matches (`**` recurses; `~` expands), sorted."""
    return sorted(p for p in (Path(m) for m in glob.glob(str(Path(pattern).expanduser()), recursive=True))
                  if _is_image(p))


def _expand_one(spec: str | Path) -> list[Path]:
    text = str(spec)
    path = Path(text).expanduser()
    try:
        path.stat()
    except FileNotFoundError:
        pass  # a glob, or a path that does not exist: said below
    except OSError as exc:  # a name too long, a loop of links, no permission
        if not glob.has_magic(text):
            msg = (f"reference path {text!r} cannot be read ({exc.strerror or type(exc).__name__}). "
                   "Fix: pass a folder of normal images, a glob or image files")
            raise ReferenceSpecError(msg) from None
    if path.is_dir():
        return image_files_in(path)
    if path.is_file() or (path.exists() and not glob.has_magic(text)):
        return [path]  # a named pipe or device too: intake refuses it by its kind, before any open()
    if glob.has_magic(text):
        return image_files_matching(path)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(p and _exists(Path(p).expanduser()) for p in parts):
        msg = (f"reference path {text!r} does not exist; it looks like {len(parts)} paths joined by commas. "
               "Fix: give each path as its own entry (CLI: repeat --refs, e.g. --refs a.png --refs b.png; "
               "JSON: a list), or pass their folder or a glob")
        raise ReferenceSpecError(msg)
    msg = f"reference path {text!r} does not exist. Fix: pass a folder of normal images, a glob or image files"
    raise ReferenceSpecError(msg)


def resolve_references(spec: str | Path | Iterable[str | Path] | None) -> list[Path]:
    """Reference image files from a folder, a glob pattern, a file, or a list of those.

    A folder contributes its image files (by suffix: png, jpg, jpeg, bmp, tif, tiff, webp; not
    recursive); a glob contributes the image files it matches (``**`` recurses). The result is
    sorted (per entry, entries in the given order) and de-duplicated.

    Returns:
        A non-empty list of paths ([] when `spec` is None).

    Raises:
        ReferenceSpecError: an entry does not exist, or nothing matches.
    """
    if spec is None:
        return []
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    files: list[Path] = []
    for entry in specs:
        files.extend(_expand_one(entry))
    files = list(dict.fromkeys(files))
    if not files:
        shown = ", ".join(str(s) for s in specs) or "(empty list)"
        msg = (
            f"no reference images found in {shown}. Fix: pass a folder holding image files "
            f"({', '.join(IMAGE_SUFFIXES)}), a glob such as 'train/good/*.png', or image paths"
        )
        raise ReferenceSpecError(msg)
    return files


def resolve_reference_items(spec) -> list:
    """Like `resolve_references`, but a list may also hold images as objects (PIL images, numpy arrays,
    encoded bytes; the Python API): paths come back as strings, objects as given, in order."""
    if spec is None:
        return []
    if isinstance(spec, str | Path):
        return [str(p) for p in resolve_references(spec)]
    items: list = []
    for entry in spec:
        if isinstance(entry, str | Path):
            items.extend(str(p) for p in resolve_references(entry))
        else:
            items.append(entry)
    return items
