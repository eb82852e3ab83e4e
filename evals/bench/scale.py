"""Throughput of `eval` on one machine against Ray with 1 and 2 workers (fake model server, latency L).

The agent (tools + model) judges N synthetic test images (fabric, 128 px, 2 shots) with a fake
OpenAI-compatible server in its own process answering every request after L seconds
(`evals.fakeserver --inspect`). Rows:

- ``local``: the local runner (`evals.runner.evaluate`), C items in flight in one process;
- ``ray xN``: the same runner driving `evals.ray_pool.RayPool` with N actors, C in flight each
  (a local Ray with 2 CPUs, started once; actors warm before timing).

Each row first judges 2 items (warm-up: weights, reference banks), then times N new ones (the run
directory's results are never reused). It also measures the constants of the README's throughput
model: the tools' time per item (``--backend none``, one item at a time) and the model calls per item.

Run: ``python -m evals.bench.scale [--items 16] [--latency 0.2] [--concurrency 4] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from agent.api import AnomalyAgent
from agent.config import load_config
from evals.bench.runner_throughput import _server
from evals.datasets import load_dataset
from evals.results import iter_records
from evals.runner import EvalSpec, evaluate
from evals.synthetic import generate_dataset

SIZE = 128
SHOTS = 2


def _timed(detector, root: Path, out: Path, n: int, concurrency: int, warm_detector=None) -> tuple[float, list[dict]]:
    """(items/s, records) of judging the first `n` test images after a 2-item warm-up.

    `warm_detector`: judges the warm-up instead (a local agent's model client belongs to the event
    loop of its first `evaluate`; the process-wide weights and caches it warms are shared).
    """
    cats = load_dataset(root)
    warm = EvalSpec(shots=SHOTS, limit=2)
    evaluate(warm_detector or detector, cats, warm, out / "warm", {"bench": "warm"}, {}, concurrency=concurrency,
             progress=False, n_boot=0)
    spec = EvalSpec(shots=SHOTS, limit=n)
    _, stats, _ = evaluate(detector, cats, spec, out / "timed", {"bench": "timed"}, {}, concurrency=concurrency,
                           progress=False, n_boot=0)
    recs = list(iter_records(out / "timed" / "results.jsonl"))
    bad = [r.get("error") for r in recs if r["status"] != "ok"]
    if bad or len(recs) != n:
        msg = f"benchmark run broken: {len(bad)} failed items ({bad[:1]}), {len(recs)} records for {n} items"
        raise RuntimeError(msg)
    return n / stats.elapsed_s, recs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="timed test images per row")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per model call")
    parser.add_argument("--concurrency", type=int, default=4, help="items in flight (per worker with Ray)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row (the median is shown)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "ds"
        generate_dataset(root, seed=0, categories=["fabric"], n_train=SHOTS, n_test=args.items + 2, size=SIZE)

        tools_agent = AnomalyAgent.from_config(backend="none", memory_path=tmp / "memory")
        rates = [_timed(tools_agent, root, tmp / f"tools{i}", min(args.items, 8), 1)[0] for i in range(args.repeats)]
        t_tools = 1.0 / statistics.median(rates)

        with _server("process", args.latency, inspect=True) as (url, _):
            cfg = load_config(backend="openai", base_url=url, model="fake-vlm", memory_path=tmp / "memory")
            rates = []
            for i in range(args.repeats):
                agent = AnomalyAgent.from_config(cfg)
                rate, recs = _timed(agent, root, tmp / f"local{i}", args.items, args.concurrency,
                                    warm_detector=AnomalyAgent.from_config(cfg))
                rates.append(rate)
            calls = statistics.mean(r["usage"]["model_calls"] for r in recs)
            rows.append(("local", 1, rates))
            if args.workers:
                from evals.ray_pool import RayPool, connect

                started = connect(None, max(2, max(args.workers)))
                try:
                    for n in args.workers:
                        with RayPool(cfg, workers=n, per_worker=args.concurrency, backend=agent.backend) as pool:
                            pool.start()
                            rates = [_timed(pool, root, tmp / f"ray{n}-{i}", args.items, n * args.concurrency)[0]
                                     for i in range(args.repeats)]
                        rows.append((f"ray x{n}", n, rates))
                finally:
                    if started:
                        import ray

                        ray.shutdown()
    t_model = calls * args.latency
    print(f"eval throughput: agent (tools + model) on {args.items} synthetic images ({SIZE} px, {SHOTS} shots), "
          f"fake server L = {args.latency * 1000:.0f} ms, C = {args.concurrency} in flight per worker, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}")
    print(f"constants: tools {t_tools:.3f} s/item (one at a time); {calls:.2f} model calls/item -> "
          f"model {t_model:.3f} s/item; latency-bound rate per worker C/(t_tools + t_model) = "
          f"{args.concurrency / (t_tools + t_model):.2f} items/s; tools-bound 1/t_tools = {1 / t_tools:.2f}")
    print(f"{'runner':>8} {'workers':>8} {'items/s':>9} {'min-max':>11} {'vs local':>9}")
    base = statistics.median(rows[0][2])
    for name, n, rates in rows:
        med = statistics.median(rates)
        print(f"{name:>8} {n:8d} {med:9.2f} {min(rates):5.2f}-{max(rates):<5.2f} {med / base:9.2f}")


if __name__ == "__main__":
    main()
