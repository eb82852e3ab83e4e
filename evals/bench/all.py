"""Every benchmark in one run (`make bench`): each prints its own table; a failing one is reported
and the rest still run. The process exits 1 when any of them failed.

    python -m evals.bench.all            # all of them, default settings (tens of minutes on 2 cores)
    python -m evals.bench.all --quick    # smaller settings, a few minutes
    python -m evals.bench.all --only tools --only agent
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

# (module, arguments for a full run, arguments for --quick)
BENCHES: tuple[tuple[str, list[str], list[str]], ...] = (
    ("tools", [], ["--quick"]),
    ("patch_knn_protocol", [], ["--k", "4", "--draws", "1", "--latency-images", "4"]),
    ("agent", [], ["--repeats", "3"]),
    ("backend_overhead", [], ["--repeats", "5"]),
    ("memory", [], ["--n", "2000", "--queries", "100", "--no-server"]),
    ("runner_throughput", [], ["--concurrency", "1", "16", "--repeats", "1", "--mode", "thread"]),
    ("synth_metrics", [], ["--quick", "--repeats", "2"]),
    ("transformers_backend", [], ["--repeats", "2"]),
    ("serve", [], ["--duration", "10"]),
    ("scale", [], ["--items", "8", "--repeats", "1"]),
    ("everyday", [], ["--detects", "300", "--repeats", "3"]),
    ("lco_protocol", [], ["--category", "board", "--category", "fabric", "--draws", "1", "--tool", "parts_check"]),
    ("two_scales", [], ["--category", "board", "--category", "fabric", "--draws", "1"]),
    ("big_image", [], ["--side", "4000"]),
    ("hard_normals", [], ["--queries", "4"]),
    ("policy_cost", ["--n-train", "2", "--seed", "1"], ["--categories", "fabric", "--n-test", "4", "--n-train", "3"]),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.all", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings for every benchmark")
    parser.add_argument("--only", action="append", choices=[b[0] for b in BENCHES], help="run only these")
    args = parser.parse_args(argv)
    failed = []
    for name, full, quick in BENCHES:
        if args.only and name not in args.only:
            continue
        print(f"\n## evals.bench.{name}\n", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"evals.bench.{name}").main(quick if args.quick else full)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' tables
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
