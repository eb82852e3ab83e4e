"""`doctor`: what this machine and config can run, and what to change when something is missing.

Each check says whether the current config *needs* it; the command exits non-zero only when a needed
check fails (e.g. `backend: openai` with an endpoint that does not answer).
"""

from __future__ import annotations

import importlib
import os
import platform
import tempfile
from dataclasses import asdict, dataclass

from agent.config import AgentConfig


@dataclass
class Check:
    """One line of the report: name, ok, needed by the current config, detail (what / the fix)."""

    name: str
    ok: bool
    needed: bool
    detail: str


def _optional_status(module: str, func: str, *args) -> tuple[bool, str]:
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        return False, f"check unavailable ({exc})"
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
        return False, f"{type(exc).__name__}: {exc}"


def _memory_check(cfg: AgentConfig) -> Check:
    if cfg.memory_host:
        return Check("memory", True, False, f"shared Chroma server {cfg.memory_host}:{cfg.memory_port} (checked on use)")
    path = cfg.memory_path
    probe_dir = path if path.exists() else next((p for p in path.parents if p.exists()), None)
    if probe_dir is None or not os.access(probe_dir, os.W_OK):
        return Check("memory", False, False, f"{path} is not writable. Fix: set ANOMALY_AGENT_MEMORY_PATH or --memory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir):
            pass
    except OSError as exc:
        return Check("memory", False, False, f"{path} is not writable ({exc}). Fix: set ANOMALY_AGENT_MEMORY_PATH")
    state = "exists" if path.exists() else "will be created on first `memory add/import`"
    return Check("memory", True, False, f"{path} ({state}, writable)")


def run_checks(cfg: AgentConfig) -> tuple[dict, list[Check]]:
    """Environment facts and the list of checks for `cfg`."""
    import torch

    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": cfg.device,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }
    settings = cfg.tool_settings()
    checks: list[Check] = []
    ok, detail = _optional_status("tools.backbones", "weights_status", cfg.backbone, settings)
    checks.append(Check(f"patch backbone ({cfg.backbone})", ok, True, detail))
    if cfg.backbone != "dinov2_vit":  # the GPU users' patch backbone: say where its weights go
        ok, detail = _optional_status("tools.backbones", "weights_status", "dinov2_vit", settings)
        checks.append(Check("patch backbone option (dinov2_vit)", ok, False,
                            detail if not ok else f"{detail}; use it with ANOMALY_AGENT_BACKBONE=dinov2_vit"))
    ok, detail = _optional_status("tools.clip_models", "clip_weights_status", settings)
    checks.append(Check(f"CLIP ({cfg.clip_model}, {cfg.clip_pretrained})", ok, False,
                        detail if ok else f"{detail} (zero-shot without references needs it)"))
    ok, detail = _optional_status("tools.sam_models", "sam_weights_status", settings)
    checks.append(Check(f"SAM ({cfg.sam_model_type})", ok, False,
                        detail if ok else f"{detail} (sam_crop falls back to box crops)"))
    ok, detail = _optional_status("agent.backends.transformers_backend", "local_model_status", cfg)
    checks.append(Check(f"local MLLM ({cfg.local_model})", ok, cfg.backend == "transformers", detail))
    if cfg.base_url:
        ok, detail = _optional_status("agent.backends.endpoint", "check_endpoint", cfg.base_url, cfg.api_key,
                                      min(cfg.request_timeout_s, 5.0))
    else:
        ok, detail = False, "no endpoint configured. Fix: set --base-url / ANOMALY_AGENT_BASE_URL (e.g. http://localhost:8000/v1)"
    checks.append(Check("model endpoint", ok, cfg.backend == "openai", detail))
    checks.append(_memory_check(cfg))
    return env, checks


def report(cfg: AgentConfig) -> dict:
    env, checks = run_checks(cfg)
    return {
        "environment": env,
        "backend": cfg.backend,
        "checks": [asdict(c) for c in checks],
        "ok": all(c.ok or not c.needed for c in checks),
    }
