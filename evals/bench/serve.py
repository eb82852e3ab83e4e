"""Load on `anomaly-agent serve`: concurrent clients POST /v1/detect against a loopback server.

    python -m evals.bench.serve                       # 16 clients for 60 s, backend none, 4 references
    python -m evals.bench.serve --clients 4 --duration 10

The server runs in its own process (`python -m agent serve`, a temporary home, tools only). Every request
uploads one query and the same 4 normal references of the synthetic `fabric` category; each query carries a
little noise of its own, so no two requests send the same image (a server that keeps something per image
grows; identical images would hide it). Prints requests/s, p50/p95 latency, errors, and the server's RSS
after warm-up, at every quarter of the run, and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def images(n_refs: int, size: int) -> tuple[list[bytes], list[np.ndarray]]:
    """(reference PNGs, query pixel arrays: half normal, half with a defect) of the synthetic fabric."""
    from evals.synthetic import category_spec, render_image

    refs = [_png(render_image("fabric", None, split="train", index=i, size=size)[0]) for i in range(n_refs)]
    defects = category_spec("fabric").defects
    queries = [render_image("fabric", None if i % 2 == 0 else defects[i // 2 % len(defects)], index=i, size=size)[0]
               for i in range(8)]
    return refs, queries


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, workers: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "ANOMALY_AGENT_HOME": str(home), "ANOMALY_AGENT_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "agent", "serve", "--port", str(port), "--backend", "none",
           "--workers", str(workers), "--queue", "64"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "w"))  # noqa: SIM115


async def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                msg = f"the server exited with {proc.returncode}"
                raise RuntimeError(msg)
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    msg = "the server did not become ready"
    raise RuntimeError(msg)


async def load(url: str, clients: int, duration: float, refs: list[bytes], queries: list[np.ndarray],
               pid: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = 0
    rss_marks: list[float] = []
    stop = time.monotonic() + duration

    async def client(client_id: int, http: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.monotonic() < stop:
            counter += 1
            rng = np.random.default_rng(counter)
            base = queries[counter % len(queries)].astype(np.int16)
            noisy = np.clip(base + rng.integers(-2, 3, base.shape[:2])[..., None], 0, 255).astype(np.uint8)
            files = [("images", (f"q{counter}.png", _png(noisy), "image/png"))]
            files += [("references", (f"ref{i}.png", data, "image/png")) for i, data in enumerate(refs)]
            t0 = time.perf_counter()
            try:
                reply = await http.post(f"{url}/v1/detect", files=files, data={"category": "fabric"})
                if reply.status_code != 200 or reply.json()["results"][0]["status"] != "ok":
                    key = f"HTTP {reply.status_code}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000.0)

    async def sample_rss() -> None:
        for quarter in (1, 2, 3):
            await asyncio.sleep(duration / 4)
            rss_marks.append(rss_mb(pid))
            del quarter

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)), sample_rss())
    wall = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "clients": clients, "duration_s": round(wall, 1), "requests": len(latencies),
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": statistics.median(ordered) if ordered else float("nan"),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan"),
        "errors": sum(errors.values()), "error_kinds": errors, "rss_quarters_mb": rss_marks,
    }


def print_table(row: dict) -> None:
    print("| clients | wall s | ok requests | req/s | p50 ms | p95 ms | errors | RSS start MB | RSS at 1/4, 1/2, 3/4 MB | RSS end MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    quarters = ", ".join(f"{v:.0f}" for v in row["rss_quarters_mb"])
    print(f"| {row['clients']} | {row['duration_s']} | {row['requests']} | {row['rps']:.2f} | {row['p50_ms']:.0f} | "
          f"{row['p95_ms']:.0f} | {row['errors']} | {row['rss_start_mb']:.0f} | {quarters} | {row['rss_end_mb']:.0f} |")
    if row["error_kinds"]:
        print(f"errors: {row['error_kinds']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--refs", type=int, default=4, help="normal references uploaded with each request")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    args = parser.parse_args(argv)
    refs, queries = images(args.refs, args.size)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp)
        port = _free_port()
        proc = start_server(home, port, args.workers, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(_wait_ready(url, proc))
            asyncio.run(load(url, 1, 2.0, refs, queries, proc.pid))  # the references' bank and first-call costs
            start_rss = rss_mb(proc.pid)
            row = asyncio.run(load(url, args.clients, args.duration, refs, queries, proc.pid))
            row["rss_start_mb"], row["rss_end_mb"] = start_rss, rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"anomaly-agent serve, backend none, {args.refs} uploaded references, {args.size} px synthetic fabric, "
          f"server --workers {args.workers}, {args.threads} torch threads; every query distinct")
    print_table(row)
    return 1 if row["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
