"""Chat turns without a model: answer what the measurements can answer, and say what needs a model.

Questions are sorted by keywords (English): a request to zoom or look closer ("zoom into the top
left", "look closer at the centre") runs the `zoom` tool on that part of the image, saves the crop
and says which of the verdict's regions lie there; "where" lists the regions; "how sure / score"
gives the score, the threshold and each tool's score; "why / explain" gives the explanation; "is it
ok / anomalous?" the verdict with it; anything else the verdict in one line, what can be asked, and how
to enable free-form answers.
"""

from __future__ import annotations

import re
from pathlib import Path

AREAS = {  # words -> (x0, y0, x1, y1) as fractions of the width and height
    ("top", "left"): (0.0, 0.0, 0.5, 0.5), ("top", "right"): (0.5, 0.0, 1.0, 0.5),
    ("bottom", "left"): (0.0, 0.5, 0.5, 1.0), ("bottom", "right"): (0.5, 0.5, 1.0, 1.0),
    ("top",): (0.0, 0.0, 1.0, 0.5), ("bottom",): (0.0, 0.5, 1.0, 1.0),
    ("left",): (0.0, 0.0, 0.5, 1.0), ("right",): (0.5, 0.0, 1.0, 1.0),
    ("centre",): (0.25, 0.25, 0.75, 0.75),
}
SYNONYMS = {"upper": "top", "lower": "bottom", "center": "centre", "middle": "centre", "central": "centre"}
ZOOM_WORDS = ("zoom", "closer", "enlarge", "magnify", "look at", "show me", "crop", "inspect")
HELP = ("Without a model I answer from the measurements: ask \"where is the defect?\", \"how sure are you?\", "
        "\"why?\", or \"zoom into the top left\" (or top, bottom, left, right, centre, or \"zoom into the "
        "defect\"). For free-form questions configure a model (--base-url / --backend).")


def _words(text: str) -> list[str]:
    return [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]


def area_of(question: str) -> tuple[str, tuple[float, float, float, float]] | None:
    """The named part of the image ("top left", "centre", ...) as (name, fractional box), or None."""
    words = set(_words(question))
    vert = next((w for w in ("top", "bottom") if w in words), None)
    horiz = next((w for w in ("left", "right") if w in words), None)
    key = tuple(w for w in (vert, horiz) if w) or (("centre",) if "centre" in words else ())
    if not key:
        return None
    return " ".join(key), AREAS[key]


def _intent(question: str) -> str:
    text = question.lower()
    words = set(_words(question))
    if any(w in text for w in ZOOM_WORDS):
        return "zoom"
    if words & {"where", "region", "regions", "location", "located", "box", "boxes"}:
        return "where"
    if words & {"sure", "confident", "confidence", "score", "scores", "probability", "certain", "likely"}:
        return "score"
    if words & {"why", "explain", "reason", "because", "evidence"}:
        return "why"
    if words & {"ok", "okay", "normal", "anomalous", "anomaly", "defect", "defective", "wrong", "good", "fine",
                "broken", "damaged", "verdict", "problem", "faulty"}:
        return "verdict"
    return "help"


def _where(verdict: dict, width: int, height: int) -> str:
    from tools.patch_knn import _position_words

    regions = verdict.get("regions") or []
    if not regions:
        return f"No region was marked: the image was judged {verdict.get('pred_label')} as a whole."
    parts = [f"{_position_words(tuple(r['bbox_xyxy']), width, height)} {list(r['bbox_xyxy'])}"
             + (f" ({r['label']})" if r.get("label") else "") for r in regions]
    return f"{len(regions)} region(s) of the {width}x{height} image: " + "; ".join(parts) + "."


def _score(verdict: dict) -> str:
    tools = [f"{e['tool']} {e['score']:.2f}" for e in verdict.get("evidence") or [] if e.get("score") is not None]
    return (f"Score {verdict.get('pred_score', 0):.3f} against the threshold {verdict.get('threshold', 0.5):.2f} "
            f"({verdict.get('pred_label')}, from {verdict.get('score_source')})"
            + (f"; tool scores: {', '.join(tools)}." if tools else "."))


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _zoom(question: str, verdict: dict, rt, res, query_id: str) -> tuple[str, dict | None]:
    img = res.images.get(query_id)
    w, h = img.width, img.height
    named = area_of(question)
    regions = verdict.get("regions") or []
    if named is not None:
        name, (fx0, fy0, fx1, fy1) = named
        box = [round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h)]
        margin = 0.0
    elif regions:
        name, box, margin = "strongest region", list(regions[0]["bbox_xyxy"]), 0.5
    else:
        name, box, margin = "centre", [w // 4, h // 4, 3 * w // 4, 3 * h // 4], 0.0
    ev = rt.run_tool("zoom", {"box": box, "margin": margin}, res)
    crop_id = ev.image_ids[0]
    crop = res.images.get(crop_id)
    path = Path(res.ctx.out_dir) / f"{crop_id}.png"
    from PIL import Image

    Image.fromarray(crop.pixels).save(path)
    inside = [r for r in regions if _overlap(r["bbox_xyxy"], box)]
    if inside:
        found = "; ".join(f"{list(r['bbox_xyxy'])}" + (f" ({r['label']})" if r.get("label") else "") for r in inside)
        seen = f"{len(inside)} of the verdict's {len(regions)} region(s) lie there: {found}."
    elif regions:
        seen = f"None of the verdict's {len(regions)} region(s) lies there."
    else:
        seen = "The verdict marked no region."
    text = (f"Zoomed into the {name} of the {w}x{h} image (box {box}): {crop.width}x{crop.height} px, saved as "
            f"{path}. {seen} Judging the crop by eye needs a model (--base-url / --backend).")
    return text, ev.model_dump(mode="json")


def offline_answer(question: str, verdict: dict, rt, res, query_id: str) -> tuple[str, dict | None]:
    """(The answer, the evidence of a tool it ran or None) for one question without a model."""
    intent = _intent(question)
    img = res.images.get(query_id)
    if intent == "zoom":
        return _zoom(question, verdict, rt, res, query_id)
    if intent == "where":
        return _where(verdict, img.width, img.height), None
    if intent == "score":
        return _score(verdict), None
    if intent == "why":
        return verdict.get("explanation", ""), None
    if intent == "verdict":
        return f"It is {verdict.get('pred_label')} (score {verdict.get('pred_score', 0):.2f}). " \
               f"{verdict.get('explanation', '')}", None
    return f"The verdict: {verdict.get('pred_label')} (score {verdict.get('pred_score', 0):.2f}). {HELP}", None
