"""`python -m evals.gpu_check MODEL` (`make gpu-check`): does the model path work on this GPU machine?

Starts ``anomaly-agent serve-model MODEL`` (a Hugging Face id or a local path; vLLM must be on PATH,
installed in its own environment), waits until ``GET /v1/models`` serves the model, then runs
``eval`` three times on one small dataset (the synthetic one unless ``--data`` is given):

1. the agent with ``--backend openai`` (tools, memory, the model, fusion);
2. the tools-only baseline ``--backend none`` (the bar every model configuration must clear);
3. the MMAD-style ``--baseline direct`` (one yes/no prompt, no tools) on the same server;

and writes one compare report (``report RUN --compare ...``: the agent's run with deltas to both
baselines). It stops the server at the end. With ``--base-url`` it uses a server that is already
running and starts nothing (this is how the test suite runs it, against `evals.fakeserver`).

The image set is fixed and named (`NAMED_SET`, "synthetic-gc1": the synthetic generator with seed 0,
categories fabric and tray, 100 test images each, 256 px); ``--data`` or smaller ``--n-test`` /
``--limit`` values run another set, and the output says so. Then the quality gate
(`evals.quality_gate`) compares the agent's run with tools-only image by image and fails when the
model configuration's mean image AUROC is below tools-only by more than the bootstrap 95% interval of
the difference, or when any model verdict lacks log-probabilities (``score_source`` not
``logprobs``). The table (each run's AUROC and score sources, and the difference with its interval) is
printed whether the gate passes or fails.

Exit codes: 0 every run finished, no item failed and the quality gate passed; 1 an eval failed or
items failed (listed); 2 bad arguments; 3 the server did not start or does not serve the model;
4 the quality gate failed (the reasons are printed under the table).

Output (``--out``, default ``runs/gpu-check``): ``data/`` (the synthetic set), ``openai/``,
``none/``, ``direct/`` (run directories), ``serve-model.log`` and the compare report
``openai/report.html``, whose path is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
POLL_S = 2.0
QUALITY_FAILED = 4
# the fixed image set the check is judged on: at least 100 test images per category
NAMED_SET = {"name": "synthetic-gc1", "seed": 0, "categories": "fabric,tray", "n_train": 8, "n_test": 100, "size": 256}


class CheckError(RuntimeError):
    """A step of the check failed; `code` is the exit code, the message names the cause and the fix."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def start_server(model: str, port: int, log_path: Path, extra: list[str]) -> subprocess.Popen:
    """``anomaly-agent serve-model MODEL --port PORT [-- extra]`` in its own process group, output to `log_path`."""
    cmd = [sys.executable, "-m", "agent", "serve-model", model, "--port", str(port), "--host", "127.0.0.1"]
    if extra:
        cmd += ["--", *extra]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_until_serving(base_url: str, model: str | None, timeout_s: float,
                       proc: subprocess.Popen | None = None, log_path: Path | None = None) -> str:
    """Poll ``GET {base_url}/models`` until it lists `model` (or any model when None); returns the id.

    Raises:
        CheckError: the server process exited, or `timeout_s` passed (code 3).
    """
    from agent.backends.endpoint import probe_endpoint

    deadline = time.monotonic() + timeout_s
    detail = ""
    while True:
        models, detail = probe_endpoint(base_url, timeout=5.0)
        if models and (model is None or model in models):
            return model or models[0]
        if models is not None:
            detail = f"{base_url} serves {', '.join(models) or 'nothing'}, not {model!r}"
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-2000:] if log_path and log_path.exists() else ""
            msg = f"serve-model exited with code {proc.returncode} before serving {model}. Its log ends:\n{tail}"
            raise CheckError(msg, 3)
        if time.monotonic() > deadline:
            msg = (f"{base_url} did not serve {model or 'a model'} within {timeout_s:g} s ({detail}). Fix: check "
                   f"{log_path or 'the server log'}, or raise --start-timeout (loading weights can take minutes)")
            raise CheckError(msg, 3)
        time.sleep(POLL_S)


def make_data(out: Path, categories: list[str], n_train: int, n_test: int, size: int) -> Path:
    from evals.synthetic import generate_dataset

    generate_dataset(out, seed=NAMED_SET["seed"], categories=categories, n_train=n_train, n_test=n_test, size=size)
    return out


def set_name(args: argparse.Namespace) -> str:
    """The named set's name when the arguments generate exactly it, else what they generate instead."""
    if args.data:
        return f"custom set {args.data}"
    chosen = {"categories": args.categories, "n_train": args.n_train, "n_test": args.n_test, "size": args.size}
    named = {k: NAMED_SET[k] for k in chosen}
    if chosen == named and args.limit is None:
        return f"{NAMED_SET['name']} ({NAMED_SET['n_test']} test images per category of {NAMED_SET['categories']})"
    shown = ", ".join(f"{k} {v}" for k, v in chosen.items()) + (f", limit {args.limit}" if args.limit else "")
    return f"NOT the named set {NAMED_SET['name']}: synthetic seed {NAMED_SET['seed']}, {shown}"


def run_cli(argv: list[str]) -> int:
    from agent.cli import main

    print(f"$ anomaly-agent {' '.join(argv)}", file=sys.stderr, flush=True)
    return main(argv)


def failed_items(run_dir: Path) -> list[str]:
    """'image: error' for every failed record in a run's results.jsonl."""
    from evals.results import iter_records

    path = run_dir / "results.jsonl"
    if not path.exists():
        return [f"{run_dir}: no results.jsonl"]
    return [f"{r.get('image')}: {r.get('error')}" for r in iter_records(path) if r.get("status") == "error"]


def run_evals(data: Path, out: Path, base_url: str, model: str, shots: int, limit: int | None) -> dict[str, Path]:
    """The three evals (agent on the server, tools only, direct baseline); returns their run directories.

    Raises:
        CheckError: an eval exited non-zero or recorded failed items.
    """
    common = [str(data), "--shots", str(shots), "--no-progress", "--no-report", "--concurrency", "2"]
    if limit is not None:
        common += ["--limit", str(limit)]
    server = ["--backend", "openai", "--base-url", base_url, "--model", model]
    runs = {
        "openai": [*server],
        "none": ["--backend", "none"],
        "direct": ["--baseline", "direct", *server],
    }
    dirs = {}
    for name, flags in runs.items():
        run_dir = out / name
        code = run_cli(["eval", *common, *flags, "--out", str(run_dir), "--resume"])
        if code != 0:
            msg = f"eval {name} exited with code {code}; see the messages above and {run_dir}"
            raise CheckError(msg)
        failures = failed_items(run_dir)
        if failures:
            shown = "\n  ".join(failures[:10])
            msg = f"eval {name}: {len(failures)} item(s) failed:\n  {shown}"
            raise CheckError(msg)
        dirs[name] = run_dir
    return dirs


def compare_report(dirs: dict[str, Path]) -> Path:
    """``report openai --compare none --compare direct``; returns the report.html path."""
    code = run_cli(["report", str(dirs["openai"]), "--compare", str(dirs["none"]), "--compare", str(dirs["direct"])])
    html = dirs["openai"] / "report.html"
    if code != 0 or not html.exists():
        msg = f"report exited with code {code}; no {html}"
        raise CheckError(msg)
    return html


def summary(dirs: dict[str, Path]) -> dict[str, dict]:
    """Each run's backend, served model, mean image AUROC (from metrics.json) and score sources."""
    from evals.quality_gate import score_sources

    out = {}
    for name, run_dir in dirs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        mean = metrics.get("mean") or {}
        out[name] = {"backend": metrics.get("backend"), "served_model": metrics.get("served_model"),
                     "image_auroc": mean.get("auroc"), "score_sources": dict(score_sources(run_dir))}
    return out


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m evals.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None,
                        help=f"HF model id or local path to serve (default {DEFAULT_MODEL}; with --base-url: "
                        "the id the server serves, default its first)")
    parser.add_argument("--base-url", help="use this running server; start nothing")
    parser.add_argument("--port", type=int, default=8000, help="port for serve-model")
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="seconds to wait for the server")
    parser.add_argument("--data", type=Path, help="dataset root (default: a small synthetic set under --out)")
    parser.add_argument("--categories", default=NAMED_SET["categories"],
                        help="synthetic categories (comma-separated; another value leaves the named set)")
    parser.add_argument("--n-train", type=int, default=NAMED_SET["n_train"])
    parser.add_argument("--n-test", type=int, default=NAMED_SET["n_test"],
                        help=f"synthetic test images per category (the named set has {NAMED_SET['n_test']})")
    parser.add_argument("--size", type=int, default=NAMED_SET["size"], help="synthetic image side, px")
    parser.add_argument("--bootstrap", type=int, default=1000, help="replicates for the AUROC difference's interval")
    parser.add_argument("--shots", type=int, default=2, help="normal references per query")
    parser.add_argument("--limit", type=int, default=None, help="test images per category")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    log_path = out / "serve-model.log"
    try:
        if args.base_url:
            base_url = args.base_url.rstrip("/")
            model = wait_until_serving(base_url, args.model, min(args.start_timeout, 30.0))
        else:
            model = args.model or DEFAULT_MODEL
            base_url = f"http://127.0.0.1:{args.port}/v1"
            print(f"starting serve-model {model} on port {args.port} (log: {log_path})", file=sys.stderr, flush=True)
            proc = start_server(model, args.port, log_path, extra)
            wait_until_serving(base_url, model, args.start_timeout, proc, log_path)
        print(f"{base_url} serves {model}", file=sys.stderr, flush=True)
        print(f"image set: {set_name(args)}", file=sys.stderr, flush=True)
        data = args.data or make_data(out / "data", args.categories.split(","), args.n_train, args.n_test, args.size)
        dirs = run_evals(data, out, base_url, model, args.shots, args.limit)
        html = compare_report(dirs)
    except CheckError as exc:
        print(f"gpu-check failed: {exc}", file=sys.stderr)
        return exc.code
    finally:
        stop_server(proc)
    from evals.quality_gate import check_quality, quality_table

    diff, problems = check_quality(dirs["openai"], dirs["none"], n_boot=args.bootstrap)
    print(f"image set: {set_name(args)}")
    print(quality_table(summary(dirs), diff))
    if problems:
        for problem in problems:
            print(f"quality: {problem}")
        print(f"gpu-check failed on quality ({len(problems)} problem(s)). compare report: {html}")
        return QUALITY_FAILED
    print(f"gpu-check passed. compare report: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
