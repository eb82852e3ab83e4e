"""`anomaly-agent tools list` and `anomaly-agent tools run NAME IMG... [--refs ...]`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, config_from_cli, print_json_line, unique_stems
from agent.errors import UserInputError


def parse_tool_args(items: list[str]) -> dict:
    """``key=value`` strings -> a dict; values are JSON when they parse (3, 0.5, true, [1,2]), else text."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            msg = f"--arg {item!r} is not key=value. Fix: write e.g. --arg top_k_regions=5"
            raise UserInputError(msg)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def validate_tool_args(tool, args: dict) -> dict:
    """Check `args` against the tool's `Input` up front; one-line error naming the valid arguments."""
    from pydantic import ValidationError

    try:
        tool.Input.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        valid = ", ".join(tool.Input.model_fields) or "none"
        msg = f"invalid --arg for {tool.name}: {problems}. Fix: valid arguments are {valid}"
        raise UserInputError(msg) from None
    return args


def _human(image: str, output) -> str:
    lines = [f"{image}:"]
    score = "-" if output.score is None else f"{output.score:.3f}"
    raw = "-" if output.raw_score is None else f"{output.raw_score:.4g}"
    lines.append(f"  score {score}  (raw {raw})")
    for region in output.regions:
        peak = "" if region.score is None else f" peak {region.score:.4g}"
        lines.append(f"  region {list(region.bbox_xyxy)}{peak} {region.label}".rstrip())
    lines.append(f"  {output.summary}")
    if output.map_path:
        lines.append(f"  map: {output.map_path}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="List and run the evidence tools on their own.", no_args_is_help=True)

    @group.command("list")
    def list_tools() -> None:
        """Each registered tool with a one-line description."""
        from tools.registry import get_tool_class, tool_names

        names = tool_names()
        width = max(len(n) for n in names) if names else 0
        for name in names:
            first = get_tool_class(name).description.strip().split(". ")[0].rstrip(".")
            typer.echo(f"{name:<{width}}  {first}.")

    @group.command("run")
    def run_tool(
        name: str = typer.Argument(..., help="Tool name (see `tools list`)."),
        images: list[str] = typer.Argument(..., help="Image files to run the tool on (one result each)."),
        refs: list[str] = typer.Option(None, "--refs", help="Normal references: a folder, a glob or files (repeatable)."),
        category: str | None = typer.Option(None, "--category", help="Category name, e.g. 'bottle'."),
        arg: list[str] = typer.Option(None, "--arg", help="Tool argument key=value (repeatable; JSON values)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON line per image."),
        out: Path | None = typer.Option(None, "--out", help="Folder for maps and overlay PNGs."),
        config: Path | None = ConfigOption,
    ) -> None:
        """Run one tool on several images in one process (references are embedded once)."""
        from tools.base import ToolContext
        from tools.images import ImageStore
        from tools.maps import write_overlay
        from tools.references import resolve_references
        from tools.registry import UnknownToolError, create_tool

        try:
            tool = create_tool(name)
        except UnknownToolError as exc:
            raise UserInputError(str(exc)) from None
        cfg = config_from_cli(config)
        tool_args = validate_tool_args(tool, parse_tool_args(arg or []))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        store = ImageStore(max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side)
        ref_ids = [store.add_file(p, prefix="ref") for p in resolve_references(refs or None)]
        image_ids = [store.add_file(p, prefix="img") for p in images]  # bad image: exit 2 before any work
        ctx = ToolContext(store, reference_ids=ref_ids, settings=cfg.tool_settings(out_dir=out), category=category)
        stems = unique_stems(images)  # test/good/000.png and test/hole/000.png: good_000, hole_000
        for image, image_id in zip(images, image_ids, strict=True):
            ctx.query_id = image_id
            output = tool.run(dict(tool_args), ctx)
            ctx.cache.release()  # this image's own features; the references' stay
            overlay = None
            if out is not None:
                amap = output.map_array  # the array the tool attached, else its raw file
                if amap is not None:
                    overlay = str(write_overlay(store.get(image_id).pixels, amap, out / f"{stems[image]}_{name}.png",
                                                regions=output.regions))
            if as_json:
                print_json_line({"image": image, "tool": name, **output.model_dump(mode="json"),
                                 **({"overlay": overlay} if overlay else {})})
            else:
                typer.echo(_human(image, output) + (f"\n  overlay: {overlay}" if overlay else ""))

    app.add_typer(group, name="tools")
