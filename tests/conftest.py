"""Shared fixtures. Network is blocked except loopback: tests never reach a hub or the internet."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REALSETS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "realsets"


class NetworkBlockedError(OSError):
    pass


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkBlockedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise NetworkBlockedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """ANOMALY_AGENT_HOME in a temp dir, and no ANOMALY_AGENT_* settings leaking from the shell."""
    for key in list(os.environ):
        if key.startswith("ANOMALY_AGENT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ANOMALY_AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Empty torch hub and HF caches so nothing on this machine is found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def realsets() -> Path:
    """The shared real images; skips when the folder is absent (a clean checkout without ../shared)."""
    if not (REALSETS / "index.csv").exists():
        pytest.skip(f"real image sets not found at {REALSETS}")
    return REALSETS
