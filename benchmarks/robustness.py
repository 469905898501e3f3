"""Bad input, measured: every entry point of bfcl fed a generated corpus of broken and awkward input.

    python benchmarks/robustness.py [--only SUBSTRING] [--timeout 60] [--json report.json]

Entry points: the image loader (``bfcl.data.images.load_image``), the data reader
(``bfcl.data.umt.read_samples``), ``bfcl data stats``, ``bfcl train`` (a tiny config),
``bfcl evaluate``, ``bfcl predict``, ``bfcl serve``, the Python API (``bfcl.load(...).predict``,
``load_run_config``) and the HTTP server (``create_app`` under uvicorn on 127.0.0.1).
CLI cases run in-process through typer's ``CliRunner`` (no interpreter start-up per case);
one tiny random-weight checkpoint of each kind (with and without the image path) is reused.

Every case declares its expected outcome, one of:

* a clear error: CLI -- exit code != 0, no uncaught exception (which would be a traceback),
  no "Traceback" in the output, at most 3 error lines on stderr (blank lines, click's
  "Usage:"/"Try ..." lines, box borders and INFO log lines not counted), at most 1,000
  characters, and the stated patterns (the input's name and the problem) found there;
  Python API -- the stated typed error (``bfcl.errors``) with a message of at most 3 lines
  and 1,000 characters matching the patterns; HTTP -- the stated status and a ``detail`` of
  at most 500 characters matching the patterns;
* the documented fallback or correct result, checked concretely (pixels composited on
  white, every token read and labelled, the right number of samples, a warning that names
  the file and line, no pickle executed, ...).

A traceback, a hang (``--timeout`` per case), a silently dropped token or any other
outcome is a failure. One line per case; the last line is exactly
``cases N handled H failures F``. Exit code 1 when F > 0.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_model, also when imported by a test

MAX_ERROR_LINES = 3
MAX_ERROR_CHARS = 1000
MAX_DETAIL_CHARS = 500
TEXT = "Obama met Merkel in Berlin with IBM"


# =========================================================================== outcomes and expectations


@dataclass
class Outcome:
    """What one call did. ``entry`` is "cli", "api" or "http"."""

    entry: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    exception: BaseException | None = None
    value: Any = None
    status: int | None = None
    detail: str = ""
    log: str = ""
    """API: warnings and log records emitted during the call."""
    seconds: float = 0.0


Check = Callable[[Outcome], "str | None"]
"""Returns None when the outcome is as expected, else the reason it is not."""


def _error_lines(text: str) -> list[str]:
    """Lines of stderr that carry an error message (see the module docstring for what is skipped)."""
    out = []
    for line in text.splitlines():
        s = line.strip().strip("│╭╮╰╯─ ").strip()
        if not s or s.startswith(("Usage:", "Try '")) or re.match(r"^(INFO|DEBUG)\b", s):
            continue
        out.append(s)
    return out


def _short(text: str, n: int = 140) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _matches(text: str, patterns: tuple[str, ...]) -> str | None:
    for p in patterns:
        if not re.search(p, text, re.IGNORECASE | re.DOTALL):
            return f"message lacks /{p}/: {_short(text)}"
    return None


def error(*patterns: str, exc: type | tuple[type, ...] | None = None, status: int | tuple[int, ...] | None = None) -> Check:
    """A clear error matching ``patterns`` (regexes; the input's name and the problem)."""

    def check(o: Outcome) -> str | None:
        if o.entry == "cli":
            if o.exception is not None and not isinstance(o.exception, SystemExit):
                return f"traceback: {type(o.exception).__name__}: {_short(o.exception)}"
            if o.exit_code == 0:
                return f"exit 0, expected an error; stderr: {_short(o.stderr) or '(empty)'}"
            if "Traceback" in o.stderr or "Traceback" in o.stdout:
                return "traceback in the output"
            lines = _error_lines(o.stderr)
            if not lines:
                return f"exit {o.exit_code} with no error message on stderr"
            if len(lines) > MAX_ERROR_LINES:
                return f"{len(lines)} error lines on stderr (max {MAX_ERROR_LINES}): {_short(' | '.join(lines))}"
            if len(o.stderr) > MAX_ERROR_CHARS:
                return f"stderr is {len(o.stderr)} characters (max {MAX_ERROR_CHARS})"
            return _matches("\n".join(lines), patterns)
        if o.entry == "api":
            if o.exception is None:
                return f"no error raised; returned {_short(repr(o.value))}"
            if exc is not None and not isinstance(o.exception, exc):
                names = "/".join(t.__name__ for t in (exc if isinstance(exc, tuple) else (exc,)))
                return f"raised {type(o.exception).__name__}, expected {names}: {_short(o.exception)}"
            msg = str(o.exception)
            if len(msg.splitlines()) > MAX_ERROR_LINES or len(msg) > MAX_ERROR_CHARS:
                return f"message of {len(msg.splitlines())} lines / {len(msg)} characters"
            return _matches(msg, patterns)
        # http
        wanted = (status,) if isinstance(status, int) else (status or ())
        if o.exception is not None:
            return f"no answer: {type(o.exception).__name__}: {_short(o.exception)}"
        if wanted and o.status not in wanted:
            return f"status {o.status}, expected {'/'.join(map(str, wanted))}; detail {_short(o.detail)}"
        if o.status is not None and o.status < 400:
            return f"status {o.status}, expected an error"
        if len(o.detail) > MAX_DETAIL_CHARS:
            return f"detail is {len(o.detail)} characters (max {MAX_DETAIL_CHARS})"
        if "Traceback" in o.detail:
            return "traceback in the answer"
        return _matches(o.detail, patterns)

    check.expects = "error " + " ".join(f"/{p}/" for p in patterns)  # type: ignore[attr-defined]
    return check


def ok(verify: Callable[[Outcome], str | None] | None = None, what: str = "ok") -> Check:
    """Success (exit 0 / no exception / HTTP 200), then ``verify`` on the result."""

    def check(o: Outcome) -> str | None:
        if o.entry == "cli" and o.exit_code != 0 and (o.exception is None or isinstance(o.exception, SystemExit)):
            return f"exit {o.exit_code}: {_short(' | '.join(_error_lines(o.stderr)) or o.stdout)}"
        if o.exception is not None and not (isinstance(o.exception, SystemExit) and o.exit_code == 0):
            return f"{'traceback: ' if o.entry == 'cli' else ''}{type(o.exception).__name__}: {_short(o.exception)}"
        if o.entry == "http" and o.status != 200:
            return f"status {o.status}: {_short(o.detail)}"
        return verify(o) if verify else None

    check.expects = what  # type: ignore[attr-defined]
    return check


def either(a: Check, b: Check) -> Check:
    def check(o: Outcome) -> str | None:
        ra = a(o)
        if ra is None:
            return None
        rb = b(o)
        return None if rb is None else f"{ra}; or: {rb}"

    check.expects = f"{a.expects} | {b.expects}"  # type: ignore[attr-defined]
    return check


@dataclass
class Case:
    name: str
    run: Callable[[], Outcome]
    check: Check
    note: str = ""


@dataclass
class Result:
    name: str
    handled: bool
    reason: str
    seconds: float


# =========================================================================== running things


@contextmanager
def _fresh_logging() -> Iterator[None]:
    """The CLI calls logging.basicConfig; give each in-process run a clean root logger."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        yield
    finally:
        root.handlers, root.level = saved


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def run_cli(args: list[str]) -> Outcome:
    from typer.testing import CliRunner

    from bfcl.cli import app

    if args and args[0] == "train":  # accelerate keeps one state per process; a real CLI run starts fresh
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    with _fresh_logging():
        result = CliRunner().invoke(app, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Outcome("cli", result.exit_code, result.stdout, stderr, result.exception)


def run_api(fn: Callable[[], Any]) -> Outcome:
    cap = _Capture()
    root = logging.getLogger()
    root.addHandler(cap)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value, exc = fn(), None
            except Exception as e:  # the case's check decides whether this was expected
                value, exc = None, e
    finally:
        root.removeHandler(cap)
        root.setLevel(old_level)
    log = "\n".join(cap.lines + [f"WARNING {w.category.__name__}: {w.message}" for w in caught])
    return Outcome("api", value=value, exception=exc, log=log)


def run_http(send: Callable[[Any], Any]) -> Outcome:
    """``send(client)`` returns an httpx.Response."""
    import httpx

    try:
        with httpx.Client(base_url=SERVER.url, timeout=30, trust_env=False) as client:
            resp = send(client)
    except httpx.HTTPError as e:
        return Outcome("http", exception=e)
    detail = ""
    value = None
    try:
        value = resp.json()
        detail = value.get("detail", "") if isinstance(value, dict) else ""
        detail = detail if isinstance(detail, str) else json.dumps(detail)
    except ValueError:
        detail = resp.text[:2000]
    return Outcome("http", status=resp.status_code, detail=detail, value=value)


def run_with_timeout(case: Case, timeout: float) -> tuple[Outcome | None, float, str]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = case.run()
        except BaseException as e:  # a harness-level crash is reported as the case's failure
            box["crash"] = f"harness error: {type(e).__name__}: {_short(e)}"

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True, name=case.name)
    thread.start()
    thread.join(timeout)
    seconds = time.perf_counter() - t0
    if thread.is_alive():
        return None, seconds, f"hang: no result within {timeout:.0f} s"
    return box.get("outcome"), seconds, box.get("crash", "")


# =========================================================================== the corpus


def _jpeg(arr: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _photo(h: int = 96, w: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1)
    return (arr + np.random.default_rng(0).integers(0, 30, arr.shape)).clip(0, 255).astype(np.uint8)


@dataclass
class ImageCase:
    name: str
    path: Path
    error: str | None = None
    """Pattern of the problem in the expected error (which must also name the file, except over
    HTTP where an upload has no name); None: the image loads (and ``verify`` checks the pixels)."""
    verify: Callable[[Any], str | None] | None = None
    http_status: int = 422
    over_http: bool = True


def _mean(t: Any, channel: int, rows: slice = slice(None), cols: slice = slice(None)) -> float:
    return float(t[channel, rows, cols].mean())


def make_images(root: Path) -> list[ImageCase]:
    """Awkward and broken pictures, each with its expected outcome."""
    root.mkdir(parents=True, exist_ok=True)
    jpg = _jpeg(_photo())
    cases: list[ImageCase] = []

    def add(name: str, data: bytes | None, suffix: str = ".jpg", **kw: Any) -> None:
        # Neutral file names: a name like "truncated.jpg" would satisfy the problem pattern by itself.
        path = root / f"img-{len(cases) + 1:02d}{suffix}"
        if data is not None:
            path.write_bytes(data)
        cases.append(ImageCase(name, path, **kw))

    add("zero-byte", b"", error=r"empty|0 bytes|no data")
    add("truncated-jpeg", jpg[: len(jpg) * 6 // 10], error=r"truncat|corrupt|incomplete|could not be decoded")
    scan = bytearray(jpg)
    sos = jpg.index(b"\xff\xda")
    for i in range(sos + 20, len(jpg) - 2):
        scan[i] = 0x00 if scan[i] == 0xFF else (scan[i] * 7 + 13) & 0xFF
    add("corrupt-jpeg-data", bytes(scan), error=r"corrupt|broken|truncat|cannot|decode")
    header = bytearray(jpg)
    sof = jpg.index(b"\xff\xc0")
    header[sof + 5 : sof + 7] = b"\x00\x00"  # height 0
    add("corrupt-jpeg-header", bytes(header), error=r"not an image|not a readable|cannot|corrupt|unreadable|format")
    add("text-named-jpg", b"this is a text file, not a picture\n" * 4, error=r"not an image|not a readable|cannot identify|format|PIL can read")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    # Must be refused before any decoder runs: a message from the EPS plugin (Ghostscript) means it reached one.
    add("eps-named-jpg", eps, error=r"^(?!.*ghostscript).*(format|not an image|not a readable|accepted|supported|PIL can read)")

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (200, 0, 0, 255)  # left: opaque red; right: fully transparent black
    add("png-alpha", _png(Image.fromarray(rgba, "RGBA")), suffix=".png",
        verify=lambda t: None if _mean(t, 0, cols=slice(0, 100)) > 0.7 and _mean(t, 1, cols=slice(124, None)) > 0.95
        else "transparent area not composited on white")
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:32] = (0, 0, 255)
    rgb[32:] = (255, 255, 0)
    add("png-palette", _png(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)), suffix=".png",
        verify=lambda t: None if _mean(t, 2, rows=slice(0, 100)) > 0.9 and _mean(t, 2, rows=slice(124, None)) < 0.1
        else "palette colours wrong")
    gray16 = np.full((64, 64), 32768, np.uint16)
    add("png-16bit", _png(Image.fromarray(gray16)), suffix=".png",
        verify=lambda t: None if abs(float(t.mean()) - 0.5) < 0.02 else f"16-bit mid-grey read as {float(t.mean()):.3f}, not 0.5")
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    add("cmyk-jpeg", buf.getvalue(),
        verify=lambda t: None if _mean(t, 0) > 0.8 and _mean(t, 1) < 0.2 else f"CMYK red read as RGB {[round(_mean(t, c), 2) for c in range(3)]}")
    frames = [Image.new("RGB", (48, 48), (0, 200, 0)), Image.new("RGB", (48, 48), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("gif-animated", buf.getvalue(), suffix=".gif",
        verify=lambda t: None if _mean(t, 1) > 0.6 and _mean(t, 2) < 0.2 else "not the first frame")
    add("decompression-bomb", _png(Image.new("1", (20_000, 20_000)), optimize=True), suffix=".png",
        error=r"bomb|pixels|too (large|many)|limit", http_status=413)
    half = np.zeros((32, 64, 3), np.uint8)
    half[:, :32] = (255, 0, 0)
    half[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display: the red half goes to the top
    add("exif-rotated", _jpeg(half, exif=exif.tobytes()),
        verify=lambda t: None if _mean(t, 0, rows=slice(0, 100)) > 0.7 and _mean(t, 2, rows=slice(124, None)) > 0.7
        else "EXIF orientation not applied")
    folder = root / f"img-{len(cases) + 1:02d}.jpg"
    folder.mkdir(exist_ok=True)
    cases.append(ImageCase("directory", folder, error=r"director|not a (regular )?file", over_http=False))
    loop = root / f"img-{len(cases) + 1:02d}.jpg"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)
    cases.append(ImageCase("symlink-loop", loop, error=r"loop|symbolic|not found|not a (regular )?file|cannot", over_http=False))
    return cases


# ----------------------------------------------------------------------------- data files

CANONICAL = [
    ("1001", ["RT", "@Obama", ":", "Merkel", "visits", "New", "York"], ["O", "B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"]),
    ("1002", ["IBM", "hires", "in", "Berlin"], ["B-ORG", "O", "O", "B-LOC"]),
    ("1003", ["nothing", "here", "#tbt"], ["O", "O", "O"]),
    ("1004", ["Go", "Lakers", "!"], ["O", "B-ORG", "O"]),
]


def umt_text(samples: list[tuple[str, list[str], list[str]]], sep: str = "\n", blank: str = "") -> str:
    parts = []
    for sid, toks, labs in samples:
        parts.append(sep.join([f"IMGID:{sid}"] + [f"{t}\t{l}" for t, l in zip(toks, labs)]) + sep)
    return (blank + sep).join(parts)


@dataclass
class DataCase:
    name: str
    path: Path
    expected: list[tuple[str, list[str]]] | None = None
    """(id, tokens) of every sample when the file must load; None when it must be refused."""
    error: tuple[str, ...] = ()
    warn: tuple[str, ...] = ()
    """Patterns a warning (log/stderr) must match when the file loads (e.g. skipped lines named)."""
    alt_error: bool = False
    """Also accept a clear error (``error`` patterns) instead of loading."""
    train: bool = False
    """Also fed to ``bfcl train`` as the training file."""


def make_data(root: Path) -> list[DataCase]:
    root.mkdir(parents=True, exist_ok=True)
    canon = umt_text(CANONICAL)
    expected = [(sid, toks) for sid, toks, _ in CANONICAL]
    cases: list[DataCase] = []

    def add(name: str, content: bytes, **kw: Any) -> None:
        # Neutral file names (see make_images); "{file}" in a pattern stands for the file's name.
        path = root / f"data-{len(cases) + 1:02d}.txt"
        path.write_bytes(content)
        for key in ("error", "warn"):
            kw[key] = tuple(p.replace("{file}", re.escape(path.name)) for p in kw.get(key, ()))
        cases.append(DataCase(name, path, **kw))

    add("crlf", umt_text(CANONICAL, sep="\r\n").encode(), expected=expected, train=True)
    add("bom", ("\ufeff" + canon).encode(), expected=expected, train=True)
    enc = r"utf-?16|encoding|utf-?8"
    add("utf16-bom", canon.encode("utf-16"), expected=expected, alt_error=True, error=(r"{file}", enc))
    add("utf16-no-bom", canon.encode("utf-16-le"), expected=expected, alt_error=True, error=(r"{file}", r"utf-?16|encoding|NUL"), train=True)
    no_imgid = canon.replace("IMGID:1002\n", "", 1)
    add("missing-imgid", no_imgid.encode(), error=(r"{file}:\d+", r"IMGID"))
    add("three-fields", canon.replace("IBM\tB-ORG", "IBM\tB-ORG\tNNP", 1).encode(), error=(r"{file}:\d+", r"field|column|tab"), train=True)
    add("unknown-label", canon.replace("IBM\tB-ORG", "IBM\tX-ORG", 1).encode(), error=(r"{file}:\d+", r"X-ORG"), train=True)
    empty_sample = umt_text(CANONICAL[:2]) + "\nIMGID:2000\n\n" + umt_text(CANONICAL[2:])
    add("empty-sample", empty_sample.encode(), error=(r"{file}:\d+", r"no tokens|empty"), alt_error=True,
        expected=expected, warn=(r"{file}:\d+",))
    words = [f"w{i}" for i in range(600)]
    add("600-word-post", umt_text([("3000", words, ["O"] * 600)]).encode(), expected=[("3000", words)])
    invisible = ["\u200b", "\u200d", "\ufe0f", "\u2060", "\u00ad"]
    add("invisible-tokens", umt_text([("3001", ["hi"] + invisible + ["Obama"], ["O"] * 6 + ["B-PER"])]).encode(),
        expected=[("3001", ["hi"] + invisible + ["Obama"])])
    mixed = ["Москва", "東京", "😀", "مرحبا", "🇫🇷", "Ελλάδα", "👩‍👩‍👧"]
    add("mixed-scripts-emoji", umt_text([("3002", mixed, ["B-LOC", "B-LOC", "O", "O", "O", "B-LOC", "O"])]).encode(),
        expected=[("3002", mixed)])
    ws_sep = umt_text(CANONICAL[:1]) + "\t\n" + umt_text(CANONICAL[1:2]) + " \n" + umt_text(CANONICAL[2:])
    add("whitespace-separator", ws_sep.encode(), expected=expected, train=True)
    lines = canon.split("\n")
    lines.insert(3, "\tO")  # an empty token inside sample 1001
    lines.insert(12, " ")  # a line holding a single space: a separator (item 10)
    # the warning names the file and line 4, as "FILE:4" or as "FILE: skipped ... (line 4)"
    add("empty-token", "\n".join(lines).encode(), expected=expected,
        warn=(r"{file}(:4\b|: .*\blines? (\d+, )*4\b)",), train=True)
    add("10mb-line", (umt_text(CANONICAL[:1]) + "\nIMGID:4000\n" + "a" * 10_000_000 + "\n").encode(),
        error=(r"{file}:\d+", r"field|tab|long"), train=True)
    return cases


# =========================================================================== context: models, server

SERVER = None  # type: ignore[assignment]


class Ctx:
    """Everything shared by the cases: temp folders, tiny checkpoints, a config, a running server."""

    def __init__(self, root: Path) -> None:
        from bfcl.demo.probe import make_probe
        from tiny_model import tiny_checkpoint, tiny_text_encoder_dir

        self.root = root
        self.images = make_images(root / "images")
        self.data = make_data(root / "data")
        self.image_ckpt = tiny_checkpoint(root / "ckpt-image", image=True)
        self.text_ckpt = tiny_checkpoint(root / "ckpt-text", image=False)
        self.other_ckpt = tiny_checkpoint(root / "ckpt-text-seed1", image=False, seed=1)
        self.encoder_dir = tiny_text_encoder_dir(root / "tiny-bert")
        self.probe = root / "probe"
        make_probe(self.probe, seed=1, n_train=12, n_dev=6, n_test=6)
        self.canonical = root / "data" / "canonical.txt"
        self.canonical.write_text(umt_text(CANONICAL), encoding="utf-8")
        self.empty = root / "data" / "nothing.txt"
        self.empty.write_bytes(b"")
        self.config = root / "tiny-text.yaml"
        self.config.write_text(
            "model:\n"
            f"  text_encoder: {json.dumps(str(self.encoder_dir))}\n"
            "  multimodal: false\n  decoder: crf\n  max_length: 64\n"
            "train:\n"
            f"  data_dir: {json.dumps(str(self.probe))}\n"
            "  epochs: 1\n  batch_size: 8\n  lr: 1.0e-3\n  head_lr: 1.0e-3\n"
            "  progress: false\n  map_other_to_misc: false\n  evaluate_test: false\n  feature_cache: null\n",
            encoding="utf-8",
        )
        self.image_config = root / "tiny-image.yaml"
        self.image_config.write_text(
            "model:\n"
            f"  text_encoder: {json.dumps(str(self.encoder_dir))}\n"
            "  image_encoder: efficientnet-lite0\n  d_model: 32\n  num_heads: 4\n  ffn_dim: 64\n  num_layers: 2\n"
            "  num_bottlenecks: 2\n  contrastive_dim: 8\n  dropout: 0.0\n  max_length: 64\n"
            "train:\n"
            f"  data_dir: {json.dumps(str(self.probe))}\n  images_dir: {json.dumps(str(self.probe / 'images'))}\n"
            "  epochs: 1\n  batch_size: 8\n  lr: 1.0e-3\n  head_lr: 1.0e-3\n"
            f"  progress: false\n  map_other_to_misc: false\n  evaluate_test: false\n  feature_cache: {json.dumps(str(root / 'features'))}\n",
            encoding="utf-8",
        )
        self._n = 0
        self._predictors: dict[Path, Any] = {}

    def out(self, name: str) -> Path:
        self._n += 1
        return self.root / "runs" / f"{self._n:03d}-{re.sub(r'[^A-Za-z0-9]+', '-', name)}"

    def predictor(self, ckpt: Path) -> Any:
        import bfcl

        if ckpt not in self._predictors:
            self._predictors[ckpt] = bfcl.load(ckpt, feature_cache=self.root / "features", device="cpu")
        return self._predictors[ckpt]

    def tampered(self, source: Path | None = None) -> Path:
        """A copy of the text checkpoint (or ``source``) to break, under a neutral name."""
        self._n += 1
        dst = self.root / "tampered" / f"ckpt-{self._n:03d}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(source or self.text_ckpt, dst)
        return dst


class Server:
    """uvicorn serving the tiny image checkpoint in a background thread on 127.0.0.1."""

    def __init__(self, ckpt: Path, feature_cache: Path) -> None:
        import uvicorn

        from bfcl.serving.app import ServeLimits, create_app

        self.read_timeout = 2.0
        limits = ServeLimits(max_body_bytes=1_000_000, max_image_bytes=900_000, read_timeout_s=self.read_timeout)
        app = create_app(ckpt, limits=limits, feature_cache=feature_cache, device="cpu")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# =========================================================================== checks on results


def _tensor_check(verify: Callable[[Any], str | None] | None) -> Callable[[Outcome], str | None]:
    def check(o: Outcome) -> str | None:
        t = o.value
        if t is None or tuple(t.shape) != (3, 224, 224):
            return f"expected a (3, 224, 224) tensor, got {None if t is None else tuple(t.shape)}"
        if not bool(((t >= 0) & (t <= 1)).all()):
            return "pixels outside [0, 1]"
        return verify(t) if verify else None

    return check


def _has_image(o: Outcome) -> str | None:
    d = o.value if o.entry != "cli" else _json_out(o.stdout)
    if not isinstance(d, dict):
        return f"no prediction in the output: {_short(o.stdout)}"
    if d.get("has_image") is not True:
        return "has_image is not true: the picture was dropped"
    if len(d.get("tokens", [])) != len(d.get("labels", [])) or not d.get("tokens"):
        return "tokens and labels do not line up"
    return None


def _json_out(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _samples_match(expected: list[tuple[str, list[str]]], got: list[tuple[str, list[str]]]) -> str | None:
    if len(got) != len(expected):
        return f"{len(got)} samples, expected {len(expected)}"
    for (eid, etoks), (gid, gtoks) in zip(expected, got):
        if gtoks != etoks:
            missing = len(etoks) - len(gtoks)
            what = f"{missing} token(s) dropped" if missing > 0 else "tokens differ"
            return f"sample {gid}: {what}: {_short(repr(gtoks), 80)} vs {_short(repr(etoks), 80)}"
        if eid != gid:
            return f"sample id {gid!r}, expected {eid!r}"
    return None


def _warned(patterns: tuple[str, ...], text: str) -> str | None:
    for p in patterns:
        if not re.search(p, text, re.IGNORECASE):
            return f"no warning matching /{p}/ (skipped input must be reported)"
    return None


# =========================================================================== the cases


def image_cases(ctx: Ctx) -> list[Case]:
    from bfcl.data.images import load_image
    from bfcl.errors import ImageLoadError

    cases = []
    for ic in ctx.images:
        path = ic.path
        if ic.error:
            named = (re.escape(path.name), ic.error)
            api_check = error(*named, exc=ImageLoadError)
            cli_check = error(*named)
            predict_check = error(*named, exc=ImageLoadError)
        else:
            api_check = ok(_tensor_check(ic.verify), "a (3, 224, 224) tensor with the right pixels")
            cli_check = ok(_has_image, "a prediction with has_image true")
            predict_check = ok(lambda o: _has_image(Outcome("api", value=o.value.to_dict())), "a prediction with has_image true")
        cases.append(Case(f"image/{ic.name}/load_image", lambda p=path: run_api(lambda: load_image(p)), api_check))
        cases.append(Case(
            f"image/{ic.name}/api-predict",
            lambda p=path: run_api(lambda: ctx.predictor(ctx.image_ckpt).predict(TEXT, image=p)),
            predict_check,
        ))
        cases.append(Case(
            f"image/{ic.name}/cli-predict",
            lambda p=path: run_cli(["predict", "-m", ctx.image_ckpt, "--text", TEXT, "--image", p, "--json",
                                    "--feature-cache", ctx.root / "features"]),
            cli_check,
        ))
        if ic.over_http:
            if ic.error:
                http_check = error(r"image", ic.error, status=ic.http_status)
            else:
                http_check = ok(_has_image, "200 with has_image true")
            cases.append(Case(
                f"image/{ic.name}/http-predict",
                lambda p=path: run_http(lambda c: c.post("/predict", data={"text": TEXT}, files={"image": (p.name, p.read_bytes())})),
                http_check,
            ))
    return cases


def data_cases(ctx: Ctx) -> list[Case]:
    from bfcl.data.umt import read_samples
    from bfcl.errors import DataFormatError

    cases = []
    for dc in ctx.data:
        path = dc.path

        def reader_check(dc: DataCase = dc) -> Check:
            if dc.expected is None:
                return error(*dc.error, exc=DataFormatError)

            def verify(o: Outcome) -> str | None:
                got = [(s.id, list(s.tokens)) for s in o.value]
                return _samples_match(dc.expected, got) or (_warned(dc.warn, o.log) if dc.warn else None)

            loaded = ok(verify, f"{len(dc.expected)} samples, every token kept")
            return either(loaded, error(*dc.error, exc=DataFormatError)) if dc.alt_error else loaded

        def cli_check(dc: DataCase, verify: Callable[[Outcome], str | None], what: str) -> Check:
            if dc.expected is None:
                return error(*dc.error)

            def full(o: Outcome) -> str | None:
                return verify(o) or (_warned(dc.warn, o.stderr + o.stdout) if dc.warn else None)

            loaded = ok(full, what)
            return either(loaded, error(*dc.error)) if dc.alt_error else loaded

        def stats_verify(o: Outcome, dc: DataCase = dc) -> str | None:
            stats = _json_out(o.stdout)
            if not isinstance(stats, dict) or not stats:
                return f"no JSON statistics: {_short(o.stdout)}"
            n = sum(s.get("samples", 0) for s in stats.values())
            return None if n == len(dc.expected or []) else f"{n} samples counted, expected {len(dc.expected or [])}"

        def predict_verify(o: Outcome, dc: DataCase = dc) -> str | None:
            rows = [json.loads(l) for l in o.stdout.splitlines() if l.strip().startswith("{")]
            got = [(str(r.get("id")), r.get("tokens", [])) for r in rows]
            bad = [r for r in rows if len(r.get("labels", [])) != len(r.get("tokens", []))]
            if bad:
                return f"post {bad[0].get('id')}: {len(bad[0].get('labels', []))} labels for {len(bad[0].get('tokens', []))} tokens"
            return _samples_match(dc.expected or [], got)

        def evaluate_verify(o: Outcome) -> str | None:
            scores = _json_out(o.stdout)
            if not isinstance(scores, dict) or "f1" not in scores:
                return f"no scores: {_short(o.stdout)}"
            return None if abs(scores["f1"] - 1.0) < 1e-9 or not scores.get("per_type") else f"F1 {scores['f1']} of a file against itself"

        cases.append(Case(f"data/{dc.name}/read_samples", lambda p=path: run_api(lambda: read_samples(p)), reader_check()))
        cases.append(Case(f"data/{dc.name}/cli-data-stats", lambda p=path: run_cli(["data", "stats", p, "--json"]),
                          cli_check(dc, stats_verify, "statistics of every sample")))
        cases.append(Case(
            f"data/{dc.name}/cli-predict",
            lambda p=path: run_cli(["predict", "-m", ctx.text_ckpt, "--input", p, "--format", "jsonl", "--feature-cache", ctx.root / "features"]),
            cli_check(dc, predict_verify, "a label for every token of every post"),
        ))
        cases.append(Case(f"data/{dc.name}/cli-evaluate", lambda p=path: run_cli(["evaluate", "--gold", p, "--pred", p, "--json"]),
                          cli_check(dc, evaluate_verify, "F1 1.0 of a file against itself")))
        if dc.train:
            cases.append(Case(
                f"data/{dc.name}/cli-train",
                lambda p=path, n=dc.name: run_cli(["train", "-c", ctx.config, "--set", f"train.train_file={p}",
                                                   "--set", f"train.dev_file={ctx.canonical}", "--set", f"train.output_dir={ctx.out(n)}"]),
                cli_check(dc, lambda o: None, "training runs"),
            ))

    # the Python API on awkward posts given as tokens: every token gets a label, none is dropped
    for dc in ctx.data:
        if dc.name not in ("600-word-post", "invisible-tokens", "mixed-scripts-emoji"):
            continue
        tokens = dc.expected[0][1]

        def labelled(o: Outcome, n: int = len(tokens), toks: list[str] = tokens) -> str | None:
            pred = o.value
            got = [t.text for t in pred.tokens]
            if got != toks:
                return f"{len(toks) - len(got)} token(s) dropped or changed"
            return None if len(pred.labels) == n else f"{len(pred.labels)} labels for {n} tokens"

        cases.append(Case(f"data/{dc.name}/api-predict-tokens",
                          lambda t=tokens: run_api(lambda: ctx.predictor(ctx.text_ckpt).predict(t)),
                          ok(labelled, "a label for every token")))

    # evaluate: alignment checks on tokens, not only counts (issue 8, "silent wrong results")
    other = ctx.root / "data" / "pred-a.txt"
    other.write_text(umt_text([(sid, [t + "x" for t in toks], labs) for sid, toks, labs in CANONICAL]), encoding="utf-8")
    fewer = ctx.root / "data" / "pred-b.txt"
    fewer.write_text(umt_text(CANONICAL[:3]), encoding="utf-8")
    cases += [
        Case("data/evaluate-same-counts-other-tokens/cli-evaluate",
             lambda: run_cli(["evaluate", "--gold", ctx.canonical, "--pred", other, "--json"]),
             error(r"pred-a\.txt|canonical\.txt", r"token")),
        Case("data/evaluate-fewer-samples/cli-evaluate",
             lambda: run_cli(["evaluate", "--gold", ctx.canonical, "--pred", fewer, "--json"]),
             error(r"pred-b\.txt|canonical\.txt", r"sample|count|\b3\b")),
        Case("data/empty-file/cli-evaluate", lambda: run_cli(["evaluate", "--gold", ctx.empty, "--pred", ctx.empty, "--json"]),
             error(r"nothing\.txt", r"empty|no samples|0 samples")),
        Case("data/empty-file/cli-data-stats", lambda: run_cli(["data", "stats", ctx.empty, "--json"]),
             error(r"nothing\.txt", r"empty|no samples|0 samples")),
        Case("data/empty-file/cli-predict",
             lambda: run_cli(["predict", "-m", ctx.text_ckpt, "--input", ctx.empty, "--format", "jsonl"]),
             error(r"nothing\.txt", r"empty|no (samples|posts)|0 (samples|posts)")),
    ]
    return cases


CONFIG_ERRORS = [
    # (--set, patterns of the clear error that must name the key and what is wrong)
    ("model.multimodal=maybe", (r"multimodal", r"maybe|bool")),
    ("train.epochs=2.5", (r"epochs", r"2\.5|int")),
    ("train.batch_size=0", (r"batch_size", r"\b0\b|positive|>=? ?1|at least")),
    ("train.epochs=-1", (r"epochs", r"-1|positive|>=|at least")),
    ("model.num_heads=0", (r"num_heads", r"\b0\b|positive|>=|at least|divid")),
    ("train.mixed_precision=fp8", (r"mixed_precision", r"fp8")),
    ("train.cpu=maybe", (r"cpu", r"maybe|bool")),
    ("train.max_train_samples=-5", (r"max_train_samples", r"-5|>=|negative|at least")),
    ("train.epoch=3", (r"epoch", r"unknown")),
    ("train.data_dir=/nonexistent", (r"/nonexistent", r"not found|does not exist|no such|missing")),
    ("model.fusion=sideways", (r"fusion", r"sideways")),
    ("train.images_dir=/nonexistent-images", (r"images_dir", r"/nonexistent-images", r"does not exist|not found")),
    ("model.text_encoder=/nonexistent-encoder", (r"text_encoder", r"/nonexistent-encoder", r"no such|not found|does not exist")),
]
CHECKED_WHEN_TRAINING = ("train.data_dir", "train.images_dir", "model.text_encoder")
"""Paths are checked when training starts, not when the config is parsed."""


def config_cases(ctx: Ctx) -> list[Case]:
    from bfcl.errors import ConfigError
    from bfcl.training.config import load_run_config

    cases = []
    for setting, patterns in CONFIG_ERRORS:
        key = setting.split("=")[0]
        cases.append(Case(
            f"config/{setting}/cli-train",
            # the multimodal tiny config: every setting in it is used, and a wrongly accepted value trains in seconds
            lambda s=setting: run_cli(["train", "-c", ctx.image_config, "--set", s, "--set", f"train.output_dir={ctx.out(s)}"]),
            error(*patterns),
        ))
        if key not in CHECKED_WHEN_TRAINING:
            cases.append(Case(f"config/{setting}/load_run_config",
                              lambda s=setting: run_api(lambda: load_run_config(ctx.image_config, [s])),
                              error(*patterns, exc=ConfigError)))

    def png_ext(o: Outcome) -> str | None:
        _, tc = o.value
        return None if list(tc.image_extensions) == [".png"] else f"image_extensions became {tc.image_extensions!r}"

    # the image config: with the text-only one the setting would (rightly) be refused as having no effect
    cases.append(Case("config/train.image_extensions=.png/load_run_config",
                      lambda: run_api(lambda: load_run_config(ctx.image_config, ["train.image_extensions=.png"])),
                      ok(png_ext, "image_extensions == ['.png']")))

    def png_train(o: Outcome, out: Path = ctx.root / "runs" / "png-ext") -> str | None:
        summary = json.loads((out / "summary.json").read_text())
        ext = summary["config"]["train"]["image_extensions"]
        if ext != [".png"]:
            return f"trained with image_extensions {ext!r}: every post silently text-only"
        if re.search(r"(\d+) of \1 posts have no image", o.stderr):
            return "no training image was found"
        return None

    cases.append(Case(
        "config/train.image_extensions=.png/cli-train",
        lambda: run_cli(["train", "-c", ctx.image_config, "--set", "train.image_extensions=.png",
                         "--set", f"train.output_dir={ctx.root / 'runs' / 'png-ext'}"]),
        ok(png_train, "trains on the .png images"),
    ))
    cases.append(Case("config/empty-train-file/cli-train",
                      lambda: run_cli(["train", "-c", ctx.config, "--set", f"train.train_file={ctx.empty}",
                                       "--set", f"train.output_dir={ctx.out('empty-train')}"]),
                      error(r"nothing\.txt", r"empty|no samples|0 samples")))
    taken = ctx.root / "data" / "a-file"
    taken.write_text("not a folder\n", encoding="utf-8")
    cases.append(Case("config/output_dir-is-a-file/cli-train",
                      lambda: run_cli(["train", "-c", ctx.config, "--set", f"train.output_dir={taken}"]),
                      error(r"output_dir", r"a-file", r"not a folder")))
    cases.append(Case("config/device-nonsense/cli-predict",
                      lambda: run_cli(["predict", "-m", ctx.text_ckpt, "--text", TEXT, "--device", "nonsense"]),
                      error(r"device", r"nonsense")))
    cases.append(Case("config/resume-without-last/cli-train",
                      lambda: run_cli(["train", "-c", ctx.config, "--resume", "--set", f"train.output_dir={ctx.out('resume')}"]),
                      error(r"resume|last", r"nothing|no |not found|cannot")))
    return cases


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def checkpoint_cases(ctx: Ctx) -> list[Case]:
    from safetensors.torch import load_file, save_file

    from bfcl.errors import CheckpointError
    from bfcl.model.checkpoint_files import write_manifest

    def edit_config(ckpt: Path, fn: Callable[[dict], None]) -> None:
        cfg = json.loads((ckpt / "config.json").read_text())
        fn(cfg)
        (ckpt / "config.json").write_text(json.dumps(cfg))

    def relabel(cfg: dict, old: str, new: str | None) -> None:
        labels = [l for l in cfg["model"]["labels"] if not (new is None and l == old)]
        labels = [new if (l == old and new is not None) else l for l in labels]
        cfg["model"]["labels"] = labels
        cfg["labels"] = {str(i): l for i, l in enumerate(labels)}

    broken: list[tuple[str, Path, tuple[str, ...]]] = []
    p = ctx.tampered()
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 2])
    broken.append(("truncated-weights", p, (r"model\.safetensors", r"truncat|incomplete|corrupt|size|damaged|manifest")))
    p = ctx.tampered()
    (p / "config.json").write_text('{"model": {"d_model": 32,,}')
    broken.append(("invalid-config-json", p, (r"config\.json", r"JSON|invalid|pars")))
    # Label tampering, two ways: (a) config.json edited after the save, so the manifest no longer
    # matches and the file is refused as modified; (b) the manifest rewritten to match (what a
    # careless tool or a hand-made checkpoint gives), so the labels themselves must be checked.
    label_edits = [
        # a whole type dropped: a valid BIO set of 7 labels for weights trained on 9
        ("wrong-num-labels", lambda c: (relabel(c, "B-PER", None), relabel(c, "I-PER", None)),
         (r"label", r"\b7\b|\b9\b|match|shape|size")),
        ("label-B-PER-without-I-PER", lambda c: relabel(c, "I-PER", None), (r"label", r"I-PER")),
        ("labels-edited-IPER-to-BLOC", lambda c: relabel(c, "I-PER", "B-LOC"), (r"label", r"B-LOC|I-PER|duplicate|BIO|invalid")),
        ("label-X-LOC", lambda c: relabel(c, "B-LOC", "X-LOC"), (r"label", r"X-LOC")),
    ]
    for name, edit, patterns in label_edits:
        p = ctx.tampered()
        edit_config(p, edit)
        broken.append((f"{name}/stale-manifest", p, (r"config\.json", r"manifest")))
        p = ctx.tampered()
        edit_config(p, edit)
        write_manifest(p)
        broken.append((name, p, patterns))
    weights = load_file(str(ctx.text_ckpt / "model.safetensors"))
    dropped = sorted(k for k in weights if k.endswith("emission.weight") or k.endswith("emission.bias"))[0]
    for resign in (False, True):  # with a rewritten manifest the weights themselves must be checked
        suffix = "/consistent-manifest" if resign else ""
        p = ctx.tampered()
        save_file({k: v for k, v in weights.items() if k != dropped}, str(p / "model.safetensors"))
        if resign:
            write_manifest(p)
        broken.append((f"missing-key{suffix}", p, (re.escape(dropped) + r"|model\.safetensors",
                                                   r"missing" if resign else r"missing|manifest|size|sha")))
        p = ctx.tampered()
        shutil.copy(ctx.image_ckpt / "model.safetensors", p / "model.safetensors")
        if resign:
            write_manifest(p)
        broken.append((f"foreign-weights{suffix}", p, (r"model\.safetensors",
                                                       r"missing|unexpected|match" if resign else r"missing|unexpected|match|manifest|sha|size")))
    p = ctx.tampered()  # same architecture, other weights: only a manifest can tell
    shutil.copy(ctx.other_ckpt / "model.safetensors", p / "model.safetensors")
    broken.append(("swapped-weights", p, (r"model\.safetensors", r"manifest|sha|checksum|hash|match")))

    cases = []
    for name, ckpt, patterns in broken:
        cases.append(Case(f"checkpoint/{name}/api-load", lambda c=ckpt: run_api(lambda: __import__("bfcl").load(c, device="cpu")),
                          error(*patterns, exc=CheckpointError)))
        cases.append(Case(f"checkpoint/{name}/cli-predict", lambda c=ckpt: run_cli(["predict", "-m", c, "--text", TEXT, "--json"]),
                          error(*patterns)))
        if name in ("truncated-weights", "invalid-config-json", "wrong-num-labels", "labels-edited-IPER-to-BLOC"):
            cases.append(Case(f"checkpoint/{name}/cli-serve", lambda c=ckpt: run_cli(["serve", "-m", c, "--port", "0"]),
                              error(*patterns)))

    pickled = ctx.tampered()
    marker = ctx.root / "PICKLE-WAS-EXECUTED"
    for fname in ("pytorch_model.bin", "optimizer.pt", "training_args.bin", "model.pkl"):
        (pickled / fname).write_bytes(pickle.dumps(_Payload(marker)))

    def no_pickle(o: Outcome) -> str | None:
        return "a pickle in the checkpoint folder was executed" if marker.exists() else None

    cases.append(Case("checkpoint/pickle-dropped-in/api-load",
                      lambda: run_api(lambda: __import__("bfcl").load(pickled, device="cpu").predict(TEXT)),
                      ok(no_pickle, "loads, pickle files ignored")))
    cases.append(Case("checkpoint/pickle-dropped-in/cli-predict",
                      lambda: run_cli(["predict", "-m", pickled, "--text", TEXT, "--json"]),
                      ok(no_pickle, "predicts, pickle files ignored")))
    return cases


def _raw_http(port: int, payload: bytes, read_for: float) -> tuple[bytes, float]:
    """Send raw bytes and read until the server closes (or ``read_for`` seconds pass)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as s:
        s.sendall(payload)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return data, time.monotonic() - t0


def server_cases(ctx: Ctx) -> list[Case]:
    limit = 1_000_000

    def stalled() -> Outcome:
        head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"text\": \"Obama")
        wait = SERVER.read_timeout + 8
        data, seconds = _raw_http(SERVER.port, head, wait)
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        if seconds >= wait - 0.5:
            return Outcome("http", exception=TimeoutError(f"connection still open after {seconds:.1f} s"))
        detail = (_json_out(body) or {}).get("detail", body) if status else "connection closed without an answer"
        return Outcome("http", status=status, detail=detail)

    def unclosed_multipart() -> Outcome:
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nObama in Berlin\r\n"
                b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff")
        return run_http(lambda c: c.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"}))

    def chunked_oversized() -> Outcome:
        def gen() -> Iterator[bytes]:
            yield b'{"text": "'
            for _ in range(20):
                yield b"a" * 100_000
            yield b'"}'

        return run_http(lambda c: c.post("/predict", content=gen(), headers={"content-type": "application/json"}))

    def tokens_ok(o: Outcome) -> str | None:
        d = o.value or {}
        return None if len(d.get("tokens", [])) == len(d.get("labels", [])) else "tokens and labels do not line up"

    return [
        Case("server/oversized-body/http", lambda: run_http(lambda c: c.post("/predict", content=b"x" * (limit + 10), headers={"content-type": "application/json"})),
             error(r"body|limit|large", status=413)),
        Case("server/oversized-chunked-body/http", chunked_oversized, error(r"body|limit|large", status=413)),
        Case("server/multipart-without-closing-boundary/http", unclosed_multipart,
             error(r"multipart|boundary|form|incomplete|malformed", status=(400, 422))),
        Case("server/stalled-upload/http", stalled, error(r"time|receiv|stall", status=408)),
        Case("server/bad-base64/http", lambda: run_http(lambda c: c.post("/predict", json={"text": TEXT, "image": "@@not base64@@"})),
             error(r"image", r"base64", status=422)),
        Case("server/malformed-json/http", lambda: run_http(lambda c: c.post("/predict", content=b'{"text": "a', headers={"content-type": "application/json"})),
             error(r"JSON", status=422)),
        Case("server/huge-unknown-field-name/http", lambda: run_http(lambda c: c.post("/predict", json={"text": TEXT, "k" * 200_000: 1})),
             error(r"extra|unexpected|not permitted|forbidden", status=422)),
        Case("server/huge-invalid-value/http", lambda: run_http(lambda c: c.post("/predict", json={"text": ["w" * 200_000]})),
             error(r"text", status=422)),
        Case("server/lone-surrogate/http", lambda: run_http(lambda c: c.post("/predict", content=b'{"text": "a\\ud800b"}', headers={"content-type": "application/json"})),
             error(r"surrogate|unicode", status=422)),
        Case("server/wrong-content-type/http", lambda: run_http(lambda c: c.post("/predict", content=b"hello", headers={"content-type": "text/plain"})),
             error(r"content type", status=415)),
        Case("server/invisible-only-text/http", lambda: run_http(lambda c: c.post("/predict", json={"text": "\u200b \u200d \ufe0f"})),
             ok(tokens_ok, "200, a label per token")),
        Case("server/mixed-scripts-emoji/http", lambda: run_http(lambda c: c.post("/predict", json={"text": "Москва 東京 😀 🇫🇷 Obama"})),
             ok(tokens_ok, "200, a label per token")),
    ]


# =========================================================================== main


def build_cases(ctx: Ctx) -> list[Case]:
    return image_cases(ctx) + data_cases(ctx) + config_cases(ctx) + checkpoint_cases(ctx) + server_cases(ctx)


@contextmanager
def _no_blocking_serve() -> Iterator[None]:
    """``bfcl serve`` on a checkpoint that (wrongly) loads must not block the harness in uvicorn.run."""
    import uvicorn

    saved = uvicorn.run
    uvicorn.run = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        uvicorn.run = saved  # type: ignore[assignment]


def run_all(only: str | None = None, timeout: float = 60.0, out: Callable[[str], None] = print) -> list[Result]:
    global SERVER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()

    torch.set_num_threads(1)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bfcl-robustness-") as tmp:
        t0 = time.perf_counter()
        ctx = Ctx(Path(tmp))
        SERVER = Server(ctx.image_ckpt, ctx.root / "features-server")
        out(f"# corpus and tiny checkpoints ready in {time.perf_counter() - t0:.1f} s")
        try:
            with _no_blocking_serve(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for case in build_cases(ctx):
                    if only and only not in case.name:
                        continue
                    outcome, seconds, crash = run_with_timeout(case, timeout)
                    reason = crash or (case.check(outcome) if outcome is not None else "no outcome")
                    handled = reason is None
                    results.append(Result(case.name, handled, reason or "", seconds))
                    detail = "" if handled else f": {reason} (expected: {case.check.expects})"
                    out(f"{'ok  ' if handled else 'FAIL'} {case.name} [{seconds:.1f}s]{detail}")
        finally:
            SERVER.stop()
    handled = sum(r.handled for r in results)
    out(f"cases {len(results)} handled {handled} failures {len(results) - handled}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.getLogger("bfcl.serving").setLevel(logging.CRITICAL)
    results = run_all(args.only, args.timeout, out=lambda s: print(s, flush=True))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n", encoding="utf-8")
    failures = sum(not r.handled for r in results)
    sys.stdout.flush()
    hung = [t for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not threading.main_thread()]
    if hung:
        os._exit(1 if failures else 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
