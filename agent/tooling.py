"""Our tools as LangChain `StructuredTool`s (args_schema = the tool's pydantic `Input`).

`tools/` stays free of LangChain; this module is the only bridge. A tool returns (content, artifact):
the content is the evidence line the model reads, the artifact the `Evidence` as a dict.
"""

from __future__ import annotations

from functools import cache

from langchain_core.tools import StructuredTool

from agent.explain import evidence_line
from agent.runtime import AgentRuntime, RunResources
from tools.registry import get_tool_class


@cache
def schema_tool(name: str) -> StructuredTool:
    """A StructuredTool with the tool's name, description and schema, for `bind_tools` only."""
    cls = get_tool_class(name)

    def _not_bound(**_: object) -> str:
        msg = f"{name} is a schema-only tool; run tools through run_tools"
        raise RuntimeError(msg)

    return StructuredTool.from_function(_not_bound, name=cls.name, description=cls.description, args_schema=cls.Input)


def run_tool_for(rt: AgentRuntime, res: RunResources, name: str) -> StructuredTool:
    """A StructuredTool that runs `name` in this run's context and returns (line, Evidence dict)."""
    cls = get_tool_class(name)

    def _call(**kwargs: object) -> tuple[str, dict]:
        args = {k: v for k, v in kwargs.items() if v is not None}
        evidence = rt.run_tool(name, args, res)
        return evidence_line(evidence), evidence.model_dump(mode="json")

    return StructuredTool.from_function(
        _call, name=cls.name, description=cls.description, args_schema=cls.Input,
        response_format="content_and_artifact",
    )
