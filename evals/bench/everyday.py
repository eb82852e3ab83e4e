"""Everyday use: CLI start-up, one `detect` with a cold and a stored reference bank, memory over many
consecutive detects in one process, and 100 references. Prints one table.

    python -m evals.bench.everyday                    # 2,000 detects for the memory row
    python -m evals.bench.everyday --detects 300      # shorter
    python -m evals.bench.everyday --only startup --only bank

Rows (medians where repeated; every process gets a fresh ANOMALY_AGENT_HOME, backend none, CPU):
- startup: wall time of `anomaly-agent --help` and `--version` (new processes).
- bank: `anomaly-agent detect IMG --refs DIR` (4 references) in a new process: first with no stored
  bank (cold: the build), then again (the bank is loaded from disk).
- memory: RSS of one process judging `--detects` different small synthetic images in a row with the
  Python API; growth from image 200 to the last (the acceptance bound is 50 MB).
- refs100: `detect` with 100 references: at the default cap (32 kept, farthest-point) and with
  `--max-references 100`; wall time and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tools.tempdirs import temp_dir

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("startup", "bank", "memory", "refs100")


def _texture(seed: int, side: int) -> np.ndarray:
    """A colour texture with random phase and noise, side x side x 3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    grey = 128 + 35 * np.sin(xx / 3.0 + px) * np.sin(yy / 3.0 + py) + rng.normal(0, 4, (side, side))
    rgb = np.stack([grey, grey * 0.8 + 20, grey * 0.6 + 40], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write(folder: Path, seeds, side: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in seeds:
        path = folder / f"img{s:05d}.png"
        Image.fromarray(_texture(s, side)).save(path)
        out.append(path)
    return out


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_AGENT_")}
    env.update(ANOMALY_AGENT_HOME=str(home), ANOMALY_AGENT_BACKEND="none", ANOMALY_AGENT_DEVICE="cpu",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


WRAP = """
import resource, sys
from agent.cli import main
code = main(sys.argv[1:])
print(f"__maxrss_kib__ {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def _timed(argv: list[str], home: Path) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stderr) of `anomaly-agent ARGV` in a new process (`agent.cli.main`)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAP, *argv], cwd=ROOT, env=_env(home), capture_output=True,
                          text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise RuntimeError(f"anomaly-agent {' '.join(argv)} exited {done.returncode}: {done.stderr[-800:]}")
    kib = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("__maxrss_kib__")]
    return wall, (kib[-1] / 1024.0 if kib else float("nan")), done.stderr


def startup(repeats: int, work: Path) -> list[tuple[str, str]]:
    rows = []
    for argv in (["--help"], ["--version"]):
        times = [_timed(argv, work / "home-startup")[0] for _ in range(repeats)]
        rows.append((f"`anomaly-agent {argv[0]}` wall", f"{statistics.median(times):.2f} s (median of {repeats})"))
    return rows


def bank(side: int, work: Path) -> list[tuple[str, str]]:
    refs = _write(work / "bank" / "refs", range(4), side)
    query = _write(work / "bank" / "query", [100], side)[0]
    home = work / "home-bank"
    argv = ["detect", str(query), "--refs", str(refs[0].parent), "--json"]
    cold, _, _ = _timed(argv, home)
    stored, _, err = _timed(argv, home)
    assert "building the reference bank" not in err or "stored" in err
    return [(f"`detect` 1 image, 4 refs {side}x{side}, cold bank (build + store)", f"{cold:.2f} s"),
            (f"`detect` 1 image, 4 refs {side}x{side}, stored bank (loaded)", f"{stored:.2f} s")]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(n: int, side: int, work: Path) -> list[tuple[str, str]]:
    """In this process: n detects of different images (arrays, so no files pile up) with 2 references."""
    os.environ.update(_env(work / "home-memory"))
    from agent import AnomalyAgent

    agent = AnomalyAgent.from_config(backend="none", device="cpu")
    refs = [_texture(i, side) for i in range(2)]
    marks: dict[int, float] = {}
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        verdict = agent.detect(_texture(10_000 + i, side), references=refs)
        if verdict.status != "ok":
            raise RuntimeError(verdict.error)
        if i in (1, 200, n) or i % 250 == 0:
            marks[i] = _rss_mb()
            print(f"progress: memory row, image {i}/{n}: RSS {marks[i]:.0f} MB, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    start = marks.get(200, marks[1])
    growth = marks[n] - start
    trace = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(marks.items()))
    return [(f"RSS over {n} detects ({side}x{side}, 2 refs, one process), MB at image", trace),
            (f"RSS growth from image {200 if n >= 200 else 1} to {n}", f"{growth:+.1f} MB (bound: < 50 MB)"),
            ("detect throughput in that loop", f"{n / elapsed:.1f} images/s"),
            ("feature cache after the loop", json.dumps(agent.runtime.feature_cache.stats()))]


def refs100(side: int, work: Path) -> list[tuple[str, str]]:
    refs = _write(work / "many" / "refs", range(200, 300), side)
    query = _write(work / "many" / "query", [100], side)[0]
    rows = []
    for label, extra in (("default cap (32 kept)", []), ("--max-references 100", ["--max-references", "100"])):
        home = work / f"home-refs-{len(extra)}"
        wall, peak, _ = _timed(["detect", str(query), "--refs", str(refs[0].parent), "--json", *extra], home)
        rows.append((f"`detect` with 100 refs {side}x{side}, {label}", f"{wall:.1f} s, peak RSS {peak:.0f} MB"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.everyday", description=__doc__.split("\n")[0])
    parser.add_argument("--detects", type=int, default=2000, help="detects in one process for the memory row")
    parser.add_argument("--side", type=int, default=256, help="image side for the bank and 100-refs rows")
    parser.add_argument("--small-side", type=int, default=64, help="image side for the memory row")
    parser.add_argument("--repeats", type=int, default=5, help="runs of --help / --version")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args(argv)
    work = temp_dir("bench-everyday-")
    rows: list[tuple[str, str]] = []
    todo = args.only or list(SECTIONS)
    if "startup" in todo:
        rows += startup(args.repeats, work)
    if "bank" in todo:
        rows += bank(args.side, work)
    if "refs100" in todo:
        rows += refs100(args.side, work)
    if "memory" in todo:
        rows += memory(args.detects, args.small_side, work)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    print("-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
