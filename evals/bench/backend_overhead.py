"""Client-side overhead of one openai-backend call, against the fake server at zero latency.

For 1 and 4 images of 1024x1024 px (PNG and JPEG) it times, median of repeats:
- encode: pixels -> ``image_url`` data-URL blocks (`human_message`, downscale + encode + base64);
- prepare: merging system messages and the image-size check (`OpenAIChatModel._prepare`);
- payload: LangChain's conversion of the messages into the request body;
- round trip: ``model.invoke`` end to end (HTTP to 127.0.0.1 included);
- server: the fake server's own time for that request (reading and parsing the body);
- client: round trip - server, i.e. what the client adds per call besides encoding.

Run: ``python -m evals.bench.backend_overhead [--repeats 15] [--image PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from langchain_core.messages import SystemMessage
from PIL import Image

from agent.backends.messages import human_message
from agent.backends.openai_backend import build_openai_model
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer

REPLY = '{"label": "normal", "confidence": 0.8, "explanation": "patch_knn 0.12 below threshold"}'


def photo_like(side: int, seed: int) -> np.ndarray:
    """A side x side x 3 uint8 image with smooth structure and sensor-like noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 3, (side, side, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _median_ms(repeats: int, fn, *args) -> tuple[float, object]:
    """(median wall ms of ``fn(*args)`` over `repeats` calls, the last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def _real(path: str, side: int) -> np.ndarray:
    """A real image, resized so its longer side is `side`."""
    from tools.images import load_image

    img = Image.fromarray(load_image(path))
    factor = side / max(img.size)
    return np.asarray(img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS))


def run(repeats: int = 15, side: int = 1024, image: str | None = None) -> list[dict]:
    rows = []
    with FakeOpenAIServer(default={"content": REPLY}, decode_images=False) as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model="fake-vlm", image_max_side=side))
        model.invoke("warm-up")
        for n_images in (1, 4):
            images = [_real(image, side) if image else photo_like(side, seed) for seed in range(n_images)]
            for fmt in ("PNG", "JPEG"):
                encode_ms, user = _median_ms(repeats, human_message, "Is this bottle anomalous?", images, side, fmt)
                messages = [SystemMessage("You inspect images for defects."), SystemMessage("category: bottle"), user]
                prepare_ms, prepared = _median_ms(repeats, model._prepare, messages)
                payload_ms, _ = _median_ms(repeats, model._get_request_payload, prepared)
                first = len(srv.requests)
                trip_ms, _ = _median_ms(repeats, model.invoke, messages)
                server_ms = statistics.median(r.handled_ms for r in srv.requests[first:])
                kb = sum(len(b["image_url"]["url"]) for b in user.content if b.get("type") == "image_url") / 1024
                rows.append({
                    "images": n_images, "format": fmt, "payload_kb": kb, "encode_ms": encode_ms,
                    "prepare_ms": prepare_ms, "payload_ms": payload_ms, "round_trip_ms": trip_ms,
                    "server_ms": server_ms, "client_ms": trip_ms - server_ms,
                    "total_client_ms": encode_ms + trip_ms - server_ms,
                })
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["images", "format", "payload_kb", "encode_ms", "prepare_ms", "payload_ms", "round_trip_ms",
            "server_ms", "client_ms", "total_client_ms"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="openai-backend client overhead per call (median ms)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--side", type=int, default=1024, help="image side, pixels")
    parser.add_argument("--image", help="use this real image (resized to --side) instead of a synthetic one")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    print_table(run(args.repeats, args.side, args.image))


if __name__ == "__main__":
    main()
