"""Agent benchmarks (issue 5). Prints two tables; run `python -m evals.bench.agent [--repeats N]`.

1. Orchestration overhead per graph step, with a zero-latency scripted model: the wall time of a
   detect run minus the time inside tools, divided by the number of graph steps. Goal <= 20 ms.
2. Warm tools-only `detect` latency per image against the bare backbone forward on the same image
   at the size patch_knn feeds it, as a ratio. Goal <= 1.5x.

Medians over repeats measured in one run; the machine is shared, so compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

REALSETS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "realsets"


def _texture(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = 140 + 20 * np.sin(np.arange(size) / 4.0)[None, :] + rng.normal(0, 8, (size, size))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _images(tmp: Path, size: int) -> tuple[Path, list[Path]]:
    """A query and 4 references: realsets elpv_mono when present (resized to size), else textures."""
    folder = REALSETS / "elpv_mono" / "train" / "good"
    sources = sorted(folder.glob("*.png"))[:5] if folder.exists() else []
    paths = []
    for i in range(5):
        if sources:
            img = Image.open(sources[i]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        else:
            img = Image.fromarray(_texture(size, i))
        path = tmp / f"img{i}.png"
        img.save(path)
        paths.append(path)
    return paths[0], paths[1:]


def orchestration(repeats: int, tool_turns: int, size: int, tmp: Path) -> dict:
    from agent.api import AnomalyAgent
    from agent.backends.factory import build_backend
    from agent.config import load_config

    query, _ = _images(tmp, size)
    script = [{"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [0, 0, 64, 64]}, "id": f"z{i}"}]}
              for i in range(tool_turns)]
    script += [{"content": "Looks normal."},
               {"content": '{"label": "normal", "defect_type": null, "regions": [], "explanation": "zoom shows nothing."}'}]
    cfg = load_config(backend="scripted", memory_path=tmp / "no-memory", threads=2,
                      max_model_calls=tool_turns + 4, max_tool_calls=tool_turns + 2)
    steps = 4 + (tool_turns + 1) + tool_turns + 1  # intake, memory, survey, fuse + model turns + tools + decide
    per_step, totals = [], []
    for i in range(repeats + 1):
        backend = build_backend(cfg, script=script)
        agent = AnomalyAgent(cfg, backend=backend)
        start = time.perf_counter()
        v = agent.detect(query, category="bench")
        total_ms = (time.perf_counter() - start) * 1000.0
        assert v.status == "ok", v.error
        tool_ms = sum(e.elapsed_ms for e in v.evidence)
        if i:  # the first run warms imports and caches
            per_step.append((total_ms - tool_ms) / steps)
            totals.append(total_ms)
    return {"steps": steps, "tool_turns": tool_turns, "total_ms": statistics.median(totals),
            "overhead_per_step_ms": statistics.median(per_step)}


def detect_vs_backbone(repeats: int, size: int, tmp: Path) -> dict:
    import torch

    from agent.api import AnomalyAgent
    from agent.config import load_config
    from tools.backbones import get_backbone
    from tools.images import load_image
    from tools.patch_knn import PatchKnnConfig, working_size

    torch.set_num_threads(2)
    query, refs = _images(tmp, size)
    cfg = load_config(backend="none", memory_path=tmp / "no-memory", threads=2)
    agent = AnomalyAgent(cfg)
    for _ in range(2):
        agent.detect(query, category="bench", references=refs)  # warm: weights, reference bank
    detect_ms, knn_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        v = agent.detect(query, category="bench", references=refs)
        detect_ms.append((time.perf_counter() - start) * 1000.0)
        knn_ms.append(v.evidence[0].elapsed_ms)
    pixels = load_image(query)
    backbone = get_backbone(cfg.backbone, cfg.tool_settings())
    work = working_size(size, size, PatchKnnConfig(), ref_long_side=size)
    forward_ms = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            backbone.feature_maps(backbone.to_tensor(pixels, size=work))
            if i:
                forward_ms.append((time.perf_counter() - start) * 1000.0)
    fwd = statistics.median(forward_ms)
    return {"size": size, "work": work, "forward_ms": fwd, "patch_knn_ms": statistics.median(knn_ms),
            "detect_ms": statistics.median(detect_ms), "ratio": statistics.median(detect_ms) / fwd}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = Table("tool turns", "graph steps", "median run ms", "overhead / step ms (goal <= 20)",
                      title="Orchestration overhead, zero-latency scripted model (zoom tool time excluded)")
        for turns in (1, 5):
            r = orchestration(args.repeats, turns, 512, tmp)
            table.add_row(str(turns), str(r["steps"]), f"{r['total_ms']:.1f}", f"{r['overhead_per_step_ms']:.2f}")
        console.print(table)
        table = Table("image px", "backbone input", "backbone forward ms", "patch_knn ms", "detect ms",
                      "detect / forward (goal <= 1.5)", title="Warm tools-only detect vs bare backbone forward (k = 4)")
        for size in args.sizes:
            r = detect_vs_backbone(args.repeats, size, tmp)
            table.add_row(str(size), f"{r['work'][1]}x{r['work'][0]}", f"{r['forward_ms']:.1f}",
                          f"{r['patch_knn_ms']:.1f}", f"{r['detect_ms']:.1f}", f"{r['ratio']:.2f}")
        console.print(table)


if __name__ == "__main__":
    main()
