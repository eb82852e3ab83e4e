"""P(label) from token log-probabilities in OpenAI's shape.

``message.response_metadata["logprobs"]`` is ``{"content": [{"token", "logprob", "top_logprobs":
[{"token", "logprob"}, ...]}, ...]}`` (OpenAI / vLLM). The transformers backend writes the same shape.
"""

from __future__ import annotations

import math
import re

from langchain_core.messages import AIMessage

# a JSON key ending in "label" ("label", "pred_label"), then the opening quote of its value
_LABEL_KEY = re.compile(r'"(?:[A-Za-z_]*label)"\s*:\s*"', re.IGNORECASE)
_STRIP = " \t\n\"'`:{}"
VERDICT_LABELS = ("anomalous", "normal", "uncertain")
UNCERTAIN_SHARE = 0.5  # the part of P(uncertain) that counts as P(anomalous)


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


def label_distribution(message: AIMessage, labels: tuple[str, ...] = VERDICT_LABELS) -> dict[str, float] | None:
    """P(label) for each of `labels` at the label's first token, normalised over the labels.

    The top alternatives at the token where the label value starts (at least two distinct tokens:
    the sampled token alone says nothing about the others) are matched to the label they are a prefix of (case- and space-insensitive, quotes ignored); a token that is a prefix of
    several labels (or of none) is not counted. Each label's probabilities are summed, then divided
    by the total over all labels.

    Returns:
        {label: probability} summing to 1, or None when the message has no logprobs, no label
        token, a single alternative at it, or no alternative that matches a label.
    """
    entries = token_entries(message)
    if entries is None:
        return None
    labels = tuple(label.lower() for label in labels)
    tokens = [str(e.get("token", "")) for e in entries]
    index = _value_start_index(tokens, labels)
    if index is None:
        return None
    entry = entries[index]
    alternatives = list(entry.get("top_logprobs") or [])
    if not any(a.get("token") == entry.get("token") for a in alternatives):
        alternatives.append({"token": entry.get("token", ""), "logprob": entry.get("logprob")})
    if len({str(a.get("token", "")) for a in alternatives}) < 2:
        return None  # only the sampled token: nothing is known about the other labels
    mass = dict.fromkeys(labels, 0.0)
    for alt in alternatives:
        n = _norm(str(alt.get("token", "")))
        lp = alt.get("logprob")
        if not n or lp is None or not math.isfinite(float(lp)):
            continue
        matches = [label for label in labels if label.startswith(n)]
        if len(matches) == 1:
            mass[matches[0]] += math.exp(float(lp))
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {label: m / total for label, m in mass.items()}


def anomaly_probability(distribution: dict[str, float]) -> float:
    """P(anomalous) of a verdict-label distribution: ``P(a) + UNCERTAIN_SHARE * P(u)`` (share 0.5).

    "uncertain" is evidence for neither side, so its mass is split evenly instead of being dropped:
    "uncertain" at 0.98 with anomalous 0.015 and normal 0.005 gives 0.505, not 0.75.
    """
    return distribution.get("anomalous", 0.0) + UNCERTAIN_SHARE * distribution.get("uncertain", 0.0)


def label_probability(
    message: AIMessage, positive: str = "anomalous", negative: str = "normal"
) -> float | None:
    """P(positive) / (P(positive) + P(negative)) at the label's first token (a two-way answer,
    e.g. the direct baseline's yes/no; verdicts use `label_distribution` over three labels).

    Returns:
        A probability in [0, 1], or None when the message has no logprobs, no label token, or no
        alternative that matches either label.
    """
    dist = label_distribution(message, (positive, negative))
    return None if dist is None else dist[positive.lower()]
