"""The direct (MMAD-style) baseline: one MLLM prompt, yes/no, P(yes) from token log-probabilities.

The model sees the K normal references and the query in one message (``prompts/direct_baseline.yaml``)
and answers "Yes" (anomalous) or "No". No tools, no memory, one model call per image. The score is
P(yes) / (P(yes) + P(no)) at the answer token; a backend without log-probabilities falls back to the
answer itself (score 1.0 or 0.0, ``score_source="label"``).
"""

from __future__ import annotations

import asyncio
import time

from langchain_core.messages import HumanMessage, SystemMessage

from agent.backends.factory import Backend, build_backend
from agent.backends.logprobs import label_probability
from agent.config import AgentConfig
from agent.errors import ModelServerError, UserInputError
from agent.schemas import Usage, Verdict
from prompts import load_prompts
from tools.images import ImageInputError, image_content_block, load_image

PROMPT_SET = "direct_baseline"
TOP_LOGPROBS = 5
REF_CACHE = 256  # encoded reference images kept (data URLs, about 4/3 of the PNG size each)


class DirectBaseline:
    """A `evals.runner.Detector` that asks the model once per image (no tools, no memory)."""

    def __init__(self, config: AgentConfig, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend or build_backend(config)
        if self.backend.model is None:
            msg = f"--baseline direct needs a model, but the backend is {self.backend.name!r} ({self.backend.reason}). Fix: pass --backend openai --base-url URL or --backend transformers"
            raise UserInputError(msg)
        self.prompts = load_prompts(PROMPT_SET)
        self._ref_blocks: dict[str, dict] = {}

    def _block(self, path: str) -> dict:
        """The ``image_url`` block of one image (references are cached: the same K serve every query)."""
        block = self._ref_blocks.get(path)
        if block is None:
            block = image_content_block(load_image(path, self.config.max_image_pixels), self.config.image_max_side)
        return block

    def _messages(self, image: str, category: str | None, references: list[str]) -> list:
        ref_blocks = []
        for r in references:
            block = self._block(r)
            if len(self._ref_blocks) < REF_CACHE:
                self._ref_blocks[r] = block
            ref_blocks.append(block)
        text = self.prompts.render("user", category=category, n_references=len(references))
        content = [{"type": "text", "text": text}, *ref_blocks, self._block(image)]
        return [SystemMessage(content=self.prompts.render("system")), HumanMessage(content=content)]

    async def adetect(
        self, image: str, *, category: str | None = None, references: list[str] | None = None
    ) -> Verdict:
        """One yes/no call; bad input or a server failure comes back as an error verdict."""
        verdict = await self._adetect(image, category, references)
        verdict.backend, verdict.model_id = self.backend.name, self.backend.model_id
        return verdict

    async def _adetect(self, image: str, category: str | None, references: list[str] | None) -> Verdict:
        t0 = time.perf_counter()
        given = list(references or [])
        refs = given[: max(0, self.config.max_images_per_request - 1)]  # the query is one of the request's images
        try:
            messages = await asyncio.to_thread(self._messages, image, category, refs)
        except (ImageInputError, FileNotFoundError) as exc:
            return Verdict.failed(image, str(exc), category, kind="input")
        t1 = time.perf_counter()
        kwargs = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.backend.supports_logprobs else {}
        try:
            message = await self.backend.model.ainvoke(messages, **kwargs)
        except ModelServerError as exc:
            return Verdict.failed(image, str(exc), category, kind="model")
        except Exception as exc:  # noqa: BLE001 - one failed item must not stop a batch
            return Verdict.failed(image, f"internal error: {type(exc).__name__}: {exc}", category, kind="internal")
        t2 = time.perf_counter()
        answer = str(message.content if isinstance(message.content, str) else message.text).strip()
        p_yes = label_probability(message, positive="yes", negative="no")
        source = "logprobs"
        if p_yes is None:
            word = answer.lower().lstrip(" \"'*").split()[:1]
            if word and word[0].startswith("yes"):
                p_yes = 1.0
            elif word and word[0].startswith("no"):
                p_yes = 0.0
            else:
                msg = f"the model answered {answer[:80]!r}, neither Yes nor No"
                return Verdict.failed(image, msg, category, kind="model")
            source = "label"
        threshold = self.config.threshold
        usage_meta = getattr(message, "usage_metadata", None) or {}
        how = "from token log-probabilities" if source == "logprobs" else "from its answer (no log-probabilities)"
        return Verdict(
            image=image,
            category=category,
            pred_label="anomalous" if p_yes >= threshold else "normal",
            pred_score=float(min(1.0, max(0.0, p_yes))),
            threshold=threshold,
            score_source=source,
            explanation=(
                f"direct baseline: asked whether the image shows an anomaly with {len(refs)} normal "
                f"reference(s){'' if len(refs) == len(given) else f' (of {len(given)}: max_images_per_request)'}; the model answered {answer[:40]!r}, P(yes) = {p_yes:.3f} {how}."
            ),
            model_id=self.backend.model_id,
            prompt_hash=self.prompts.hash,
            usage=Usage(
                model_calls=1,
                prompt_tokens=int(usage_meta.get("input_tokens", 0)),
                completion_tokens=int(usage_meta.get("output_tokens", 0)),
            ),
            timings={"encode_ms": (t1 - t0) * 1000.0, "model_ms": (t2 - t1) * 1000.0},
        )
