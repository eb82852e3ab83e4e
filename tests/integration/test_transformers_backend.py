"""The in-process transformers backend against tiny random VLMs built on the spot (offline, CPU).

Outputs of random models are gibberish: these tests assert structure (message types, usage,
logprob shapes, parsing), never meaning.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from agent.backends.toolcall_parsers import (
    FAMILY_PARSERS,
    HermesToolCallParser,
    MistralToolCallParser,
    get_parser,
    parser_for_model_type,
)
from agent.backends.transformers_backend import (
    LocalModelNotFoundError,
    TransformersChatModel,
    local_model_status,
    to_template_messages,
)
from agent.config import AgentConfig
from agent.errors import UserInputError
from evals.tiny_vlms import FAMILIES, build_tiny_vlm
from tools.images import image_content_block

MAX_NEW = 6


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    """family -> folder of a tiny random checkpoint (built once per test session)."""
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny_vlm(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs) -> dict:
    """family -> loaded `TransformersChatModel` (lazy per family, cached for the session)."""
    cache: dict = {}

    def get(family: str) -> TransformersChatModel:
        if family not in cache:
            config = AgentConfig(local_model=str(tiny_dirs[family]), device="cpu", dtype="float32")
            cache[family] = TransformersChatModel.from_config(config, max_new_tokens=MAX_NEW)
        return cache[family]

    return get


def _image(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@tool
def zoom(image_id: str, bbox: list[int]) -> str:
    """Zoom into a region of an image. bbox: xyxy, pixels."""
    return "zoomed"


@tool
def clip_similarity(image_id: str) -> str:
    """Zero-shot anomaly score of an image."""
    return "0.3"


# ----------------------------------------------------------------------------------- tool parsing


def test_hermes_parses_multiple_calls_and_keeps_text():
    text = (
        "I will look closer.\n"
        '<tool_call>\n{"name": "zoom", "arguments": {"image_id": "img-1", "bbox": [0, 0, 8, 8]}}\n</tool_call>\n'
        '<tool_call>\n{"name": "clip_similarity", "arguments": "{\\"image_id\\": \\"img-1\\"}"}\n</tool_call>'
    )
    out = HermesToolCallParser().parse(text)
    assert out.content == "I will look closer."
    assert [c["name"] for c in out.tool_calls] == ["zoom", "clip_similarity"]
    assert out.tool_calls[0]["args"] == {"image_id": "img-1", "bbox": [0, 0, 8, 8]}
    assert out.tool_calls[1]["args"] == {"image_id": "img-1"}  # arguments given as a JSON string
    assert len({c["id"] for c in out.tool_calls}) == 2
    assert all(c["type"] == "tool_call" for c in out.tool_calls)
    assert out.invalid_tool_calls == []


def test_hermes_malformed_json_is_an_invalid_call_not_a_crash():
    text = (
        '<tool_call>\n{"name": "zoom", "arguments": {"image_id": "img-1", "bbox": [0, 0,}\n</tool_call>'
        '<tool_call>\n{"name": "clip_similarity", "arguments": {"image_id": "img-2"}}\n</tool_call>'
        '<tool_call>\n["not", "an", "object"]\n</tool_call>'
        '<tool_call>\n{"name": "zoom", "arguments": [1, 2]}\n</tool_call>'
    )
    out = HermesToolCallParser().parse(text)
    assert [c["name"] for c in out.tool_calls] == ["clip_similarity"]
    assert len(out.invalid_tool_calls) == 3
    bad_json, not_object, bad_args = out.invalid_tool_calls
    assert bad_json["name"] == "zoom" and "not valid JSON" in bad_json["error"]
    assert bad_json["args"].startswith('{"name": "zoom"')
    assert not_object["name"] is None and "JSON object" in not_object["error"]
    assert "must be a JSON object" in bad_args["error"]
    assert all(c["type"] == "invalid_tool_call" for c in out.invalid_tool_calls)


def test_hermes_unterminated_block_and_plain_text():
    cut = HermesToolCallParser().parse('<tool_call>\n{"name": "zoom", "arguments": {"image_id": "a"}}')
    assert cut.tool_calls[0]["args"] == {"image_id": "a"} and cut.content == ""
    broken = HermesToolCallParser().parse('<tool_call>\n{"name": "zoom", "argu')
    assert "not closed" in broken.invalid_tool_calls[0]["error"]
    plain = HermesToolCallParser().parse("  The part is normal.  ")
    assert plain.content == "The part is normal." and not plain.tool_calls and not plain.invalid_tool_calls


def test_mistral_parser_both_styles():
    old = MistralToolCallParser().parse(
        '[TOOL_CALLS][{"name": "zoom", "arguments": {"image_id": "a"}}, {"name": "clip_similarity", "arguments": {"image_id": "b"}}]'
    )
    assert [c["args"]["image_id"] for c in old.tool_calls] == ["a", "b"]
    new = MistralToolCallParser().parse('[TOOL_CALLS]zoom[ARGS]{"image_id": "a"}[TOOL_CALLS]zoom[ARGS]{bad')
    assert new.tool_calls[0]["args"] == {"image_id": "a"}
    assert len(new.invalid_tool_calls) == 1
    assert new.invalid_tool_calls[0]["name"] == "zoom"
    assert "not valid JSON" in new.invalid_tool_calls[0]["error"]
    assert MistralToolCallParser().parse("no calls here").content == "no calls here"


def test_parser_registry():
    assert isinstance(parser_for_model_type("qwen3_vl"), HermesToolCallParser)
    assert isinstance(parser_for_model_type("mistral3"), MistralToolCallParser)
    assert isinstance(parser_for_model_type("some_new_family"), HermesToolCallParser)
    assert FAMILY_PARSERS["qwen2_vl"] == "hermes"
    with pytest.raises(ValueError, match="valid: .*hermes.*mistral"):
        get_parser("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_templated_tool_calls_round_trip(tiny_models, family):
    """Tool calls rendered by the model's own chat template, tokenized and decoded, parse back."""
    model = tiny_models(family)
    calls = [
        {"name": "zoom", "args": {"image_id": "img-1", "bbox": [1, 2, 30, 40]}, "id": "call_a"},
        {"name": "clip_similarity", "args": {"image_id": "img-1"}, "id": "call_b"},
    ]
    chat, _ = to_template_messages([HumanMessage("hi"), AIMessage(content="", tool_calls=calls)], lambda b: None)
    rendered = model.processor.apply_chat_template(chat, tokenize=False)
    assistant = rendered.rsplit("<|im_start|>assistant\n", 1)[1]
    tokenizer = model.processor.tokenizer
    decoded = tokenizer.decode(tokenizer(assistant, add_special_tokens=False)["input_ids"])
    message = model._to_message(decoded, {"finished": True, "prompt_tokens": 1, "output_tokens": 1}, False, 0)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [(c["name"], c["args"]) for c in calls]
    assert message.content == ""  # <|im_end|> (special) is stripped from the content
    assert message.response_metadata["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------------------- chat with images


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_with_image_structure_usage_and_logprobs(tiny_models, family):
    model = tiny_models(family)
    messages = [
        SystemMessage("You inspect parts."),
        SystemMessage("Answer normal or anomalous."),  # merged into one system message
        HumanMessage([{"type": "text", "text": "Is this bottle normal?"}, image_content_block(_image())]),
    ]
    reply = model.bind_tools([zoom, clip_similarity]).invoke(messages, logprobs=True, top_logprobs=5)
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str)
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 20 and 1 <= usage["output_tokens"] <= MAX_NEW
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    entries = reply.response_metadata["logprobs"]["content"]
    assert 1 <= len(entries) <= usage["output_tokens"]
    for entry in entries:
        assert set(entry) == {"token", "logprob", "top_logprobs"}
        assert isinstance(entry["token"], str) and entry["logprob"] <= 0.0
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        # greedy decoding: the chosen token is the most likely one
        assert entry["logprob"] == pytest.approx(tops[0], abs=1e-5)
    assert set(reply.response_metadata["timings_ms"]) == {"render", "processor", "generate", "parse"}
    # without logprobs requested, none are attached; sampling (temperature > 0) also runs
    plain = model.invoke(messages, temperature=0.8, max_tokens=2)
    assert "logprobs" not in plain.response_metadata
    assert 1 <= plain.usage_metadata["output_tokens"] <= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_images_reach_the_processor(tiny_models, family):
    """Each image adds its image tokens to the prompt; text-only prompts have none."""
    model = tiny_models(family)
    text_only = model.invoke([HumanMessage("Is this normal?")]).usage_metadata["input_tokens"]
    blocks = [{"type": "text", "text": "Is this normal?"}]
    one = model.invoke([HumanMessage([*blocks, image_content_block(_image())])]).usage_metadata["input_tokens"]
    two = model.invoke(
        [HumanMessage([*blocks, image_content_block(_image()), image_content_block(_image(seed=1))])]
    ).usage_metadata["input_tokens"]
    assert text_only < one < two
    assert two - one == one - text_only  # same-size images cost the same number of tokens


def test_multi_turn_with_tool_results_and_tool_images(tiny_models):
    model = tiny_models("qwen3_vl")
    messages = [
        SystemMessage("You inspect parts."),
        HumanMessage([{"type": "text", "text": "Check img-1."}, image_content_block(_image())]),
        AIMessage(content="", tool_calls=[{"name": "zoom", "args": {"image_id": "img-1", "bbox": [0, 0, 8, 8]}, "id": "c1"}]),
        ToolMessage(
            content=[{"type": "text", "text": "crop img-2:"}, image_content_block(_image(20, 20, seed=3))],
            tool_call_id="c1",
            name="zoom",
        ),
    ]
    chat, images = to_template_messages(messages, lambda block: "decoded")
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    assert images == ["decoded", "decoded"]
    rendered = model.processor.apply_chat_template(chat, tools=None, add_generation_prompt=True, tokenize=False)
    assert rendered.count("<|image_pad|>") == 2
    assert "<tool_response>" in rendered and '"name": "zoom"' in rendered
    reply = model.bind_tools([zoom]).invoke(messages)
    assert isinstance(reply, AIMessage) and reply.usage_metadata["output_tokens"] >= 1


def test_forced_tool_choice_names_the_tool(tiny_models):
    model = tiny_models("qwen3_vl")
    messages = [HumanMessage([{"type": "text", "text": "zoom in"}, image_content_block(_image())])]
    reply = model.bind_tools([zoom, clip_similarity], tool_choice="clip_similarity").invoke(messages)
    calls = reply.tool_calls + reply.invalid_tool_calls
    assert len(calls) == 1 and calls[0]["name"] == "clip_similarity"
    with pytest.raises(ValueError, match="not a bound tool"):
        model.bind_tools([zoom], tool_choice="sam_crop").invoke(messages)


def test_with_structured_output_goes_through_tool_calls(tiny_models):
    class Verdict(BaseModel):
        pred_label: str

    model = tiny_models("llava")
    out = model.with_structured_output(Verdict, include_raw=True).invoke("normal or anomalous?")
    raw = out["raw"]
    assert isinstance(raw, AIMessage)
    calls = raw.tool_calls + raw.invalid_tool_calls
    assert calls, "tool_choice='any' must force a tool-call block"
    assert out["parsed"] is None or isinstance(out["parsed"], Verdict)


def test_bfloat16_on_cpu(tiny_dirs):
    import torch

    config = AgentConfig(local_model=str(tiny_dirs["qwen3_vl"]), device="cpu", dtype="bfloat16")
    model = TransformersChatModel.from_config(config, max_new_tokens=3)
    assert model.hf_model.dtype == torch.bfloat16
    reply = model.invoke(
        [HumanMessage([{"type": "text", "text": "x"}, image_content_block(_image())])], logprobs=True
    )
    assert reply.usage_metadata["output_tokens"] >= 1
    assert all(np.isfinite(e["logprob"]) for e in reply.response_metadata["logprobs"]["content"])


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, "does not fetch URLs"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}, "not an image"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, "not base64"),
    ],
)
def test_bad_images_give_user_errors(tiny_models, block, match):
    model = tiny_models("qwen3_vl")
    with pytest.raises(UserInputError, match=match):
        model.invoke([HumanMessage([{"type": "text", "text": "x"}, block])])


def test_image_in_system_message_is_rejected(tiny_models):
    model = tiny_models("qwen3_vl")
    with pytest.raises(UserInputError, match="system message"):
        model.invoke([SystemMessage([image_content_block(_image())]), HumanMessage("x")])


# ------------------------------------------------------------------------------------ weights


def test_missing_weights_error_names_model_setting_and_fetch_command(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = AgentConfig(local_model="Qwen/Qwen3-VL-2B-Instruct", device="cpu")
    with pytest.raises(LocalModelNotFoundError) as info:
        TransformersChatModel.from_config(config)
    text = str(info.value)
    assert isinstance(info.value, UserInputError)
    assert "Qwen/Qwen3-VL-2B-Instruct" in text
    assert "ANOMALY_AGENT_LOCAL_MODEL" in text
    assert "huggingface-cli download Qwen/Qwen3-VL-2B-Instruct" in text
    ok, detail = local_model_status(config)
    assert not ok and "huggingface-cli download" in detail


def test_folder_without_weights_and_missing_path(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    ok, detail = local_model_status(AgentConfig(local_model=str(tmp_path / "half")))
    assert not ok and "no config.json or no *.safetensors" in detail
    ok, detail = local_model_status(AgentConfig(local_model=str(tmp_path / "nowhere")))
    assert not ok and "not found as a folder" in detail


def test_weights_resolve_from_folder_weights_dir_and_hf_cache(tiny_dirs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    src = tiny_dirs["llava"]
    ok, detail = local_model_status(AgentConfig(local_model=str(src)))
    assert ok and str(src) in detail
    # weights_dir/<last part of the id>
    weights = tmp_path / "weights"
    shutil.copytree(src, weights / "tiny-llava")
    ok, detail = local_model_status(AgentConfig(local_model="acme/tiny-llava", weights_dir=weights))
    assert ok and str(weights / "tiny-llava") in detail
    # the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/...}
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-llava"
    shutil.copytree(src, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    config = AgentConfig(local_model="acme/tiny-llava", device="cpu")
    assert local_model_status(config)[0]
    model = TransformersChatModel.from_config(config, max_new_tokens=2)
    assert model.invoke("hi").usage_metadata["output_tokens"] >= 1


def test_cuda_request_without_cuda_is_a_user_error(tiny_dirs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = AgentConfig(local_model=str(tiny_dirs["llava"]), device="cuda")
    with pytest.raises(UserInputError, match="ANOMALY_AGENT_DEVICE=cpu"):
        TransformersChatModel.from_config(config)


def test_tool_schemas_reach_the_template(tiny_models):
    """bind_tools converts LangChain tools to OpenAI schemas that the template renders."""
    model = tiny_models("idefics3")
    bound = model.bind_tools([zoom])
    schemas = bound.kwargs["tools"]
    assert schemas[0]["type"] == "function" and schemas[0]["function"]["name"] == "zoom"
    rendered = model.processor.apply_chat_template(
        [{"role": "user", "content": "x"}], tools=schemas, add_generation_prompt=True, tokenize=False
    )
    assert json.dumps(schemas[0]) in rendered


def test_image_blocks_decode_and_downscale():
    """OpenAI image_url and LangChain standard image blocks decode to RGB, longer side <= max_side."""
    import base64

    from agent.backends.transformers_backend import block_to_image
    from tools.images import encode_image

    pixels = _image(300, 200)
    payload = base64.b64encode(encode_image(pixels)).decode("ascii")
    blocks = [
        image_content_block(pixels),
        {"type": "image_url", "image_url": f"data:image/png;base64,{payload}"},
        {"type": "image", "base64": payload, "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": payload, "mime_type": "image/png"},
    ]
    for block in blocks:
        img = block_to_image(block, max_side=150)
        assert img.mode == "RGB" and img.size == (100, 150)
    full = block_to_image(blocks[0], max_side=1024)
    assert np.array_equal(np.asarray(full), pixels)  # PNG round trip, no resize


def test_factory_builds_this_backend(tiny_dirs, isolated_home):
    from agent.backends.factory import build_backend

    backend = build_backend(AgentConfig(backend="transformers", local_model=str(tiny_dirs["llava"]), device="cpu"))
    assert isinstance(backend.model, TransformersChatModel) and backend.supports_logprobs
    auto = build_backend(AgentConfig(backend="auto", local_model=str(tiny_dirs["llava"]), device="cpu"))
    assert isinstance(auto.model, TransformersChatModel), auto.reason


@pytest.mark.gpu
def test_cuda_bfloat16(tiny_dirs):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = AgentConfig(local_model=str(tiny_dirs["qwen3_vl"]), device="cuda", dtype="auto")
    model = TransformersChatModel.from_config(config, max_new_tokens=3)
    assert model.hf_model.device.type == "cuda" and model.hf_model.dtype in (torch.bfloat16, torch.float16)
    reply = model.invoke(
        [HumanMessage([{"type": "text", "text": "x"}, image_content_block(_image())])], logprobs=True
    )
    assert reply.usage_metadata["output_tokens"] >= 1
    assert all(np.isfinite(e["logprob"]) for e in reply.response_metadata["logprobs"]["content"])
