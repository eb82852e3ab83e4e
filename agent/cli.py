"""The `anomaly-agent` command line. Each command group lives in `agent/commands/<name>.py`.

Known errors print one line (cause and fix) and exit with a documented code: 2 for bad input or
configuration, 3 for a model/server failure; any other error is a bug: one line and exit 4 (never 1,
which `detect --fail-on-anomaly` reserves for "anomalous"). `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer

from agent.errors import INTERNAL_EXIT, exit_code_for, one_line

app = typer.Typer(
    name="anomaly-agent",
    help="Training-free anomaly detection: measured evidence tools + a multimodal LLM agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in help order. Each exposes `register(app)`.
_COMMAND_MODULES = (
    "detect",
    "chat",
    "eval",
    "report",
    "tools",
    "memory",
    "synth",
    "serve",
    "serve_model",
    "doctor",
    "config",
)


def _version() -> str:
    """The installed package's version (the source tree's pyproject.toml when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anomaly-agent")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"anomaly-agent {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """anomaly-agent: is this image anomalous, how confident, where, and why."""


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"agent.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"agent.commands.{name}":
                continue  # not built yet: the CLI lists only commands that work
            raise
        module.register(app)


_register_commands()


def _cli_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, usage/click errors, abort) classes of the installed click and of the copy typer bundles."""
    import click

    exits, errors, aborts = [typer.Exit, click.exceptions.Exit], [click.ClickException], [typer.Abort, click.Abort]
    try:
        from typer._click.exceptions import ClickException as BundledClickException

        errors.append(BundledClickException)
    except ImportError:  # typer versions that use the installed click
        pass
    return tuple(exits), tuple(errors), tuple(aborts)


def _click_exit(exc: BaseException) -> int | None:
    """Exit code for the CLI framework's own exceptions (usage errors print their message), else None."""
    exits, errors, aborts = _cli_exception_types()
    if isinstance(exc, exits):
        return exc.exit_code
    if isinstance(exc, errors):
        exc.show()
        return exc.exit_code
    if isinstance(exc, aborts):
        print("Aborted.", file=sys.stderr)
        return 130
    return None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ray" in argv:  # `eval --ray` without an address: a local Ray (click has no optional values)
        from agent.commands.eval import bare_ray_flag

        argv = bare_ray_flag(argv)
    debug = "--debug" in argv
    try:
        result = app(args=argv, prog_name="anomaly-agent", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - mapped to exit codes below
        handled = _click_exit(exc)
        if handled is not None:
            return handled
        if debug:
            raise
        code = exit_code_for(exc)
        if code is None:
            print(f"error: internal error: {type(exc).__name__}: {one_line(exc)}. This is a bug: rerun with "
                  "--debug for the traceback and report it", file=sys.stderr)
            return INTERNAL_EXIT
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return code
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
