"""`make demo`: synthesize a small set, import its references into a fresh memory, and judge a few
normal and anomalous test images with `--backend auto` (tools-only when no model is reachable).

Everything is written under ./demo_out (data/, memory/, overlays/). Run: `python -m evals.demo`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

OUT = Path("demo_out")
CATEGORIES = ("fabric", "tray")
PER_CATEGORY = (2, 2)  # normal, anomalous test images judged per category


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    console = Console(highlight=False)
    start = time.perf_counter()
    if OUT.exists():
        shutil.rmtree(OUT)

    from agent.api import AnomalyAgent
    from agent.commands.detect import print_verdict
    from agent.config import load_config
    from agent.overlays import write_verdict_overlay
    from evals.datasets import load_dataset
    from evals.synthetic import generate_dataset
    from memory.embed import default_embedder
    from memory.importer import import_tree
    from memory.store import open_store

    console.rule("1. synthesize a small MVTec-style set")
    summary = generate_dataset(OUT / "data", seed=0, categories=list(CATEGORIES), n_train=6, n_test=10)
    console.print(f"$ anomaly-agent synth {OUT / 'data'} --seed 0 --categories {' '.join(CATEGORIES)}")
    console.print(f"wrote {summary['n_images']} images and {summary['n_masks']} masks")

    console.rule("2. import its normal references into a fresh memory")
    config = load_config(memory_path=OUT / "memory", backend=os.environ.get("ANOMALY_AGENT_BACKEND", "auto"))
    store = open_store(config)
    embedder = default_embedder(config.tool_settings())
    report = import_tree(store, embedder, OUT / "data", categories=list(CATEGORIES))
    console.print(f"$ anomaly-agent memory import {OUT / 'data'} --memory {OUT / 'memory'}")
    console.print(f"memory: {json.dumps(store.stats())} (embeddings: {embedder.model_id}); "
                  f"{report.added} added")

    console.rule("3. detect with --backend auto, references from memory")
    agent = AnomalyAgent.from_config(config)
    console.print(f"backend: {agent.backend.name} — {agent.backend_note}")
    table = Table("image", "truth", "verdict", "score", "region")
    correct = total = 0
    for category in load_dataset(OUT / "data", categories=list(CATEGORIES)):
        normals = [s for s in category.test if s.label == 0][: PER_CATEGORY[0]]
        anomalies = [s for s in category.test if s.label == 1][: PER_CATEGORY[1]]
        for sample in normals + anomalies:
            console.print(f"$ anomaly-agent detect {sample.path} --category {category.name} --refs memory")
            verdict = agent.detect(sample.path, category=category.name, references="memory")
            overlay = None
            if verdict.status == "ok":
                overlay = write_verdict_overlay(verdict, sample.path, OUT / "overlays" / f"{category.name}_{sample.defect_type}_{Path(sample.path).stem}.png")
            print_verdict(verdict, overlay)
            truth = "anomalous" if sample.label else "normal"
            total += 1
            correct += int(verdict.pred_label == truth)
            region = str(tuple(verdict.regions[0].bbox_xyxy)) if verdict.regions else "-"
            score = f"{verdict.pred_score:.3f}" if verdict.pred_score is not None else verdict.error
            table.add_row(f"{category.name}/{sample.defect_type}/{Path(sample.path).name}", truth,
                          verdict.pred_label or "error", score, region)

    console.rule("summary")
    console.print(table)
    console.print(f"{correct}/{total} verdicts match the ground truth; overlays in {OUT / 'overlays'}; "
                  f"{time.perf_counter() - start:.1f} s in all.")
    console.print("Next: `anomaly-agent eval ROOT --shots 4 --backend none` for metrics, "
                  "`anomaly-agent doctor` to see which models are available.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
