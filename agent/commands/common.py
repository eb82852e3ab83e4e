"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # imported when a command runs: `--help` stays fast (no numpy, Pillow, pydantic-settings)
    from agent.config import AgentConfig

ConfigOption = typer.Option(None, "--config", help="YAML file of settings (see `config show`).")
PolicyOption = typer.Option(
    None, "--policy", help="Safety policy: 'evidence-stands' (default: a measured reading clearly beyond the "
    "threshold stays anomalous whatever the model says) or 'model-decides' (the weighted fusion decides).")


def config_from_cli(config_file: Path | None, **flags: Any) -> AgentConfig:
    """Defaults < YAML < ANOMALY_AGENT_* env < the flags given (None = flag not given)."""
    from agent.config import load_config

    return load_config(config_file, **flags)


def print_json_line(data: Any) -> None:
    """One JSON object per line on stdout (for --json)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("_") or "x"


def unique_stems(paths: list[str]) -> dict[str, str]:
    """A file-name stem per path, unique within the batch, for output files such as overlays.

    The file's stem when no other path in the batch shares it; otherwise the stem prefixed by as many
    parent folders as tell the sharing paths apart (``test/good/000.png`` and ``test/hole/000.png``
    -> ``good_000`` and ``hole_000``); a short hash of the absolute path when even that is not enough.
    The same file given twice gets one stem. Deterministic: it depends on the set of paths only.
    """
    absolute = {p: Path(p).expanduser().absolute() for p in paths}
    groups: dict[str, list[Path]] = {}
    for path in dict.fromkeys(absolute.values()):
        groups.setdefault(path.stem, []).append(path)
    stem_of: dict[Path, str] = {}
    for stem, members in groups.items():
        if len(members) == 1:
            stem_of[members[0]] = _safe(stem)
            continue
        for depth in range(1, max(len(m.parts) for m in members)):
            names = {m: "_".join([*(_safe(p) for p in m.parent.parts[-depth:]), _safe(stem)]) for m in members}
            if len(set(names.values())) == len(members):
                stem_of.update(names)
                break
        else:
            stem_of.update({m: f"{_safe(stem)}_{hashlib.sha1(str(m).encode()).hexdigest()[:8]}" for m in members})
    taken: dict[str, Path] = {}
    for path, name in list(stem_of.items()):  # a prefixed name may equal another file's plain stem
        if name in taken and taken[name] != path:
            stem_of[path] = f"{name}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        taken[stem_of[path]] = path
    return {p: stem_of[a] for p, a in absolute.items()}


def expand_images(images: list[str]) -> list[tuple[str, str | None]]:
    """Each argument as (path, None); a folder becomes its image files, sorted (an empty one: (folder, error));
    a quoted glob that names no file ('test/*.png', '**' recurses) becomes the image files it matches, sorted
    (none: (glob, error))."""
    import glob

    from tools.references import IMAGE_SUFFIXES, image_files_in, image_files_matching

    items: list[tuple[str, str | None]] = []
    for image in images:
        path = Path(image)
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError:  # a name too long, a loop of links: intake reports it for this item
            is_dir = exists = False
        if not exists and glob.has_magic(image):
            matches = [str(m) for m in image_files_matching(image)]
            if not matches:
                items.append((image, f"{image}: no image files match this pattern ({', '.join(IMAGE_SUFFIXES)}). "
                                     "Fix: check the pattern, or pass image files or a folder"))
            items.extend((m, None) for m in matches)
            continue
        if not is_dir:
            items.append((image, None))
            continue
        files = [str(p) for p in image_files_in(path)]
        if not files:
            items.append((image, f"{image}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)}). "
                                 "Fix: pass image files or a folder that holds them"))
        items.extend((f, None) for f in files)
    return items
