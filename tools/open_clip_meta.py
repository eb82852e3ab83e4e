"""open_clip's model names and pretrained tags without importing open_clip (which pulls in torchvision
and torch._dynamo: about 5 s), for checks such as `doctor` that only look weights up.

`registry()` returns open_clip itself when it is already imported (its list includes configs added at
run time), else a light object with `list_models`, `get_pretrained_cfg` and
`list_pretrained_tags_by_model`: the model names from open_clip's bundled ``model_configs/*.json``
and its ``pretrained.py`` loaded on its own. Anything unexpected falls back to importing open_clip.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

_LIGHT = "_anomaly_agent_open_clip_meta"


def _light():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    if _LIGHT not in sys.modules:
        pkg = types.ModuleType(_LIGHT)
        pkg.__path__ = [str(root)]  # its relative imports (.constants, .version) resolve in open_clip's folder
        sys.modules[_LIGHT] = pkg
    pretrained = importlib.import_module(f"{_LIGHT}.pretrained")
    names = sorted(p.stem for p in (root / "model_configs").glob("*.json"))
    if not names:
        raise ImportError("open_clip's model_configs not found")
    return types.SimpleNamespace(
        list_models=lambda: list(names),
        get_pretrained_cfg=pretrained.get_pretrained_cfg,
        list_pretrained_tags_by_model=pretrained.list_pretrained_tags_by_model,
    )


def registry():
    """open_clip (when imported) or its light registry (see the module docstring)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    try:
        return _light()
    except Exception:  # noqa: BLE001 - another open_clip layout: import it the slow way
        import open_clip

        return open_clip
