"""Find weight files on disk; never download unless the settings allow it.

Search order for a file name (first hit wins):
1. an explicit path (a setting such as ``ANOMALY_AGENT_CLIP_PRETRAINED=/path/file.pt``);
2. ``settings.weights_dir`` (``ANOMALY_AGENT_WEIGHTS_DIR``), also one folder level below it;
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)
   and any extra folders the caller names (e.g. open_clip's ``~/.cache/clip``);
4. the Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``),
   ``models--*/snapshots/*/<filename>``, optionally restricted to one repository.

If nothing matches and ``settings.allow_downloads`` is on and a URL is known, the file is fetched
into the torch hub cache. Otherwise `WeightsNotFoundError` names the file, the folders searched, the
setting to change and a command that would fetch it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tools.base import ToolSettings


class WeightsNotFoundError(FileNotFoundError):
    """A weight file could not be found; the message names the setting to change and how to fetch it."""

    def __str__(self) -> str:  # FileNotFoundError would prefix an errno
        return self.args[0] if self.args else ""


def torch_hub_checkpoints() -> Path:
    """The torch hub checkpoint folder (respects ``$TORCH_HOME``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE`` > ``$HF_HOME/hub`` > default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _hf_candidates(filename: str, hf_repo: str | None) -> list[Path]:
    root = hf_hub_cache()
    if not root.is_dir():
        return []
    pattern = f"models--{hf_repo.strip('/').replace('/', '--')}" if hf_repo else "models--*"
    return sorted(root.glob(f"{pattern}/snapshots/*/{filename}"))


def candidate_paths(
    filename: str,
    settings: ToolSettings,
    extra_dirs: Iterable[Path] = (),
    hf_repo: str | None = None,
) -> list[Path]:
    """Every place `resolve_weight_file` looks, in order (existing or not, HF hits only if present)."""
    paths: list[Path] = []
    if settings.weights_dir is not None:
        wd = Path(settings.weights_dir).expanduser()
        paths.append(wd / filename)
        if wd.is_dir():
            paths.extend(sorted(wd.glob(f"*/{filename}")))
    paths.append(torch_hub_checkpoints() / filename)
    paths.extend(Path(d).expanduser() / filename for d in extra_dirs)
    paths.extend(_hf_candidates(filename, hf_repo))
    return paths


def resolve_weight_file(
    filename: str,
    settings: ToolSettings,
    setting: str,
    fetch_hint: str,
    explicit: Path | None = None,
    *,
    url: str | None = None,
    extra_dirs: Iterable[Path] = (),
    hf_repo: str | None = None,
) -> Path:
    """Find `filename` by the module's search order.

    Args:
        filename: the weight file's name, e.g. "wide_resnet50_2-95faca4d.pth".
        settings: tool settings (weights_dir, allow_downloads).
        setting: the environment variable a user would change, named in the error.
        fetch_hint: a command that would fetch the file, named in the error.
        explicit: a path the user gave; if given it must exist.
        url: where to fetch it from when ``settings.allow_downloads`` is on.
        extra_dirs: further folders to look in after the torch hub cache.
        hf_repo: restrict the HF cache search to this repository ("org/name").

    Returns:
        An existing file path.

    Raises:
        WeightsNotFoundError: nothing found (and no download allowed or possible).
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        msg = (
            f"weight file {path} (from {setting}) does not exist. Fix: point {setting} at an existing "
            f"file, or unset it to search ANOMALY_AGENT_WEIGHTS_DIR and the caches; fetch with: {fetch_hint}"
        )
        raise WeightsNotFoundError(msg)
    extra_dirs = list(extra_dirs)
    searched = candidate_paths(filename, settings, extra_dirs, hf_repo)
    for path in searched:
        if path.is_file():
            return path
    if settings.allow_downloads and url:
        import torch

        target = torch_hub_checkpoints() / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
        return target
    where = ", ".join(str(p) for p in searched[:4])
    if hf_repo:
        where += f", {hf_hub_cache()}/models--{hf_repo.strip('/').replace('/', '--')}/snapshots/*"
    download = (
        "or set ANOMALY_AGENT_ALLOW_DOWNLOADS=1 to let it be fetched"
        if url
        else "(this file cannot be downloaded automatically)"
    )
    put = "put it in the folder named by ANOMALY_AGENT_WEIGHTS_DIR"
    if setting != "ANOMALY_AGENT_WEIGHTS_DIR":
        put += f" or set {setting} to its path"
    msg = (
        f"weight file {filename!r} not found (searched {where}). Fix: {put}, {download}; "
        f"fetch with: {fetch_hint}"
    )
    raise WeightsNotFoundError(msg)
