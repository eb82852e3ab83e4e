"""`anomaly-agent serve-model MODEL [--port] [--dry-run] [-- extra vllm args]`.

Prints or execs the ``vllm serve`` command for a multimodal tool-calling model: the tool-call
parser matched to the model family, ``--enable-auto-tool-choice``, ``--limit-mm-per-prompt``,
``--max-model-len`` and ``--max-logprobs``. vLLM is never installed into anomaly-agent's
environment (it pins its own torch); install it in its own virtualenv or use its container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import typer

from agent.errors import UserInputError

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"

# (pattern on the lower-cased model id, vLLM --tool-call-parser). First match wins.
TOOL_PARSERS: tuple[tuple[str, str], ...] = (
    (r"qwen3-coder", "qwen3_coder"),
    (r"qwen|qwq|hermes", "hermes"),  # Qwen2.5(-VL), Qwen3(-VL): <tool_call>{...}</tool_call>
    (r"llama-?4", "llama4_pythonic"),
    (r"llama-?3", "llama3_json"),
    (r"mistral|mixtral|pixtral|ministral|magistral|devstral", "mistral"),
    (r"internlm", "internlm"),
    (r"glm-?4\.5", "glm45"),
    (r"granite", "granite"),
    (r"phi-?4-mini", "phi4_mini_json"),
    (r"kimi-k2", "kimi_k2"),
)
# families whose processors also take video: give video no budget (saves memory at start-up)
_VIDEO_FAMILIES = r"qwen2\.5-vl|qwen3-vl|qwen2-vl"
_NOTES = {
    "llama3_json": "Llama 3.x tool calling also needs vLLM's tool chat template: add "
    "`-- --chat-template examples/tool_chat_template_llama3.2_json.jinja` (from the vLLM repo).",
    "mistral": "official Mistral checkpoints also want `-- --tokenizer-mode mistral --config-format mistral --load-format mistral`.",
}
INSTALL_HINT = (
    "install vLLM in its own environment or container, never into anomaly-agent's virtualenv "
    "(it pins its own torch and CUDA): e.g. `python -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm` "
    "then put ~/vllm-env/bin on PATH, or run the printed command inside the `vllm/vllm-openai` container"
)


def tool_parser_for(model: str) -> str:
    """vLLM's ``--tool-call-parser`` for a model id or path.

    Raises:
        UserInputError: unknown family; the message names the flag to pass.
    """
    name = model.lower()
    for pattern, parser in TOOL_PARSERS:
        if re.search(pattern, name):
            return parser
    known = ", ".join(sorted({p for _, p in TOOL_PARSERS}))
    msg = (
        f"no known tool-call parser for {model!r}. Fix: pass --tool-call-parser NAME "
        f"(vLLM's tool calling docs list them; ours: {known})"
    )
    raise UserInputError(msg)


def build_vllm_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int = 32768,
    max_logprobs: int = 20,
    images: int | None = None,
    tool_parser: str | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The ``vllm serve`` argv for `model` (a HF id or a local path).

    `images` (default: `AgentConfig.max_images_per_request`) becomes ``--limit-mm-per-prompt``: the
    agent keeps every request within the same number, so one setting governs both.
    """
    if images is None:
        from agent.config import AgentConfig

        images = AgentConfig.model_fields["max_images_per_request"].default
    if not model.strip():
        msg = "MODEL is empty. Fix: name a HF model id or a local path, e.g. " + DEFAULT_MODEL
        raise UserInputError(msg)
    if not 1 <= port <= 65535:
        msg = f"--port {port} is not a TCP port. Fix: use 1..65535"
        raise UserInputError(msg)
    limits = {"image": images}
    if re.search(_VIDEO_FAMILIES, model.lower()):
        limits["video"] = 0
    return [
        "vllm",
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        tool_parser or tool_parser_for(model),
        "--limit-mm-per-prompt",
        json.dumps(limits, separators=(", ", ": ")),
        "--max-model-len",
        str(max_model_len),
        "--max-logprobs",
        str(max_logprobs),
        *extra,
    ]


def register(app: typer.Typer) -> None:
    @app.command(
        "serve-model",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def serve_model(
        ctx: typer.Context,
        model: str = typer.Argument(DEFAULT_MODEL, help="HF model id or local path of a multimodal tool-calling model."),
        port: int = typer.Option(8000, "--port", help="Port to serve on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 to serve other machines)."),
        max_model_len: int = typer.Option(32768, "--max-model-len", help="Context length (tokens); lower it to save GPU memory."),
        max_logprobs: int = typer.Option(20, "--max-logprobs", help="Most logprobs a request may ask for."),
        images: int | None = typer.Option(
            None, "--images", help="Most images per request (vLLM's --limit-mm-per-prompt); default: the "
            "max_images_per_request setting (4), which the agent keeps every request within."),
        tool_parser: str | None = typer.Option(None, "--tool-call-parser", help="Override the parser matched to the family."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the command instead of running it."),
    ) -> None:
        """Run (or print) the `vllm serve` command for MODEL. Extra vLLM flags go after `--`."""
        if images is None:
            from agent.config import load_config

            images = load_config().max_images_per_request
        cmd = build_vllm_command(
            model,
            host=host,
            port=port,
            max_model_len=max_model_len,
            max_logprobs=max_logprobs,
            images=images,
            tool_parser=tool_parser,
            extra=list(ctx.args),
        )
        parser = cmd[cmd.index("--tool-call-parser") + 1]
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        use = f"then: export ANOMALY_AGENT_BASE_URL=http://{shown_host}:{port}/v1 ANOMALY_AGENT_MODEL={shlex.quote(model)}"
        if dry_run:
            typer.echo(shlex.join(cmd))
            typer.echo(f"# {use}", err=True)
            typer.echo(f"# vLLM is not installed here on purpose: {INSTALL_HINT}", err=True)
            if parser in _NOTES:
                typer.echo(f"# note: {_NOTES[parser]}", err=True)
            return
        if shutil.which("vllm") is None:
            msg = f"`vllm` is not on PATH. Fix: {INSTALL_HINT}; or print the command with --dry-run"
            raise UserInputError(msg)
        typer.echo(f"exec: {shlex.join(cmd)}\n{use}", err=True)
        os.execvp("vllm", cmd)
