"""A real uvicorn server for `anomaly-agent serve` tests: in a thread, on a free loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.agent_fixtures import texture, with_defect


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """`create_app(...)` served by uvicorn in a background thread; waits until /readyz answers 200."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="anomaly-agent-serve-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            state = self.app.state.server
            if state.problem:
                raise RuntimeError(f"server failed to warm up: {state.problem}")
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def texture_png(seed: int, defect: bool = False, noise_seed: int | None = None) -> bytes:
    """A 128 px test texture (tests/agent_fixtures.py) as PNG bytes; `noise_seed` adds a little noise
    (a near-duplicate)."""
    pixels = texture(seed)
    if defect:
        pixels = with_defect(pixels)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        noise = rng.integers(-3, 4, pixels.shape[:2])[..., None]  # grey noise: the image stays greyscale
        pixels = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return png_bytes(pixels)


def serve_config(home: Path, **overrides):
    from agent.config import load_config

    return load_config(**{"backend": "none", "memory_path": home / "memory", "sessions_path": home / "sessions.sqlite",
                          "threads": 2, **overrides})


def serve_settings(home: Path, **overrides):
    from agent.server import ServeSettings

    return ServeSettings(**{"data_dir": home / "serve", **overrides})
