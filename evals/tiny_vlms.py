"""Builders of tiny random vision-language models for offline tests.

Each builder writes a complete Hugging Face checkpoint folder (config, random weights, processor,
tokenizer, chat template) that loads with ``AutoProcessor`` / ``AutoModelForImageTextToText``, as a
real downloaded model would. Dims are tiny (hidden 32-64, 1-2 layers, 32-64 px images), so a load
plus a short generation takes well under a second on CPU. Outputs are random: tests assert
structure, never meaning.

The tokenizer is a byte-level BPE trained on the spot with `tokenizers` on a small corpus, plus the
special tokens the processor and the chat template need. All families share one simplified
Qwen-style chat template with tool support (``<tool_call>{...}</tool_call>`` blocks and
``<tool_response>`` turns); only the image placeholder differs per family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

FAMILIES = ("qwen3_vl", "llava", "idefics3")

# The placeholder each processor expands into the right number of image tokens.
_IMAGE_PLACEHOLDER = {
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
    "idefics3": "<image>",
}

_CORPUS = [
    "The bottle is normal. The screw has a scratch near the thread.",
    "Anomalous: crack, hole, contamination, missing part, bent lead, cut, color stain.",
    "Normal: no defect visible. The object looks like the references.",
    '{"name": "zoom", "arguments": {"image_id": "img-1", "bbox": [0, 0, 32, 32]}}',
    '{"pred_label": "anomalous", "pred_score": 0.9, "explanation": "patch_knn score high"}',
    "You are an inspector. Call tools to gather evidence, then answer with a verdict.",
    "system user assistant tool function parameters properties required type object string",
    "Is this image normal or anomalous? Answer yes or no. 0123456789 [ ] { } : , . \" '",
]

# Simplified Qwen chat template: system (+ tools), user/assistant/tool turns, images as content
# blocks of type "image", assistant tool calls as <tool_call> JSON blocks.
_TEMPLATE = """\
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}{%- else -%}
{%- for block in content -%}
{%- if block.type == 'image' -%}@@IMAGE@@{%- elif block.type == 'text' -%}{{ block.text }}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- if tools or messages[0].role == 'system' -%}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ render(messages[0].content) }}{% endif %}
{%- if tools %}

# Tools

You may call one or more functions. Function signatures within <tools></tools>:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each call return a JSON object within <tool_call></tool_call>:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{%- endif %}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
<|im_start|>user
{{ render(message.content) }}<|im_end|>
{% elif message.role == 'assistant' -%}
<|im_start|>assistant
{{ render(message.content) if message.content else '' }}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function if call.function is defined else call %}
<tool_call>
{"name": "{{ fn.name }}", "arguments": {{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ render(message.content) }}
</tool_response><|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}
"""

_CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
_FAMILY_SPECIALS = {
    "qwen3_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": ["<image>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
}


def chat_template(family: str) -> str:
    """The tiny chat template for `family`, with that family's image placeholder."""
    return _TEMPLATE.replace("@@IMAGE@@", _IMAGE_PLACEHOLDER[family])


def train_tokenizer(family: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a small corpus, with the family's special tokens.

    Returns:
        `PreTrainedTokenizerFast` with eos ``<|im_end|>`` and pad ``<|endoftext|>``; the tool tags
        are added as normal (non-special) tokens, as in Qwen's tokenizer, so they survive decoding
        with ``skip_special_tokens=True``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _CHAT_SPECIALS + _FAMILY_SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_tokens(_TOOL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in specials if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    fast.chat_template = chat_template(family)
    return fast


def _padded_vocab(tokenizer) -> int:
    return (len(tokenizer) + 63) // 64 * 64


def _text_dims(vocab: int, eos: int, pad: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


def _save(model, processor, out: Path, eos: int, pad: int) -> Path:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_qwen3_vl(out: Path, seed: int = 0) -> Path:
    """A tiny Qwen3-VL (1 text layer, hidden 32; 1-block vision tower, 8 px patches, <= 64x64 px)."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.manual_seed(seed)
    tok = train_tokenizer("qwen3_vl")
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    text = _text_dims(_padded_vocab(tok), eos, pad) | {
        "head_dim": 16,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    }
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 32,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    image_processor = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
    video_processor = Qwen3VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, size=size)
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=tok.chat_template,
    )
    return _save(model, processor, Path(out), eos, pad)


def build_llava(out: Path, seed: int = 0) -> Path:
    """A tiny LLaVA (CLIP vision tower 32 px / 8 px patches -> 16 image tokens, Llama text model)."""
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tok = train_tokenizer("llava")
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    }
    text = {"model_type": "llama"} | _text_dims(_padded_vocab(tok), eos, pad)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return _save(model, processor, Path(out), eos, pad)


def build_idefics3(out: Path, seed: int = 0) -> Path:
    """A tiny Idefics3 (SigLIP-style tower 32 px / 8 px patches, scale factor 2 -> 4 image tokens)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    torch.manual_seed(seed)
    tok = train_tokenizer("idefics3")
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {"model_type": "llama"} | _text_dims(_padded_vocab(tok), eos, pad)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=pad,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": 32},
        max_image_size={"longest_edge": 32},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(32 // 8) ** 2 // 2**2,
        chat_template=tok.chat_template,
    )
    return _save(model, processor, Path(out), eos, pad)


BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen3_vl": build_qwen3_vl,
    "llava": build_llava,
    "idefics3": build_idefics3,
}


def build_tiny_vlm(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `family` (one of `FAMILIES`) to `out`; returns `out`."""
    if family not in BUILDERS:
        msg = f"unknown tiny VLM family {family!r}; valid: {', '.join(FAMILIES)}"
        raise ValueError(msg)
    return BUILDERS[family](Path(out), seed=seed)
