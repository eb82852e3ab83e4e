"""Error kinds the CLI maps to exit codes (2: bad input or config, 3: model/server failure)."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input or configuration the user can fix; the message names the cause and the fix. Exit 2."""


class ModelServerError(RuntimeError):
    """The model or its server failed (unreachable, garbage, timeout); names the URL and the fix. Exit 3."""


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code for a known error, or None for a bug (shown with its traceback)."""
    if isinstance(exc, ModelServerError):
        return 3
    if isinstance(exc, input_error_types()):
        return 2
    return None


def input_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or configuration (exit 2, `error_kind="input"`)."""
    from agent.config import ConfigError
    from memory.store import MemoryStoreError
    from tools.base import ToolError
    from tools.images import ImageInputError

    return (UserInputError, ConfigError, ImageInputError, ToolError, MemoryStoreError, FileNotFoundError)
