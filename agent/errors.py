"""Error kinds the CLI maps to exit codes (2: bad input or config, 3: model/server failure, 4: a bug).

File-system errors about paths the user named (cannot be created: `PermissionError`; already a file:
`FileExistsError`, `NotADirectoryError`, `IsADirectoryError`) count as bad input: exit 2.
"""

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

    return (UserInputError, ConfigError, ImageInputError, ToolError, MemoryStoreError, FileNotFoundError,
            PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)


INTERNAL_EXIT = 4


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (an OSError names its path; newlines are folded)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
        fix = {PermissionError: "choose a location you can write to, or fix its permissions",
               FileExistsError: "name a folder, or remove/rename the file in the way",
               NotADirectoryError: "a folder is needed there, not a file",
               IsADirectoryError: "a file is needed there, not a folder"}.get(type(exc))
        if fix:
            text += f". Fix: {fix}"
    return " ".join(text.split())
