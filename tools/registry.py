"""Tool registry: name -> class, with an error that lists the valid names."""

from __future__ import annotations

from tools.base import Tool

_REGISTRY: dict[str, type[Tool]] = {}


class UnknownToolError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tool {name!r}; valid tools: {', '.join(sorted(_REGISTRY))}")

    def __str__(self) -> str:
        return self.args[0]


def register(cls: type[Tool]) -> type[Tool]:
    """Class decorator: add a tool class to the registry under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_tools() -> None:
    """Import the tool modules so their `@register` decorators run (cheap: weights load in setup)."""
    import importlib

    for module in ("zoom", "enhance", "patch_knn", "clip_similarity", "reference_diff", "sam_crop", "parts_check"):
        try:
            importlib.import_module(f"tools.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tools.{module}":
                raise


def tool_names() -> list[str]:
    _load_builtin_tools()
    return sorted(_REGISTRY)


def get_tool_class(name: str) -> type[Tool]:
    _load_builtin_tools()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownToolError(name) from None


def create_tool(name: str) -> Tool:
    """A fresh instance of the named tool (not yet set up)."""
    return get_tool_class(name)()
