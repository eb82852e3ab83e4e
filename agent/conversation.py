"""Build the model's messages: system prompt, the plan turn with images, memory examples."""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from agent.backends.messages import fit_image_budget, stored_image_block
from agent.explain import evidence_line
from agent.runtime import AgentRuntime, RunResources
from agent.state import State
from tools.types import Evidence


def evidence_lines(state: State) -> list[str]:
    return [evidence_line(Evidence.model_validate(e)) for e in state.get("evidence", [])]


def image_slots(budget: int, n_references: int, n_anomalies: int, n_normals: int) -> tuple[int, int, int]:
    """How the first request spends its image budget besides the query.

    Returns:
        (reference images, labelled-anomaly example images, normal example images). With labelled
        anomalies and at least two free slots, a third of the slots (at least one) goes to them, so
        the model always sees what a defect of this category looks like; references take the rest,
        then normal examples (only shown when the run has no references).
    """
    slots = max(0, budget - 1)
    anomalies = min(n_anomalies, max(1, slots // 3)) if slots >= 2 else 0
    refs = min(n_references, slots - anomalies)
    normals = min(n_normals, slots - anomalies - refs)
    anomalies = min(n_anomalies, slots - refs - normals)
    return refs, anomalies, normals


def initial_messages(state: State, rt: AgentRuntime, res: RunResources) -> list[BaseMessage]:
    """System prompt, then one human turn: the plan text, the query image and reference images,
    then memory examples as their own turn: the labelled anomalies, and the normals when the run has
    no references of its own. At most `max_images_per_request` images in all (`image_slots`);
    references and examples beyond it are listed as text."""
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
    examples = state.get("memory_examples") or []
    anomalies = [e for e in examples if e["example"]["label"] == "anomalous"]
    # normals are already shown as references when the run has them
    normals = [] if res.ctx.reference_ids else [e for e in examples if e["example"]["label"] == "normal"]
    n_refs, n_anom, n_norm = image_slots(cfg.max_images_per_request, len(res.ctx.reference_ids), len(anomalies), len(normals))
    content: list = [{"type": "text", "text": plan}, stored_image_block(query, cfg.image_max_side, cfg.image_format)]
    for ref_id in res.ctx.reference_ids[:n_refs]:
        content.append({"type": "text", "text": f"Normal reference {ref_id}:"})
        content.append(stored_image_block(res.images.get(ref_id), cfg.image_max_side, cfg.image_format))
    unshown = res.ctx.reference_ids[n_refs:]
    if unshown:
        content.append({"type": "text", "text": f"Normal references {', '.join(unshown)} are not shown (at most "
                        f"{cfg.max_images_per_request} images per request); the tools use them all."})
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(content)]
    if anomalies or normals:
        from memory.examples import MemoryExample, render_examples

        header = prompts.render("example_header", n=len(anomalies) + len(normals), category=category)
        messages.append(HumanMessage(header))
        for group, n_images in ((anomalies, n_anom), (normals, n_norm)):
            pairs = [(MemoryExample.model_validate(e["example"]), e["similarity"]) for e in group]
            messages.extend(render_examples(pairs, max_images=n_images, max_side=cfg.image_max_side, list_rest=True))
    return messages


def image_turn(rt: AgentRuntime, res: RunResources, tool: str, image_ids: list[str]) -> HumanMessage:
    """A human turn showing images a tool produced (crops, aligned references), each after its id."""
    ids = image_ids[: max(1, rt.config.max_images_per_request - 1)]
    content: list = [{"type": "text", "text": rt.prompts.render("tool_images", tool=tool, ids=ids)}]
    for image_id in ids:
        content.append({"type": "text", "text": f"{image_id}:"})
        content.append(stored_image_block(res.images.get(image_id), rt.config.image_max_side, rt.config.image_format))
    return HumanMessage(content)


def request_messages(rt: AgentRuntime, res: RunResources, state: State, messages: list[BaseMessage]) -> tuple[list[BaseMessage], dict]:
    """The messages to send within the request's image budget, and the state update that records
    what was replaced (``image_drops``: one entry per model call that dropped images).

    The query image always stays; older images become a text line (`fit_image_budget`).
    """
    cfg = rt.config
    query = res.images.get(state["query_id"])
    keep = {stored_image_block(query, cfg.image_max_side, cfg.image_format)["image_url"]["url"]}
    fitted, dropped = fit_image_budget(messages, cfg.max_images_per_request, keep)
    if not dropped:
        return fitted, {}
    return fitted, {"image_drops": [{"model_call": state.get("model_calls", 0) + 1, "dropped": dropped}]}
