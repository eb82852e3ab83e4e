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


def _value_start_index(tokens: list[str], positive: str, negative: str) -> int | None:
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
        if n and (positive.startswith(n) or negative.startswith(n)):
            return i
    return None


def label_probability(
    message: AIMessage, positive: str = "anomalous", negative: str = "normal"
) -> float | None:
    """P(positive) / (P(positive) + P(negative)) at the label's first token.

    The top alternatives at the token where the label value starts are split into tokens that are a
    prefix of `positive` and tokens that are a prefix of `negative` (case- and space-insensitive,
    quotes ignored); each side's probabilities are summed.

    Returns:
        A probability in [0, 1], or None when the message has no logprobs, no label token, or no
        alternative that matches either label.
    """
    entries = token_entries(message)
    if entries is None:
        return None
    positive, negative = positive.lower(), negative.lower()
    tokens = [str(e.get("token", "")) for e in entries]
    index = _value_start_index(tokens, positive, negative)
    if index is None:
        return None
    entry = entries[index]
    alternatives = list(entry.get("top_logprobs") or [])
    if not any(a.get("token") == entry.get("token") for a in alternatives):
        alternatives.append({"token": entry.get("token", ""), "logprob": entry.get("logprob")})
    p_pos = p_neg = 0.0
    for alt in alternatives:
        n = _norm(str(alt.get("token", "")))
        lp = alt.get("logprob")
        if not n or lp is None or not math.isfinite(float(lp)):
            continue
        in_pos, in_neg = positive.startswith(n), negative.startswith(n)
        if in_pos and not in_neg:
            p_pos += math.exp(float(lp))
        elif in_neg and not in_pos:
            p_neg += math.exp(float(lp))
    if p_pos + p_neg <= 0.0:
        return None
    return p_pos / (p_pos + p_neg)
