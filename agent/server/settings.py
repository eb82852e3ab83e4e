"""What `anomaly-agent serve` is configured with (beyond the agent's own `AgentConfig`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, Field

from agent.config import AgentConfig, default_home
from agent.errors import UserInputError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Is `host` a loopback address ("127.0.0.1", "::1", "localhost")?"""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    """Server settings.

    Attributes:
        host / port: where to listen (127.0.0.1 by default: only this machine).
        api_key: bearer token every /v1 request must carry (None: no auth, loopback only unless
            `insecure_no_auth`).
        insecure_no_auth: allow a non-loopback host without an api key (said loudly at start).
        data_dir: the server's own files: runs (query image, verdict, overlay, maps), uploaded reference
            sets (by content hash), chat-session images.
        max_upload_mb: request bodies above this size get 413.
        workers: detections/chat turns running at once; queue: how many more may wait (then 503).
        request_timeout_s: per-request time limit, queue wait included (then 504).
        max_images: images in one POST /v1/detect.
        max_runs: runs kept on disk (the oldest are removed beyond it).
        cors_origins: origins allowed by CORS (none by default: no CORS headers at all); they may also send
            state-changing requests (others get 403).
        allowed_hosts: names accepted in the Host header besides the loopback ones and `host` (a server without
            an api key refuses others: DNS rebinding).
        live_sessions: chat sessions whose images stay in memory (older ones reload from disk).
    """

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_key: str | None = None
    insecure_no_auth: bool = False
    data_dir: Path = Field(default_factory=lambda: default_home() / "serve")
    max_upload_mb: float = Field(20.0, gt=0)
    workers: int = Field(2, ge=1)
    queue: int = Field(32, ge=0)
    request_timeout_s: float = Field(300.0, gt=0)
    max_images: int = Field(16, ge=1)
    max_runs: int = Field(2000, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    live_sessions: int = Field(32, ge=1)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> list[str]:
        """Refuse an unsafe setup; returns the warnings to print at start.

        Raises:
            UserInputError: a non-loopback host without an api key and without `insecure_no_auth`.
        """
        if is_loopback(self.host):
            return []
        if self.api_key:
            return [f"listening on {self.host}: every /v1 request needs 'Authorization: Bearer <api key>'"]
        if not self.insecure_no_auth:
            msg = (f"--host {self.host} is reachable from other machines, so it needs an api key. Fix: pass "
                   "--api-key KEY (clients send 'Authorization: Bearer KEY'), bind 127.0.0.1, or accept the "
                   "risk with --insecure-no-auth")
            raise UserInputError(msg)
        return [f"WARNING: listening on {self.host} WITHOUT authentication (--insecure-no-auth): anyone who "
                "can reach this port can run detections and write to the memory"]


def describe(settings: ServeSettings, config: AgentConfig) -> str:
    """One line for the start banner."""
    auth = "bearer api key" if settings.api_key else "no auth (loopback)"
    return (f"anomaly-agent serve on http://{settings.host}:{settings.port}/ ({auth}); data {settings.data_dir}; "
            f"memory {config.memory_host or config.memory_path}; sessions {config.sessions_path}")
