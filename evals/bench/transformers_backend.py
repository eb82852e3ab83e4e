"""In-process transformers backend: where the time of one call goes.

    python -m evals.bench.transformers_backend                       # tiny random VLMs, CPU
    python -m evals.bench.transformers_backend --model PATH_OR_ID --device cuda --max-new-tokens 32

Per call, for 0, 1 and 4 images of 1024x1024 px (downscaled to ``image_max_side``): the median over
`--repeats` warm calls of the total (``invoke``), and of its parts from the message's
``response_metadata["timings_ms"]``: render (message conversion, image decoding, chat template),
processor (tokenizer + image processor), generate, parse. Without ``--model`` the tiny random
checkpoints of ``evals/tiny_vlms.py`` are built in a temp folder: their generate time says nothing
about a real model, but render/processor/parse are the backend's own overhead at full image size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tools.tempdirs import temp_dir

PARTS = ("render", "processor", "generate", "parse")


def _images(n: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def _bench(model, n_images: int, side: int, repeats: int) -> dict[str, float]:
    from langchain_core.messages import HumanMessage, SystemMessage

    from agent.backends.messages import human_message

    messages = [
        SystemMessage("You inspect industrial parts. Answer normal or anomalous."),
        human_message("Is this part normal?", _images(n_images, side)) if n_images else HumanMessage("Is it normal?"),
    ]
    model.invoke(messages)  # warm-up
    rows: dict[str, list[float]] = {k: [] for k in ("total", *PARTS, "input_tokens")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        reply = model.invoke(messages)
        rows["total"].append((time.perf_counter() - t0) * 1000)
        for part in PARTS:
            rows[part].append(reply.response_metadata["timings_ms"][part])
        rows["input_tokens"].append(reply.usage_metadata["input_tokens"])
    return {k: statistics.median(v) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local folder or HF id (default: tiny random VLMs)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", type=int, default=1024, help="test image side, pixels")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from agent.backends.transformers_backend import TransformersChatModel
    from agent.config import AgentConfig

    torch.set_num_threads(args.threads)
    if args.model:
        models = {args.model: args.model}
    else:
        from evals.tiny_vlms import (  # ships with the package (not in tests/)
            FAMILIES,
            build_tiny_vlm,
        )

        root = temp_dir("bench-tiny-vlms-")
        models = {f"tiny {f}": str(build_tiny_vlm(f, root / f)) for f in FAMILIES}

    header = f"{'model':<18} {'images':>6} {'in_tok':>6} {'total':>8} " + " ".join(f"{p:>9}" for p in PARTS)
    print(f"median ms over {args.repeats} warm calls, images {args.side}x{args.side} px, "
          f"max_new_tokens {args.max_new_tokens}, device {args.device}, {args.threads} threads")
    print(header)
    print("-" * len(header))
    for label, path in models.items():
        config = AgentConfig(local_model=path, device=args.device, dtype=args.dtype)
        t0 = time.perf_counter()
        model = TransformersChatModel.from_config(config, max_new_tokens=args.max_new_tokens)
        load_ms = (time.perf_counter() - t0) * 1000
        for n in (0, 1, 4):
            r = _bench(model, n, args.side, args.repeats)
            parts = " ".join(f"{r[p]:>9.1f}" for p in PARTS)
            print(f"{label:<18} {n:>6} {int(r['input_tokens']):>6} {r['total']:>8.1f} {parts}")
        print(f"{label:<18} load {load_ms:.0f} ms")


if __name__ == "__main__":
    main()
