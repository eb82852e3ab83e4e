"""Memory benchmark: latency of `ChromaStore.nearest(k=5)` at 10k examples, embedded and server.

    python -m evals.bench.memory                 # 10k examples of dim 512, 300 queries per mode
    python -m evals.bench.memory --n 2000 --queries 100 --no-server

Inserts N random unit vectors (one category, through the real `add_many`, each with its own tiny
PNG so ids are content hashes as in real use), then times `nearest(category, q, k=5)` for random
unit queries (the first few are warm-up and excluded). Modes: the embedded store
(`PersistentClient`), the same with a label filter, and a real ``chroma run`` server on 127.0.0.1
(HttpClient; skipped when the CLI is absent). Prints median and p95 per mode (goal: p95 <= 5 ms
embedded) and the insert throughput.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from memory.store import ChromaStore, ExampleInput

MODEL = "bench-random@512"
WARMUP = 10


def _png_bytes(i: int) -> bytes:
    """A distinct 4x4 PNG for example i."""
    px = np.zeros((4, 4, 3), np.uint8)
    px[0, 0] = (i >> 16) & 255, (i >> 8) & 255, i & 255
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: ChromaStore, n: int, dim: int, batch: int = 500, seed: int = 0) -> float:
    """Insert n examples (every 10th anomalous); returns seconds taken."""
    vecs = _unit(np.random.default_rng(seed), n, dim)
    start = time.perf_counter()
    for lo in range(0, n, batch):
        store.add_many([
            ExampleInput(_png_bytes(i), "bench", "anomalous" if i % 10 == 0 else "normal", vecs[i], MODEL)
            for i in range(lo, min(n, lo + batch))
        ])
    return time.perf_counter() - start


def time_nearest(store: ChromaStore, queries: int, dim: int, label: str | None = None) -> list[float]:
    """Milliseconds per nearest(k=5) call, warm-up excluded."""
    qs = _unit(np.random.default_rng(123), queries + WARMUP, dim)
    out = []
    for i, q in enumerate(qs):
        t0 = time.perf_counter()
        hits = store.nearest("bench", q, k=5, label=label, embedding_model=MODEL)
        dt = (time.perf_counter() - t0) * 1000.0
        assert len(hits) == 5
        if i >= WARMUP:
            out.append(dt)
    return out


def _row(mode: str, times: list[float]) -> dict:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return {"mode": mode, "median_ms": statistics.median(times), "p95_ms": p95, "n": len(times)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(path: Path):
    exe = Path(sys.executable).with_name("chroma")
    exe = str(exe) if exe.exists() else shutil.which("chroma")
    if exe is None:
        return None, None
    port = _free_port()
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    return None, None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="examples to insert")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-server", action="store_true", help="skip the chroma-server mode")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    inserts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp_path = Path(tmp)
        store = ChromaStore(tmp_path / "embedded")
        secs = fill(store, args.n, args.dim)
        inserts.append(f"embedded: {args.n} inserts in {secs:.1f} s ({args.n / secs:.0f}/s)")
        store.close()
        store = ChromaStore(tmp_path / "embedded", create=False)  # reopened: index loaded from disk
        rows.append(_row("embedded", time_nearest(store, args.queries, args.dim)))
        rows.append(_row("embedded, label=anomalous", time_nearest(store, args.queries, args.dim, "anomalous")))
        store.close()
        if not args.no_server:
            proc, port = _server(tmp_path / "server-db")
            if proc is None:
                print("server mode skipped: the `chroma` CLI is absent or did not start")
            else:
                try:
                    server = ChromaStore(host="127.0.0.1", port=port, images_dir=tmp_path / "server-images")
                    secs = fill(server, args.n, args.dim)
                    inserts.append(f"server: {args.n} inserts in {secs:.1f} s ({args.n / secs:.0f}/s)")
                    rows.append(_row("server (HttpClient, loopback)", time_nearest(server, args.queries, args.dim)))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"\nnearest(k=5) over {args.n} examples of dim {args.dim}, one category ({args.queries} queries)")
    print(f"{'mode':<32} {'median ms':>10} {'p95 ms':>8}")
    for r in rows:
        print(f"{r['mode']:<32} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f}")
    for line in inserts:
        print(line)
    return rows


if __name__ == "__main__":
    main()
