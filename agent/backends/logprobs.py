"""P(label) from token log-probabilities in OpenAI's shape.

``message.response_metadata["logprobs"]`` is ``{"content": [{"token", "logprob", "top_logprobs":
[{"token", "logprob"}, ...]}, ...]}`` (OpenAI / vLLM). The transformers backend writes the same shape.

Probabilities are the absolute mass at the label's first token (`label_mass`), never renormalised over
the labels (issue 22): P(anomalous) = P(a) + 0.5 (1 - P(a) - P(n)) (`anomaly_probability`). When the
label tokens carry under `PARTIAL_COVERAGE` of the mass (`label_coverage`) the reading is weak
("logprobs-partial").
"""

from __future__ import annotations

import math
import re

from langchain_core.messages import AIMessage

# a JSON key ending in "label" ("label", "pred_label"), then the opening quote of its value
_LABEL_KEY = re.compile(r'"(?:[A-Za-z_]*label)"\s*:\s*"', re.IGNORECASE)
_STRIP = " \t\n\"'`:{}"
VERDICT_LABELS = ("anomalous", "normal", "uncertain")
UNCERTAIN_SHARE = 0.5  # the part of the mass on neither side that counts as P(anomalous)
PARTIAL_COVERAGE = 0.5  # label tokens carrying less than this share: the reading is "logprobs-partial"


def token_entries(message: AIMessage) -> list[dict] | None:
    """The per-token logprob entries of `message`, or None when it carries none."""
    lp = (message.response_metadata or {}).get("logprobs")
    if isinstance(lp, dict):
        lp = lp.get("content")
    if not isinstance(lp, list) or not lp:
        return None
    return lp


def _norm(token: str) -> str:
    return token.strip(_STRIP).lower()


def _value_start_index(tokens: list[str], labels: tuple[str, ...]) -> int | None:
    """Index of the token where the label's value starts."""
    text = "".join(tokens)
    match = _LABEL_KEY.search(text)
    if match is not None:
        start = match.end()
        pos = 0
        for i, tok in enumerate(tokens):
            end = pos + len(tok)
            # the first token that contains a character of the value
            if end > start and _norm(tok):
                return i
            pos = end
        return None
    # no JSON key: a bare answer such as "anomalous" or "Normal."
    for i, tok in enumerate(tokens):
        n = _norm(tok)
        if n and any(label.startswith(n) for label in labels):
            return i
    return None


def _label_alternatives(message: AIMessage, labels: tuple[str, ...]) -> list[dict] | None:
    """The top alternatives at the token where the label value starts (the sampled token included),
    or None when the message has no logprobs, no label token, or only the sampled token there (which
    says nothing about the other labels)."""
    entries = token_entries(message)
    if entries is None:
        return None
    tokens = [str(e.get("token", "")) for e in entries]
    index = _value_start_index(tokens, labels)
    if index is None:
        return None
    entry = entries[index]
    alternatives = list(entry.get("top_logprobs") or [])
    if not any(a.get("token") == entry.get("token") for a in alternatives):
        alternatives.append({"token": entry.get("token", ""), "logprob": entry.get("logprob")})
    if len({str(a.get("token", "")) for a in alternatives}) < 2:
        return None
    return alternatives


def label_mass(message: AIMessage, labels: tuple[str, ...] = VERDICT_LABELS) -> dict[str, float] | None:
    """The absolute probability of each of `labels` at the label's first token, not renormalised.

    The top alternatives there (at least two distinct tokens) are matched to the label they are a
    prefix of (case- and space-insensitive, quotes ignored); a token that is a prefix of several
    labels (or of none) is not counted. The masses sum to at most 1: what they leave is mass the
    server did not list (beyond ``top_logprobs``) or tokens that start no label.

    Returns:
        {label: probability}, or None when the message has no logprobs, no label token, a single
        alternative at it, or no alternative that matches a label.
    """
    labels = tuple(label.lower() for label in labels)
    alternatives = _label_alternatives(message, labels)
    if alternatives is None:
        return None
    mass = dict.fromkeys(labels, 0.0)
    for alt in alternatives:
        n = _norm(str(alt.get("token", "")))
        lp = alt.get("logprob")
        if not n or lp is None or not math.isfinite(float(lp)):
            continue
        matches = [label for label in labels if label.startswith(n)]
        if len(matches) == 1:
            mass[matches[0]] += math.exp(float(lp))
    if sum(mass.values()) <= 0.0:
        return None
    return {label: min(1.0, m) for label, m in mass.items()}


def label_distribution(message: AIMessage, labels: tuple[str, ...] = VERDICT_LABELS) -> dict[str, float] | None:
    """`label_mass` divided by its total (sums to 1). For display only: a score must come from the
    absolute mass (`anomaly_probability` of `label_mass`), or a real P(normal) of 0.6 with the rest
    spread over tokens that start no label reads as 1.0."""
    mass = label_mass(message, labels)
    if mass is None:
        return None
    total = sum(mass.values())
    return {label: m / total for label, m in mass.items()}


def anomaly_probability(mass: dict[str, float], positive: str = "anomalous", negative: str = "normal") -> float:
    """P(anomalous) from the absolute label mass: ``P(a) + UNCERTAIN_SHARE * (1 - P(a) - P(n))``.

    Whatever is not on either side ("uncertain", tokens that start no label, mass beyond the listed
    alternatives) is evidence for neither, so it is split evenly instead of being dropped or
    renormalised away: "uncertain" at 0.98 with anomalous 0.015 and normal 0.005 gives 0.505, and a
    P(normal) of 0.6 with nothing else listed gives 0.2, not 0.0.
    """
    a = min(1.0, max(0.0, mass.get(positive, 0.0)))
    n = min(1.0 - a, max(0.0, mass.get(negative, 0.0)))
    return a + UNCERTAIN_SHARE * (1.0 - a - n)


def label_coverage(mass: dict[str, float]) -> float:
    """The share of the probability at the label token that the labels carry (0..1)."""
    return min(1.0, sum(mass.values()))


def label_probability(
    message: AIMessage, positive: str = "anomalous", negative: str = "normal"
) -> float | None:
    """P(positive) of a two-way answer (e.g. the direct baseline's yes/no) from the absolute mass at
    the label's first token: ``P(pos) + 0.5 * (1 - P(pos) - P(neg))`` (see `anomaly_probability`);
    verdicts read `label_mass` over three labels.

    Returns:
        A probability in [0, 1], or None when the message has no logprobs, no label token, or no
        alternative that matches either label.
    """
    mass = label_mass(message, (positive, negative))
    return None if mass is None else anomaly_probability(mass, positive.lower(), negative.lower())
