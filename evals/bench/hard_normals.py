"""What hard normals cost the survey's two scales: the second bank search that reports the score without them.

While false alarms the inspector marked normal are among the references (bank-only), each scale also scores
the query against the other references alone (`Evidence.hard_normals`). Per query, both scales
(`patch_knn`, `patch_knn_fine`, each a whole tool call as the survey makes it) are timed warm, in turn, with
three reference sets: the first `--refs` training normals; those plus `--hard` more marked as hard normals;
and the same references with none marked (the same bank, without the second search). Banks are built
before timing; the query's features are dropped before each set, so each pays the backbone pass as a run
does. Rows: median ms per query and the ratio to the first set, measured in one run (interleaved per query,
so drift on a shared machine hits all three).

Images: a realsets category when `--root` has it (default `../shared/data/realsets`, `magnetic_tile`), else
the synthetic `fabric` category.

Run: ``python -m evals.bench.hard_normals [--category magnetic_tile] [--queries 12]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _split(root: Path, category: str, n_train: int):
    """(source name, training normals, test image paths) of `category` under `root`, else synthetic fabric."""
    from evals.datasets import load_dataset

    if (root / category).is_dir():
        cat = next(c for c in load_dataset(root, layout="folder") if c.name == category)
        return f"realsets {category}", cat.train_good, [s.path for s in cat.test]
    from evals.synthetic import generate_dataset

    synth = Path(tempfile.mkdtemp(prefix="bench-hard-")) / "synth"
    generate_dataset(synth, seed=0, n_train=n_train, n_test=10)
    cat = next(c for c in load_dataset(synth, layout="folder") if c.name == "fabric")
    return "synthetic fabric", cat.train_good, [s.path for s in cat.test]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.hard_normals", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/realsets"))
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--refs", type=int, default=4, help="references that calibrate")
    parser.add_argument("--hard", type=int, default=2, help="hard normals added to them")
    parser.add_argument("--queries", type=int, default=12)
    args = parser.parse_args(argv)
    from evals.bench.patch_knn_protocol import _drop_query_features
    from evals.bench.tools import print_table
    from tools.base import ToolContext, ToolSettings
    from tools.images import ImageStore
    from tools.patch_knn import PatchKnn, PatchKnnFine

    source, train, tests = _split(args.root, args.category, args.refs + args.hard)
    store = ImageStore()
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", out_dir=Path(tempfile.mkdtemp(prefix="bench-hard-"))))
    refs = [store.add_file(str(p), prefix="ref") for p in sorted(train)[: args.refs + args.hard]]
    queries = [store.add_file(str(p), prefix="query") for p in tests[: args.queries]]
    sets = {f"{args.refs} references": (refs[: args.refs], set()),
            f"{args.refs} + {args.hard} hard normals": (refs, set(refs[args.refs:])),
            f"the same {args.refs + args.hard}, none marked": (refs, set())}
    scales = (PatchKnn(), PatchKnnFine())
    ms: dict[str, list[float]] = {name: [] for name in sets}
    for ids, hard in sets.values():  # build every bank before timing
        ctx.reference_ids, ctx.bank_only_ids = ids, hard
        for tool in scales:
            tool.run({"image_id": queries[0]}, ctx)
    for q in queries[1:]:
        for name, (ids, hard) in sets.items():
            ctx.reference_ids, ctx.bank_only_ids = ids, hard
            _drop_query_features(ctx)  # each set pays the query's backbone pass, as a run does
            t0 = time.perf_counter()
            for tool in scales:
                tool.run({"image_id": q}, ctx)  # as the survey runs it: score, map, summary
            ms[name].append((time.perf_counter() - t0) * 1000.0)
    first = statistics.median(next(iter(ms.values())))
    rows = [{"references": name, "median ms (both scales)": round(statistics.median(v), 1),
             "ratio": f"{statistics.median(v) / first:.2f}x"} for name, v in ms.items()]
    print_table(rows, f"hard normals' second search, {source}, {len(queries) - 1} warm queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
