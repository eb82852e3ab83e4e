"""Throughput of the batch runner against the fake OpenAI-compatible server.

Each image costs exactly one model call (the direct baseline: references + query in one prompt,
yes/no with logprobs); the server waits `L` seconds per call, so with `C` calls in flight the ideal
rate is C / L images/s. For each (L, C) it runs the real runner path (`evals.runner.run_items`:
workers, the JSONL log with a flush per line, map handling) over N = `per_worker` x C images, and
reports images/s and the fraction of the ideal (median of `repeats` runs).

Modes (``--mode``, several allowed):
- ``thread``: the fake server in a thread of this process (`FakeOpenAIServer`), sharing its GIL;
- ``process``: the fake server in its own process (as a real vLLM server would be);
- ``sleep``: no HTTP at all, a detector that only sleeps L: the runner's own ceiling.

Run: ``python -m evals.bench.runner_throughput [--latency 0.2] [--concurrency 1 4 16] [--repeats 3]
[--mode thread process sleep]``. Goal: >= 0.9 of ideal at C = 16, L = 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from agent.backends.factory import build_backend
from agent.config import load_config
from agent.schemas import Verdict
from evals.datasets import Sample
from evals.direct_baseline import DirectBaseline
from evals.fakeserver import FakeOpenAIServer, Reply
from evals.results import ResultsLog, iter_records
from evals.runner import WorkItem, run_items

SIDE = 128


def _images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class SleepDetector:
    """One simulated model call per image: sleeps L, returns a fixed verdict (the runner's ceiling)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0

    async def adetect(self, image: str, *, category: str | None = None, references: list[str] | None = None) -> Verdict:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return Verdict(image=image, category=category, pred_label="normal", pred_score=0.3, explanation="sleep")


@contextlib.contextmanager
def _server(mode: str, latency_s: float, inspect: bool = False):
    """Yields (base_url, calls served so far: a callable). `inspect`: answer the agent's requests
    (`inspection_responder`) instead of a fixed "no" (process mode only)."""
    if mode == "thread":
        reply = Reply(content="no", label_probs={"no": 0.7, "yes": 0.3})
        with FakeOpenAIServer(latency_s=latency_s, default=reply, decode_images=False) as srv:
            yield srv.base_url, lambda: srv.served
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "evals.fakeserver", "--port", str(port), "--latency", str(latency_s), "--content", "no",
         *(["--inspect"] if inspect else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        proc.stdout.readline()  # "fake OpenAI server at ..." once it listens
        yield f"http://127.0.0.1:{port}/v1", lambda: None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def measure(mode: str, latency_s: float, concurrency: int, per_worker: int, shots: int, tmp: Path) -> dict:
    """One run: images/s of the runner with `concurrency` in flight."""
    n = per_worker * concurrency
    pool = _images(tmp, n + shots)
    refs, queries = pool[:shots], pool[shots : shots + n]
    items = [WorkItem(Sample(q, "bench", 0, "good"), refs, 0) for q in queries]
    log_path = tmp / f"results-{mode}-{concurrency}-{latency_s}.jsonl"
    log_path.unlink(missing_ok=True)
    served = n
    if mode == "sleep":
        with ResultsLog(log_path) as log:
            stats = asyncio.run(run_items(SleepDetector(latency_s), items, log, "bench", concurrency=concurrency))
    else:
        with _server(mode, latency_s) as (url, count):
            cfg = load_config(backend="openai", base_url=url, model="fake-vlm", image_max_side=SIDE)
            detector = DirectBaseline(cfg, build_backend(cfg))
            with ResultsLog(log_path) as log:
                stats = asyncio.run(run_items(detector, items, log, "bench", concurrency=concurrency))
            served = count() if count() is not None else n
    recs = list(iter_records(log_path))
    failed = [r["error"] for r in recs if r["status"] != "ok"]
    if failed or served != n or len(recs) != n:
        msg = f"benchmark run broken: {len(failed)} failed items ({failed[:1]}), {served} model calls for {n} images"
        raise RuntimeError(msg)
    rate = n / stats.elapsed_s
    ideal = concurrency / latency_s
    return {"n": n, "elapsed_s": stats.elapsed_s, "rate": rate, "ideal": ideal, "frac": rate / ideal}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.2], help="seconds per model call")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--per-worker", type=int, default=8, help="images per worker (N = this x C)")
    parser.add_argument("--shots", type=int, default=1, help="references sent with every query")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", nargs="+", default=["thread", "process", "sleep"], choices=["thread", "process", "sleep"])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.mode:
            for lat in args.latency:
                for c in args.concurrency:
                    runs = [measure(mode, lat, c, args.per_worker, args.shots, Path(tmp)) for _ in range(args.repeats)]
                    med = statistics.median(r["rate"] for r in runs)
                    rows.append((mode, lat, c, runs[0]["n"], med, c / lat, med / (c / lat)))
    print(f"runner throughput: one model call per image, {args.shots} reference(s), {SIDE}x{SIDE} PNG, "
          f"median of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'mode':>8} {'L (ms)':>7} {'C':>4} {'N':>5} {'images/s':>10} {'ideal C/L':>10} {'of ideal':>9}")
    for mode, lat, c, n, rate, ideal, frac in rows:
        print(f"{mode:>8} {lat * 1000:7.0f} {c:4d} {n:5d} {rate:10.2f} {ideal:10.2f} {frac:9.3f}")


if __name__ == "__main__":
    main()
