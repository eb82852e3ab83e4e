"""Model backends: LangChain chat models built from `AgentConfig`.

`factory.build_backend(config)` picks one of ``openai`` (any OpenAI-compatible server, vLLM first),
``transformers`` (in-process), ``scripted`` (replay) or ``none``. Only this package knows an LLM
client; the agent sees a `BaseChatModel`.
"""

from agent.backends.factory import BACKEND_NAMES, Backend, build_backend

__all__ = ["BACKEND_NAMES", "Backend", "build_backend"]
