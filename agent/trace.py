"""Save a run as JSON: messages, tool calls, tool outputs (maps copied as PNG), timings, usage, verdict.

`--backend scripted --script TRACE.json` replays the model's turns of a saved trace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from langchain_core.messages import messages_to_dict

from agent.schemas import Verdict

TRACE_VERSION = 1


def write_trace(trace_dir: Path, run_id: str, state: dict, verdict: Verdict) -> Path:
    """Write `<trace_dir>/<image stem>-<run_id>.json` (+ `maps/`); returns the JSON path."""
    trace_dir = Path(trace_dir)
    maps_dir = trace_dir / "maps"
    stem = Path(verdict.image).stem if verdict.image else "image"
    evidence = []
    for ev in verdict.evidence:
        item = ev.model_dump(mode="json")
        if ev.map_path and Path(ev.map_path).exists():
            maps_dir.mkdir(parents=True, exist_ok=True)
            target = maps_dir / f"{stem}-{run_id[:8]}-{len(evidence)}-{ev.tool}.png"
            shutil.copyfile(ev.map_path, target)
            item["map_path"] = str(target.relative_to(trace_dir))
        evidence.append(item)
    record = {
        "version": TRACE_VERSION,
        "run_id": run_id,
        "image": verdict.image,
        "category": verdict.category,
        "messages": messages_to_dict(state.get("messages", [])),
        "tool_calls": [
            {"name": c["name"], "args": c["args"], "id": c["id"]}
            for m in state.get("messages", []) for c in getattr(m, "tool_calls", []) or []
        ],
        "evidence": evidence,
        "model_answer": state.get("model_answer"),
        "images_dropped": state.get("image_drops", []),
        "timings": verdict.timings,
        "usage": verdict.usage.model_dump(),
        "verdict": verdict.model_dump(mode="json"),
    }
    trace_dir.mkdir(parents=True, exist_ok=True)
    path = trace_dir / f"{stem}-{run_id[:8]}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path
