"""A corpus of bad and odd inputs, built on the spot, run through the CLI in-process.

Each case gets its documented exit code (2: bad input or config, 3: the model server, 4: a bug, 0: an
odd but valid input, with its one `note:` / `warning:` line), exactly one `error:` line naming the
cause (no traceback), and nothing lost: `detect --json`
writes one record per image given. The cases fail before any feature extraction (or use the cheap
zoom tool), so the corpus runs in seconds; `test_batch_keeps_every_item` judges one mixed batch.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from tests.agent_fixtures import texture

SIDE = 64


def _colour(seed: int) -> np.ndarray:
    """A 64x64 RGB texture with real colour (channels differ)."""
    grey = texture(seed)[:SIDE, :SIDE].astype(np.float32)
    return np.clip(grey * np.array([1.0, 0.7, 0.4]), 0, 255).astype(np.uint8)


def _with_defect(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    out[20:44, 20:44] = (20, 20, 20)
    return out


def _png(path: Path, pixels: np.ndarray | None = None, **kw) -> Path:
    Image.fromarray(_colour(7) if pixels is None else pixels, **kw).save(path)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with one tiny (truncated) data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


@dataclass
class Case:
    """argv (with {refs}, {good}, {bad_image}, {root} filled in), env, expected code and message."""

    argv: list[str]
    code: int = 2
    message: str = ""
    env: dict[str, str] = field(default_factory=dict)
    records: int | None = None  # detect --json: records expected on stdout


def _detect(image: str, *extra: str, message: str, records: int = 1, **kw) -> Case:
    return Case(["detect", image, "--refs", "{refs}", "--backend", "none", "--json", *extra],
                message=message, records=records, **kw)


# builders: (root) -> the bad file's path (as text) ---------------------------------------------
def _fifo(root: Path) -> str:
    os.mkfifo(root / "pipe.png")
    return str(root / "pipe.png")


def _empty(root: Path) -> str:
    (root / "empty.png").write_bytes(b"")
    return str(root / "empty.png")


def _text(root: Path) -> str:
    (root / "notes.png").write_text("this is not an image\n")
    return str(root / "notes.png")


def _truncated(fmt: str):
    def build(root: Path) -> str:
        path = root / f"cut.{fmt.lower()}"
        Image.fromarray(_colour(3)).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return str(path)
    return build


def _size(w: int, h: int):
    return lambda root: str(_png(root / f"size{w}x{h}.png", np.zeros((h, w, 3), np.uint8)))


def _float_tiff(root: Path) -> str:
    path = root / "float.tif"
    Image.fromarray(np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32), mode="F").save(path)
    return str(path)


def _gif(root: Path) -> str:
    path = root / "anim.gif"
    Image.fromarray(_colour(1)).save(path, format="GIF")
    return str(path)


def _dangling(root: Path) -> str:
    (root / "link.png").symlink_to(root / "gone.png")
    return str(root / "link.png")


def _garbage_png(root: Path) -> str:
    path = root / "garbage.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return str(path)


def _empty_dir(root: Path) -> str:
    (root / "nothing").mkdir()
    return str(root / "nothing")


IMAGE_CASES = {
    "missing file": (lambda root: str(root / "missing.png"), "file not found"),
    "dangling symlink": (_dangling, "file not found"),
    "name too long": (lambda root: str(root / ("x" * 300 + ".png")), "file not found"),
    "empty folder": (_empty_dir, "no image files in this folder"),
    "named pipe": (_fifo, "not a regular file (it is a named pipe)"),
    "character device": (lambda root: "/dev/null", "not a regular file (it is a device)"),
    "empty file": (_empty, "not an image"),
    "text renamed png": (_text, "not an image"),
    "garbage after png signature": (_garbage_png, "not an image"),
    "truncated png": (_truncated("PNG"), "truncated or corrupt"),
    "truncated jpeg": (_truncated("JPEG"), "truncated or corrupt"),
    "truncated tiff": (_truncated("TIFF"), "truncated or corrupt"),
    "1x1": (_size(1, 1), "too small to judge (1x1"),
    "10000x10 strip": (_size(10000, 10), "too small to judge (10000x10"),
    "huge header": (lambda root: str(_png_header(root / "huge.png", 20000, 20000)), "image too large"),
    "float tiff": (_float_tiff, "unsupported pixel mode"),
    "gif": (_gif, "format GIF is not supported"),
}

CASES: dict[str, Case] = {
    name: _detect(f"{{build:{name}}}", message=message) for name, (_, message) in IMAGE_CASES.items()
}
CASES |= {
    # raising max_image_pixels works: Pillow's bomb limit (89 MP) no longer refuses first
    "huge header, limit raised": _detect("{build:huge header}", message="truncated or corrupt",
                                         env={"ANOMALY_AGENT_MAX_IMAGE_PIXELS": "500000000"}),
    "huge header, limit named": _detect("{build:huge header}", message="ANOMALY_AGENT_MAX_IMAGE_PIXELS"),
    "strip, min side named": _detect("{build:10000x10 strip}", message="ANOMALY_AGENT_MIN_IMAGE_SIDE"),
    # references
    "refs glob matches nothing": Case(["detect", "{good}", "--refs", "{root}/nope/*.png", "--backend", "none"],
                                      message="no reference images found"),
    "refs joined by commas": Case(["detect", "{good}", "--refs", "{good},{good}", "--backend", "none"],
                                  message="joined by commas. Fix: give each path as its own entry (CLI: repeat --refs"),
    "image glob matches nothing": Case(["detect", "{root}/nope/*.png", "--backend", "none"],
                                       message="no image files match this pattern"),
    "refs folder missing": Case(["detect", "{good}", "--refs", "{root}/no-such-dir", "--backend", "none"],
                                message="does not exist"),
    "refs holds a corrupt file": Case(["detect", "{good}", "--refs", "{build:truncated png}", "--backend", "none"],
                                      message="truncated or corrupt"),
    "refs holds a 1x1 image": Case(["detect", "{good}", "--refs", "{build:1x1}", "--backend", "none"],
                                   message="too small to judge"),
    "refs memory without a store": Case(["detect", "{good}", "--refs", "memory", "--category", "tile",
                                         "--backend", "none"], message="no memory store"),
    "blank category": Case(["memory", "add", "{good}", "--category", " \t ", "--label", "normal"],
                           message="empty category name"),
    # configuration
    "config not yaml": Case(["detect", "{good}", "--config", "{file:cfg.yaml=backend: [none\n}"],
                            message="not valid YAML"),
    "config not a mapping": Case(["detect", "{good}", "--config", "{file:cfg.yaml=- 1\n- 2\n}"],
                                 message="must hold a mapping"),
    "config unknown key": Case(["detect", "{good}", "--config", "{file:cfg.yaml=bogus_key: 1\n}"],
                               message="unknown setting(s) bogus_key"),
    "config file missing": Case(["detect", "{good}", "--config", "{root}/none.yaml"], message="not found"),
    "config nan timeout": Case(["detect", "{good}", "--config", "{file:cfg.yaml=request_timeout_s: .nan\n}"],
                               message="request_timeout_s (ANOMALY_AGENT_REQUEST_TIMEOUT_S)"),
    "env inf timeout": Case(["detect", "{good}"], env={"ANOMALY_AGENT_REQUEST_TIMEOUT_S": "inf"},
                            message="request_timeout_s (ANOMALY_AGENT_REQUEST_TIMEOUT_S): Input should be a finite"),
    "env negative timeout": Case(["detect", "{good}"], env={"ANOMALY_AGENT_REQUEST_TIMEOUT_S": "-5"},
                                 message="greater than 0"),
    "env inf wall time": Case(["detect", "{good}"], env={"ANOMALY_AGENT_MAX_WALL_S": "Infinity"},
                              message="max_wall_s"),
    "env threshold not a number": Case(["detect", "{good}"], env={"ANOMALY_AGENT_THRESHOLD": "high"},
                                       message="threshold"),
    "env unknown backend": Case(["detect", "{good}"], env={"ANOMALY_AGENT_BACKEND": "gpt"}, message="backend"),
    "env zero pixel limit": Case(["detect", "{good}"], env={"ANOMALY_AGENT_MAX_IMAGE_PIXELS": "0"},
                                 message="max_image_pixels"),
    "env zero min side": Case(["detect", "{good}"], env={"ANOMALY_AGENT_MIN_IMAGE_SIDE": "0"},
                              message="min_image_side"),
    "negative threshold": Case(["detect", "{good}", "--threshold", "-0.1", "--backend", "none"],
                               message="threshold"),
    "threshold above 1": Case(["detect", "{good}", "--threshold", "1.5", "--backend", "none"],
                              message="threshold"),
    # memory paths
    "memory path under a file": Case(["memory", "add", "{good}", "--category", "tile", "--label", "normal",
                                      "--memory", "{file:plain.txt=x}/mem"], message="Not a directory"),
    "memory path not writable": Case(["memory", "add", "{good}", "--category", "tile", "--label", "normal",
                                      "--memory", "{root}/locked/mem"], message="Permission denied"),
    "memory list of no store": Case(["memory", "list", "--memory", "{root}/nostore"], message="no memory store"),
    # eval
    "eval --out is a file": Case(["eval", "{dataset}", "--out", "{file:taken=x}", "--backend", "none",
                                  "--no-progress", "--no-report", "--bootstrap", "0"], message="File exists"),
    "eval dataset missing": Case(["eval", "{root}/no-dataset", "--backend", "none"], message="not found"),
    "eval dataset empty": Case(["eval", "{build:empty folder}", "--backend", "none"],
                               message="no category folders"),
    "eval bad coverage": Case(["eval", "{dataset}", "--min-coverage", "2", "--backend", "none"],
                              message="--min-coverage"),
    "detect --out is a file": Case(["detect", "{good}", "--out", "{file:taken=x}", "--backend", "none"],
                                   message="File exists"),
    "detect --trace is a file": Case(["detect", "{good}", "--trace", "{file:taken=x}", "--backend", "none"],
                                     message="File exists"),
    # command line
    "tools run unknown tool": Case(["tools", "run", "nosuchtool", "{good}"], message="nosuchtool"),
    "tools run bad --arg": Case(["tools", "run", "zoom", "{good}", "--arg", "box"], message="not key=value"),
    "tools run fifo": Case(["tools", "run", "zoom", "{build:named pipe}", "--arg", "box=[0,0,8,8]"],
                           message="not a regular file"),
    # references, caps and caches
    "refs holds a named pipe": Case(["detect", "{good}", "--refs", "{build:named pipe}", "--backend", "none"],
                                    message="not a regular file (it is a named pipe)"),
    "refs holds a text file": Case(["detect", "{good}", "--refs", "{build:text renamed png}", "--backend", "none"],
                                   message="not an image"),
    "--max-references 0": Case(["detect", "{good}", "--refs", "{refs}", "--backend", "none",
                                "--max-references", "0"], message="max_references"),
    "env max references not a number": Case(["detect", "{good}"], env={"ANOMALY_AGENT_MAX_REFERENCES": "many"},
                                            message="max_references (ANOMALY_AGENT_MAX_REFERENCES)"),
    "env zero feature cache": Case(["detect", "{good}"], env={"ANOMALY_AGENT_FEATURE_CACHE_MB": "0"},
                                   message="feature_cache_mb"),
    "env inf feature cache": Case(["detect", "{good}"], env={"ANOMALY_AGENT_FEATURE_CACHE_MB": "inf"},
                                  message="feature_cache_mb"),
    # model backend: checked once before the batch
    "dead model server": Case(["detect", "{good}", "{good}", "--refs", "{refs}", "--backend", "openai",
                               "--base-url", "{deadurl}"], code=3, message="connection refused"),
    "dead model server, eval": Case(["eval", "{dataset}", "--out", "{root}/runs", "--backend", "openai",
                                     "--base-url", "{deadurl}", "--no-progress", "--no-report"], code=3,
                                    message="before any image was judged"),
    # chat
    "chat without an image": Case(["chat", "--message", "hi", "--backend", "none"],
                                  message="chat needs an image to start a session"),
    "chat unknown session": Case(["chat", "--message", "hi", "--session", "nosuch", "--backend", "none"],
                                 message="no saved session 'nosuch'"),
}

# odd but valid input through detect: exit 0, no error line, and the note that says what happened
VALID = {
    "100 refs over the cap": (["detect", "{good}", "--refs", "{manyrefs}", "--backend", "none", "--json"],
                              "note: 100 references given, above the cap of 32"),
    "bank dir under a file": (["detect", "{good}", "--refs", "{refs}", "--backend", "none", "--json"],
                              "warning: could not store the reference bank"),
}

# odd but valid images: accepted (exit 0) through intake, by the cheap zoom tool
ODD = {
    "16-bit grey": lambda root: str(_png(root / "deep.png", (texture(5)[:SIDE, :SIDE, 0].astype(np.uint16) * 257))),
    "cmyk jpeg": lambda root: _save(Image.fromarray(_colour(2)).convert("CMYK"), root / "cmyk.jpg"),
    "palette with transparency": lambda root: _palette(root),
    "grey with alpha": lambda root: _save(Image.fromarray(_colour(2)).convert("LA"), root / "la.png"),
    "8-bit grey": lambda root: _save(Image.fromarray(_colour(2)).convert("L"), root / "grey.png"),
    "40x10 strip, min side lowered": lambda root: str(_png(root / "low.png", np.zeros((10, 40, 3), np.uint8))),
}


def _save(img: Image.Image, path: Path) -> str:
    img.save(path)
    return str(path)


def _palette(root: Path) -> str:
    img = Image.fromarray(_colour(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    path = root / "pal.png"
    img.save(path, transparency=0)
    return str(path)


@pytest.fixture
def corpus(tmp_path, isolated_home):
    refs = tmp_path / "refs"
    refs.mkdir()
    _png(refs / "ref0.png", _colour(1))
    good = _png(tmp_path / "good.png", _colour(2))
    dataset = tmp_path / "ds" / "tile"
    for sub in ("train/good", "test/good"):
        (dataset / sub).mkdir(parents=True)
        _png(dataset / sub / "000.png", _colour(3))
    return {"root": tmp_path, "refs": refs, "good": good, "dataset": tmp_path / "ds"}


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _many_refs(root: Path, n: int = 100) -> Path:
    folder = root / "many"
    if not folder.exists():
        folder.mkdir()
        for i in range(n):
            _png(folder / f"ref{i:03d}.png", _colour(1000 + i))
    return folder


def _fill(arg: str, corpus: dict) -> str:
    root = corpus["root"]
    if arg == "{deadurl}":
        return f"http://127.0.0.1:{_closed_port()}/v1"
    if arg == "{manyrefs}":
        return str(_many_refs(root))
    if arg.startswith("{build:"):
        name = arg[len("{build:"):].split("}")[0]
        sub = root / f"b{abs(hash(name))}"
        sub.mkdir(exist_ok=True)
        return IMAGE_CASES[name][0](sub) + arg.split("}", 1)[1]
    if arg.startswith("{file:"):
        spec, rest = arg[len("{file:"):].rsplit("}", 1)
        name, text = spec.split("=", 1)
        (root / name).write_text(text)
        return str(root / name) + rest
    return arg.format(**{k: str(v) for k, v in corpus.items()})


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, corpus, capsys, monkeypatch):
    case = CASES[name]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if name == "memory path not writable":  # root ignores file modes: deny like a read-only folder would
        locked = str(corpus["root"] / "locked")
        real_mkdir = Path.mkdir

        def deny(self, *args, **kwargs):
            if str(self).startswith(locked):
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", deny)
    argv = [_fill(a, corpus) for a in case.argv]
    code = main(argv)
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert code == case.code, (code, err)
    assert case.message in line, line
    if case.records is not None:
        rows = [json.loads(r) for r in out.splitlines() if r.startswith("{")]
        assert len(rows) == case.records and all(r["status"] == "error" for r in rows), out
        assert rows[0]["error_kind"] == "input"


@pytest.mark.parametrize("name", sorted(VALID))
def test_odd_but_valid_detect(name, corpus, capsys, monkeypatch):
    argv, message = VALID[name]
    if name == "bank dir under a file":
        (corpus["root"] / "plain").write_text("x")
        monkeypatch.setenv("ANOMALY_AGENT_BANK_DIR", str(corpus["root"] / "plain" / "banks"))
    code = main([_fill(a, corpus) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err and not [line for line in err.splitlines() if line.startswith("error:")]
    assert err.count(message) == 1, err
    rows = [json.loads(r) for r in out.splitlines() if r.startswith("{")]
    assert len(rows) == 1 and rows[0]["status"] == "ok"


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_valid_image(name, corpus, capsys, monkeypatch):
    if "min side" in name:
        monkeypatch.setenv("ANOMALY_AGENT_MIN_IMAGE_SIDE", "8")
    image = ODD[name](corpus["root"])
    code = main(["tools", "run", "zoom", image, "--arg", "box=[0,0,8,8]", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "error" not in err and "Traceback" not in err
    rows = [json.loads(r) for r in out.splitlines() if r.startswith("{")]
    assert len(rows) == 1 and rows[0]["image"] == image


def test_uncaught_error_outside_detect_is_exit_4_in_one_line(corpus, capsys, monkeypatch):
    """A bug outside `detect` is exit 4 and one line (never 1, which --fail-on-anomaly reserves)."""
    from agent.config import AgentConfig

    def broken(self):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(AgentConfig, "masked", broken)
    assert main(["config", "show"]) == 4
    line = _one_error_line(capsys.readouterr().err)
    assert "internal error: RuntimeError: boom second line" in line and "--debug" in line
    with pytest.raises(RuntimeError):
        main(["--debug", "config", "show"])


def test_batch_keeps_every_item(corpus, capsys):
    """One detect over good, anomalous, odd and broken images: a record per image in order, one error
    line each, unique overlays for same-named files, the summary line, and exit 1 despite the errors."""
    root = corpus["root"]
    for sub, pixels in (("good", _colour(2)), ("hole", _with_defect(_colour(2)))):
        (root / "test" / sub).mkdir(parents=True)
        _png(root / "test" / sub / "000.png", pixels)
    grey = _save(Image.fromarray(_colour(2)).convert("L"), root / "grey.png")
    items = [str(root / "test" / "good" / "000.png"), str(root / "test" / "hole" / "000.png"),
             str(root / "missing.png"), _fifo(root), grey, _size(1, 1)(root)]
    out_dir = root / "overlays"
    code = main(["detect", *items, "--refs", str(corpus["refs"]), "--backend", "none", "--json",
                 "--out", str(out_dir), "--fail-on-anomaly"])
    out, err = capsys.readouterr()
    rows = [json.loads(r) for r in out.splitlines() if r.startswith("{")]
    assert [r["image"] for r in rows] == items
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "ok", "error"]
    assert rows[1]["pred_label"] == "anomalous"
    assert code == 1  # an anomaly is never hidden by a failed item
    assert "Traceback" not in err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 3
    assert "summary: 3 judged, " in err and "3 error(s) of 6 image(s)" in err
    overlays = [r["overlay"] for r in rows if r["status"] == "ok"]
    assert len(set(overlays)) == 3 and all(Path(o).is_file() for o in overlays)
    assert Path(overlays[0]).name == "good_000_overlay.png" and Path(overlays[1]).name == "hole_000_overlay.png"
    assert "modes differ" in rows[4]["explanation"] and "greyscale (mode L)" in rows[4]["explanation"]
    assert "modes differ" not in rows[0]["explanation"]
