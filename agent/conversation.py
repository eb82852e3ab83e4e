"""Build the model's messages: system prompt, the plan turn with images, memory examples."""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from agent.backends.messages import stored_image_block
from agent.explain import evidence_line
from agent.runtime import AgentRuntime, RunResources
from agent.state import State
from tools.types import Evidence


def evidence_lines(state: State) -> list[str]:
    return [evidence_line(Evidence.model_validate(e)) for e in state.get("evidence", [])]


def initial_messages(state: State, rt: AgentRuntime, res: RunResources) -> list[BaseMessage]:
    """System prompt, then one human turn: the plan text, the query image and reference images
    (at most `max_images_per_call` images in all), then memory examples as their own turn (only the
    labelled anomalies when the run already has normal references)."""
    cfg = rt.config
    prompts = rt.prompts
    category = state.get("category")
    query = res.images.get(state["query_id"])
    system = prompts.render("system", category=category, notes=state.get("notes") or "")
    plan = prompts.render(
        "plan",
        category=category,
        query_id=query.id,
        width=query.width,
        height=query.height,
        n_references=len(res.ctx.reference_ids),
        reference_ids=res.ctx.reference_ids,
        evidence=evidence_lines(state),
        question=state.get("question") or "",
    )
    content: list = [{"type": "text", "text": plan}, stored_image_block(query, cfg.image_max_side, cfg.image_format)]
    budget = cfg.max_images_per_call - 1
    for ref_id in res.ctx.reference_ids[:budget]:
        content.append({"type": "text", "text": f"Normal reference {ref_id}:"})
        content.append(stored_image_block(res.images.get(ref_id), cfg.image_max_side, cfg.image_format))
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(content)]
    examples = state.get("memory_examples") or []
    if res.ctx.reference_ids:  # normals are already shown as references; add the labelled anomalies
        examples = [e for e in examples if e["example"]["label"] == "anomalous"]
    if examples:
        from memory.examples import MemoryExample, render_examples

        pairs = [(MemoryExample.model_validate(e["example"]), e["similarity"]) for e in examples]
        header = prompts.render("example_header", n=len(pairs), category=category)
        messages.append(HumanMessage(header))
        messages.extend(render_examples(pairs, max_images=cfg.max_images_per_call, max_side=cfg.image_max_side))
    return messages


def image_turn(rt: AgentRuntime, res: RunResources, tool: str, image_ids: list[str]) -> HumanMessage:
    """A human turn showing images a tool produced (crops, aligned references)."""
    ids = image_ids[: rt.config.max_images_per_call]
    content: list = [{"type": "text", "text": rt.prompts.render("tool_images", tool=tool, ids=ids)}]
    for image_id in ids:
        content.append(stored_image_block(res.images.get(image_id), rt.config.image_max_side, rt.config.image_format))
    return HumanMessage(content)
