"""In-process chat model over Hugging Face ``AutoModelForImageTextToText`` + ``AutoProcessor``.

`TransformersChatModel` is a LangChain `BaseChatModel`: LangGraph's messages, `bind_tools`,
`ToolNode` and `with_structured_output` work with it as with any provider. One call:

1. LangChain messages -> the chat-template message list (system messages merged into one first;
   images from ``image_url`` / ``image`` content blocks decoded to PIL, in order; assistant tool
   calls and tool results included).
2. The processor's chat template renders the text, with the bound tools (``tools=``); the processor
   turns text + images into tensors.
3. ``generate`` (greedy unless ``temperature > 0``), with per-step logits when log-probabilities are
   requested.
4. The family's tool-call parser (`agent.backends.toolcall_parsers`) splits the text into content,
   ``tool_calls`` and ``invalid_tool_calls``.

Weights come from a local folder or the Hugging Face cache; nothing is downloaded unless
``allow_downloads`` is set. Default model: `DEFAULT_LOCAL_MODEL` (about 4.3 GB in bf16).
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from agent.backends.messages import merge_system_messages
from agent.backends.toolcall_parsers import ToolCallParser, get_parser, parser_for_model_type
from agent.errors import UserInputError
from tools.images import DEFAULT_MAX_PIXELS, ImageInputError, load_image

if TYPE_CHECKING:
    from PIL import Image

    from agent.config import AgentConfig

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_IGNORED_KWARGS = ("strict", "parallel_tool_calls", "ls_structured_output_format")


class LocalModelNotFoundError(UserInputError):
    """The in-process model's weights are not on this machine (and downloads are off)."""


class LocalModelLoadError(UserInputError):
    """The weights were found but transformers could not load them (wrong kind of model, broken files)."""


# ---------------------------------------------------------------------------------------- weights


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()
    )


def _fix_text(model: str) -> str:
    return (
        f"Fix: fetch it with `huggingface-cli download {model}` (or `hf download {model}`) on a machine "
        "with internet and copy the Hugging Face cache here, or set ANOMALY_AGENT_LOCAL_MODEL "
        "(--local-model) to a local folder holding config.json and the weights, or set "
        "ANOMALY_AGENT_ALLOW_DOWNLOADS=true to let it download"
    )


def resolve_local_model(model: str, weights_dir: Path | None = None) -> Path:
    """The local folder holding `model`'s config and weights, without loading anything.

    Looked up in order: `model` as a path; ``weights_dir/<model>`` and ``weights_dir/<last part>``;
    the Hugging Face cache (offline).

    Raises:
        LocalModelNotFoundError: none of those holds ``config.json`` plus ``*.safetensors``/``*.bin``;
            the message names the model, the setting ANOMALY_AGENT_LOCAL_MODEL and the fetch command.
    """
    candidates = [Path(model).expanduser()]
    if weights_dir is not None:
        candidates += [Path(weights_dir) / model, Path(weights_dir) / model.rstrip("/").split("/")[-1]]
    for folder in candidates:
        if folder.is_dir():
            if _has_weights(folder):
                return folder
            msg = (
                f"local model folder {folder} has no config.json or no *.safetensors/*.bin weights. "
                f"{_fix_text(model)}"
            )
            raise LocalModelNotFoundError(msg)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if not looks_like_path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            snapshot = Path(snapshot_download(model, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
            snapshot = None
        if snapshot is not None and snapshot.is_dir() and _has_weights(snapshot):
            return snapshot
    where = "as a folder" if looks_like_path else "as a folder or in the Hugging Face cache"
    msg = f"local model {model!r} not found {where} (weights are never downloaded unless allowed). {_fix_text(model)}"
    raise LocalModelNotFoundError(msg)


def local_model_status(config: AgentConfig) -> tuple[bool, str]:
    """Do the in-process model's weights resolve locally? Loads nothing.

    Returns:
        (True, "<model> at <folder>") or (False, the cause and the fix).
    """
    try:
        folder = resolve_local_model(config.local_model, config.weights_dir)
    except LocalModelNotFoundError as exc:
        return False, str(exc)
    return True, f"{config.local_model} at {folder}"


# ---------------------------------------------------------------------------------- device, dtype


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        msg = "device 'cuda' requested but torch sees no CUDA device. Fix: set ANOMALY_AGENT_DEVICE=cpu (or auto)"
        raise UserInputError(msg)
    return device


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ----------------------------------------------------------------------------------------- images


def _decode_url(url: str) -> bytes | str:
    """Raw bytes of a ``data:`` URL, or a local path for ``file://`` URLs and plain paths."""
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            msg = "image data URL is not base64 (expected data:image/...;base64,...). Fix: encode the image as base64"
            raise UserInputError(msg)
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            msg = f"image data URL holds invalid base64 ({exc}). Fix: re-encode the image"
            raise UserInputError(msg) from None
    if url.startswith(("http://", "https://")):
        msg = (
            f"remote image URL {url[:80]!r}: the transformers backend does not fetch URLs. "
            "Fix: pass the image as a data: URL (tools.images.image_content_block)"
        )
        raise UserInputError(msg)
    return url.removeprefix("file://")


def _block_source(block: dict) -> bytes | str | Any:
    """What a content block points at: bytes, a path, or a PIL image (HF-style ``{"image": PIL}``)."""
    if block.get("type") == "image_url":
        ref = block.get("image_url")
        url = ref.get("url", "") if isinstance(ref, dict) else ref
        return _decode_url(str(url or ""))
    # LangChain standard blocks: {"type": "image", "base64"|"url"|"data"+"source_type"|"image"}
    if "image" in block and not isinstance(block["image"], str | bytes):
        return block["image"]
    data = block.get("base64") or (block.get("data") if block.get("source_type") == "base64" else None)
    if data:
        return _decode_url(f"data:{block.get('mime_type', 'image/png')};base64,{data}")
    url = block.get("url") or block.get("image") or block.get("path")
    if url:
        return _decode_url(str(url))
    msg = f"image content block without data (keys: {sorted(block)}). Fix: use image_url with a data: URL"
    raise UserInputError(msg)


def block_to_image(block: dict, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image content block to an RGB PIL image whose longer side is <= `max_side` pixels.

    Bytes and paths go through `tools.images.load_image` (format, size limit, EXIF, mode -> RGB).
    """
    from PIL import Image

    source = _block_source(block)
    if isinstance(source, Image.Image):
        img = source.convert("RGB")
    else:
        try:
            img = Image.fromarray(load_image(source, max_pixels=max_pixels))
        except ImageInputError as exc:
            msg = f"image in a chat message: {exc}"
            raise UserInputError(msg) from None
    if max(img.size) > max_side:
        factor = max_side / max(img.size)
        size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


# --------------------------------------------------------------------------------------- messages


def _is_image_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("image_url", "image")


def _text_of(content: str | list) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def _template_content(content: str | list, images: list, to_image: Callable[[dict], Any]) -> str | list:
    """Chat-template content: a string, or HF blocks ``{"type": "text"|"image"}`` (images appended to `images`)."""
    if isinstance(content, str):
        return content
    if not any(_is_image_block(b) for b in content):
        return _text_of(content)
    blocks: list[dict] = []
    for block in content:
        if isinstance(block, str):
            blocks.append({"type": "text", "text": block})
        elif _is_image_block(block):
            images.append(to_image(block))
            blocks.append({"type": "image"})
        elif isinstance(block, dict) and block.get("type") == "text":
            blocks.append({"type": "text", "text": str(block.get("text", ""))})
    return blocks


def _assistant_calls(message: AIMessage) -> list[dict]:
    calls = [
        {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
        for c in message.tool_calls
    ]
    # invalid calls are shown as the model wrote them, so the tool errors that follow make sense
    calls += [
        {"type": "function", "id": c.get("id"), "function": {"name": c.get("name") or "", "arguments": c.get("args") or ""}}
        for c in message.invalid_tool_calls
    ]
    return calls


def to_template_messages(
    messages: Sequence[BaseMessage], to_image: Callable[[dict], Any]
) -> tuple[list[dict], list]:
    """LangChain messages -> (chat-template messages, images in placeholder order).

    System messages are merged into one, first; images in system messages are rejected.
    """
    images: list = []
    out: list[dict] = []
    for m in merge_system_messages(messages):
        if isinstance(m, SystemMessage):
            if isinstance(m.content, list) and any(_is_image_block(b) for b in m.content):
                msg = "images in a system message are not supported. Fix: put images in a user message"
                raise UserInputError(msg)
            out.append({"role": "system", "content": _text_of(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _template_content(m.content, images, to_image)})
        elif isinstance(m, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _text_of(m.content)}
            calls = _assistant_calls(m)
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        elif isinstance(m, ToolMessage):
            out.append(
                {
                    "role": "tool",
                    "content": _template_content(m.content, images, to_image),
                    "tool_call_id": m.tool_call_id,
                    "name": m.name,
                }
            )
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _template_content(m.content, images, to_image)})
        else:
            msg = f"message type {type(m).__name__} is not supported by the transformers backend"
            raise UserInputError(msg)
    return out, images


def _forced_tool(tool_choice: Any, tools: list[dict]) -> tuple[bool, str | None]:
    """(must call a tool, which one or None) from an OpenAI/LangChain ``tool_choice``."""
    if tool_choice in (None, "auto", "none", False):
        return False, None
    if tool_choice in ("any", "required", True):
        return True, None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    else:
        name = str(tool_choice)
    names = [t["function"]["name"] for t in tools]
    if name not in names:
        msg = f"tool_choice {name!r} is not a bound tool; bound: {', '.join(names) or 'none'}"
        raise ValueError(msg)
    return True, name


# ------------------------------------------------------------------------------------ chat model


class TransformersChatModel(BaseChatModel):
    """A LangChain chat model running a Hugging Face image-text-to-text model in this process.

    Attributes:
        model_path: local folder (or HF id resolved through the cache) of the model.
        device: "auto" | "cpu" | "cuda" (or "cuda:N").
        dtype: "auto" (bf16/fp16 on CUDA, fp32 on CPU) | "float32" | "bfloat16" | "float16".
        max_new_tokens: generation budget per call, tokens.
        temperature: 0 = greedy; > 0 samples.
        image_max_side: images are downscaled so their longer side <= this, pixels.
        tool_parser: parser name (`toolcall_parsers.PARSERS`); None = by the model's family.
        logprobs / top_logprobs: attach OpenAI-shaped token log-probabilities to every answer.
        allow_downloads: let transformers fetch missing weights from the hub.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_path: str = DEFAULT_LOCAL_MODEL
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    image_max_side: int = Field(1024, ge=16)
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    tool_parser: str | None = None
    logprobs: bool = False
    top_logprobs: int = Field(5, ge=0, le=20)
    allow_downloads: bool = False
    weights_dir: Path | None = None

    _model: Any = PrivateAttr(default=None)
    _processor: Any = PrivateAttr(default=None)
    _parser: ToolCallParser | None = PrivateAttr(default=None)
    _device: str = PrivateAttr(default="cpu")
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _warned_tools: bool = PrivateAttr(default=False)

    @classmethod
    def from_config(cls, config: AgentConfig, **overrides: Any) -> TransformersChatModel:
        """Build from `AgentConfig` and load the weights now (errors surface here, not mid-run).

        Args:
            config: uses local_model, device, dtype, threads, image_max_side, max_image_pixels,
                allow_downloads, weights_dir.
            overrides: any field of this class (e.g. ``max_new_tokens=256``, ``logprobs=True``).

        Raises:
            LocalModelNotFoundError: weights absent (names the model, ANOMALY_AGENT_LOCAL_MODEL and
                the `huggingface-cli download` command).
        """
        fields = {
            "model_path": config.local_model,
            "device": config.device,
            "dtype": config.dtype,
            "threads": config.threads,
            "image_max_side": config.image_max_side,
            "max_image_pixels": config.max_image_pixels,
            "allow_downloads": config.allow_downloads,
            "weights_dir": config.weights_dir,
        }
        model = cls(**(fields | overrides))
        model.load()
        return model

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Resolve and load processor + model (idempotent)."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            source: str | Path = resolve_local_model(self.model_path, self.weights_dir)
        except LocalModelNotFoundError:
            if not self.allow_downloads:
                raise
            source = self.model_path  # transformers downloads it
        device = _pick_device(self.device)
        dtype = _pick_dtype(self.dtype, device)
        local_only = not self.allow_downloads
        try:
            processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as exc:
            msg = (
                f"cannot load local model {self.model_path!r} from {source} ({type(exc).__name__}: {exc}). "
                "Fix: point ANOMALY_AGENT_LOCAL_MODEL at an image-text-to-text checkpoint "
                "(e.g. Qwen/Qwen3-VL-2B-Instruct) with its processor files"
            )
            raise LocalModelLoadError(msg) from exc
        model.to(device).eval()
        self._processor, self._model, self._device = processor, model, device
        model_type = getattr(model.config, "model_type", None)
        self._parser = get_parser(self.tool_parser) if self.tool_parser else parser_for_model_type(model_type)
        logger.info("loaded %s (%s) on %s as %s", self.model_path, model_type, device, dtype)

    @property
    def hf_model(self) -> Any:
        """The loaded transformers model (loads on first use)."""
        self.load()
        return self._model

    @property
    def processor(self) -> Any:
        """The loaded processor (loads on first use)."""
        self.load()
        return self._processor

    # ------------------------------------------------------------------ LangChain API

    @property
    def _llm_type(self) -> str:
        return "transformers-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_path,
            "device": self.device,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions or OpenAI dicts).

        They are converted to OpenAI-style function schemas and rendered by the chat template.
        `tool_choice`: None/"auto" (model decides), "none" (tools hidden), "any"/"required" or a
        tool name (the call is forced by prefilling the opening of a tool-call block).
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.load()
        tools: list[dict] = list(kwargs.pop("tools", None) or [])
        tool_choice = kwargs.pop("tool_choice", None)
        want_lp = bool(kwargs.pop("logprobs", self.logprobs))
        top_k = int(kwargs.pop("top_logprobs", self.top_logprobs) or 0)
        max_new = int(kwargs.pop("max_new_tokens", kwargs.pop("max_tokens", None)) or self.max_new_tokens)
        temperature = float(kwargs.pop("temperature", self.temperature) or 0.0)
        for key in list(kwargs):
            if key not in _IGNORED_KWARGS:
                logger.warning("transformers backend ignores unsupported argument %r", key)
        if tool_choice == "none":
            tools = []
        forced, forced_name = _forced_tool(tool_choice, tools) if tools else (False, None)

        def to_image(block: dict) -> Any:
            return block_to_image(block, self.image_max_side, self.max_image_pixels)

        start = time.perf_counter()
        chat, images = to_template_messages(messages, to_image)
        prefix = self._parser.forced_prefix(forced_name) if forced else ""
        text = self._render(chat, tools) + prefix
        render_ms = (time.perf_counter() - start) * 1000
        with self._lock:
            gen = self._run_generate(text, images, max_new, temperature, want_lp, stop)
        start = time.perf_counter()
        message = self._to_message(prefix + gen["text"], gen, want_lp, top_k)
        message.response_metadata["timings_ms"] = {
            "render": render_ms,
            "processor": gen["processor_ms"],
            "generate": gen["generate_ms"],
            "parse": (time.perf_counter() - start) * 1000,
        }
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ------------------------------------------------------------------ internals

    def _render(self, chat: list[dict], tools: list[dict]) -> str:
        processor = self._processor
        template_owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
        if not getattr(template_owner, "chat_template", None):
            msg = f"model {self.model_path!r} has no chat template. Fix: use an Instruct checkpoint that ships one"
            raise LocalModelLoadError(msg)
        text = template_owner.apply_chat_template(
            chat, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
        if tools and not any(t["function"]["name"] in text for t in tools) and not self._warned_tools:
            self._warned_tools = True
            logger.warning(
                "the chat template of %s does not render tools; the model will not see them. "
                "Fix: use a checkpoint whose template supports tools (e.g. Qwen3-VL Instruct)",
                self.model_path,
            )
        return text

    def _run_generate(
        self,
        text: str,
        images: list,
        max_new: int,
        temperature: float,
        want_lp: bool,
        stop: list[str] | None,
    ) -> dict[str, Any]:
        import torch

        processor, model = self._processor, self._model
        start = time.perf_counter()
        try:
            inputs = processor(text=[text], images=images or None, return_tensors="pt")
        except ValueError as exc:
            msg = (
                f"the processor of {self.model_path!r} rejected the prompt ({exc}). Usually the chat "
                "template dropped an image placeholder. Fix: put images in user messages"
            )
            raise UserInputError(msg) from exc
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        gen_config = copy.deepcopy(model.generation_config)
        gen_config.max_new_tokens = max_new
        gen_config.do_sample = temperature > 0
        if temperature > 0:
            gen_config.temperature = temperature
        else:
            gen_config.temperature = gen_config.top_p = gen_config.top_k = None
        gen_config.return_dict_in_generate = True
        gen_config.output_logits = want_lp
        gen_config.output_scores = want_lp
        tokenizer = processor.tokenizer
        if gen_config.pad_token_id is None:
            gen_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        extra: dict[str, Any] = {}
        if stop:
            gen_config.stop_strings = list(stop)
            extra["tokenizer"] = tokenizer
        prompt_len = int(inputs["input_ids"].shape[1])
        processor_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, generation_config=gen_config, **extra)
        if self._device.startswith("cuda"):
            torch.cuda.synchronize()
        generate_ms = (time.perf_counter() - start) * 1000
        new_ids = out.sequences[0, prompt_len:].tolist()
        eos = gen_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        finished = bool(new_ids) and new_ids[-1] in eos_ids
        while new_ids and new_ids[-1] in eos_ids | {gen_config.pad_token_id}:
            new_ids.pop()
        decoded = tokenizer.decode(new_ids, skip_special_tokens=False)
        if stop:
            cuts = [decoded.find(s) for s in stop if s and s in decoded]
            if cuts:
                decoded, finished = decoded[: min(cuts)], True
        step_logits = (out.logits or out.scores) if want_lp else None
        return {
            "text": decoded,
            "ids": new_ids,
            "prompt_tokens": prompt_len,
            "output_tokens": int(out.sequences.shape[1] - prompt_len),
            "finished": finished,
            "step_logits": step_logits,
            "processor_ms": processor_ms,
            "generate_ms": generate_ms,
        }

    def _strip_special(self, text: str) -> str:
        for token in self._processor.tokenizer.all_special_tokens:
            if token:
                text = text.replace(token, "")
        return text

    def _to_message(self, raw: str, gen: dict, want_lp: bool, top_k: int) -> AIMessage:
        additional: dict[str, Any] = {}
        if "</think>" in raw:  # thinking checkpoints: keep the reasoning apart from the answer
            reasoning, _, raw = raw.partition("</think>")
            additional["reasoning_content"] = reasoning.replace("<think>", "").strip()
        parsed = self._parser.parse(raw)
        content = self._strip_special(parsed.content).strip()
        finish = "tool_calls" if parsed.tool_calls else ("stop" if gen["finished"] else "length")
        metadata: dict[str, Any] = {
            "model_name": self.model_path,
            "model_provider": "transformers",
            "finish_reason": finish,
        }
        if want_lp and gen["step_logits"] is not None:
            metadata["logprobs"] = {"content": self._logprob_entries(gen, top_k)}
        usage = {
            "input_tokens": gen["prompt_tokens"],
            "output_tokens": gen["output_tokens"],
            "total_tokens": gen["prompt_tokens"] + gen["output_tokens"],
        }
        return AIMessage(
            content=content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            usage_metadata=usage,
            response_metadata=metadata,
            additional_kwargs=additional,
        )

    def _logprob_entries(self, gen: dict, top_k: int) -> list[dict]:
        """OpenAI-shaped entries, one per kept generated token: token, logprob, top_logprobs."""
        import torch

        tokenizer = self._processor.tokenizer
        entries = []
        for step, token_id in enumerate(gen["ids"]):
            logp = torch.log_softmax(gen["step_logits"][step][0].float(), dim=-1)
            entry: dict[str, Any] = {
                "token": tokenizer.decode([token_id]),
                "logprob": _finite(float(logp[token_id])),
                "top_logprobs": [],
            }
            if top_k:
                values, indices = torch.topk(logp, k=min(top_k, logp.shape[-1]))
                entry["top_logprobs"] = [
                    {"token": tokenizer.decode([int(i)]), "logprob": _finite(float(v))}
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                ]
            entries.append(entry)
        return entries


def _finite(value: float) -> float:
    """OpenAI's convention: -9999.0 stands for log(0)."""
    return value if math.isfinite(value) else -9999.0


__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "LocalModelLoadError",
    "LocalModelNotFoundError",
    "TransformersChatModel",
    "block_to_image",
    "local_model_status",
    "resolve_local_model",
    "to_template_messages",
]
