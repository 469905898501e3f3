"""Reader and writer for the UMT/Twitter MNER format and plain CoNLL.

UMT format: an ``IMGID:<id>`` line, then one ``token<TAB>label`` line per
token; a blank line separates samples and the last one may end at EOF.
CoNLL is the same without ``IMGID`` lines (no image; ids are ``<stem>-<n>``,
n counting from 1).

Only ``\\n`` (optionally preceded by ``\\r``) ends a line: tweets contain
characters such as U+2028 or U+0085 that ``str.splitlines`` would treat as
line breaks, and tokens made only of invisible characters are real tokens.

Real-world CoNLL files differ in small ways, read as follows:

* a line of spaces and tabs only (e.g. a lone tab) separates samples, like a blank line;
* a line with an empty token (``\tO``) and a line holding a single space are
  skipped, and one warning per file counts them and names their lines; with
  ``strict=True`` they are errors instead;
* UTF-16 files (with or without a byte-order mark) are refused with a message
  that says so, and an error never echoes more than a readable part of a line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal

from bfcl.data.atomic import atomic_write
from bfcl.data.labels import LabelSet, is_valid_label
from bfcl.data.types import Sample
from bfcl.errors import DataFormatError  # noqa: F401  (re-exported: bfcl.data.umt.DataFormatError)

Format = Literal["umt", "conll"]
IMGID_PREFIX = "IMGID:"
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "valid": ("valid", "dev", "val"),
    "test": ("test",),
}
SPLIT_EXTENSIONS = (".txt", ".conll", ".tsv", ".bio", "")
ACCEPTED_SPLIT_NAMES = "train|valid|dev|val|test with .txt/.conll/.tsv/.bio or no extension"
SEPARATOR_WHITESPACE = " \t\f\v"
"""A line made only of these characters separates samples."""
SHOW_CHARS = 80
MAX_LISTED_LINES = 5

logger = logging.getLogger(__name__)


def show(text: str, limit: int = SHOW_CHARS) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters: an error on a 10 MB line stays readable."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"… ({len(text)} characters)"


def check_text_encoding(raw: bytes, source: str) -> None:
    """Refuse UTF-16 (with or without BOM) and binary files before decoding.

    UTF-16 text of ASCII characters is valid UTF-8 with a NUL after every
    character, so it must be caught by its NUL pattern, not by a decode error.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(
            source, 1, "the file is UTF-16 (it starts with a UTF-16 byte-order mark); bfcl reads UTF-8: "
            "convert it, e.g. iconv -f UTF-16 -t UTF-8"
        )
    first = raw.find(b"\x00")
    if first < 0:
        return
    head = raw[:4096]
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if max(even, odd) >= 0.3 * half and min(even, odd) <= 0.1 * max(even, odd):
        order = "little-endian" if odd > even else "big-endian"
        raise DataFormatError(
            source, 1, f"the file looks like UTF-16 ({order}, no byte-order mark: every other byte is NUL); "
            "bfcl reads UTF-8: convert it, e.g. iconv -f UTF-16 -t UTF-8"
        )
    line = raw[:first].count(b"\n") + 1
    raise DataFormatError(source, line, f"NUL byte at byte {first}: not a text file")


def _decode(raw: bytes, source: str) -> str:
    check_text_encoding(raw, source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(source, line, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # text ended with a newline
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_separator(line: str) -> bool:
    """Blank, or spaces and tabs only (a lone tab is a common separator); a single space is not."""
    return line == "" or (line != " " and line.strip(SEPARATOR_WHITESPACE) == "")


def _is_imgid(line: str) -> bool:
    return line.startswith(IMGID_PREFIX) and "\t" not in line


def _label_filter(labels: LabelSet | Iterable[str] | None) -> Collection[str] | None:
    if labels is None:
        return None
    return set(labels)


def detect_format(text: str) -> Format:
    """``umt`` when the first non-blank line is an ``IMGID:`` line, else ``conll``."""
    for line in _split_lines(text.removeprefix("\ufeff")):
        if not _is_separator(line) and line != " ":
            return "umt" if _is_imgid(line) else "conll"
    return "conll"


def parse_samples(
    text: str,
    *,
    source: str = "<memory>",
    fmt: Format | Literal["auto"] = "auto",
    labels: LabelSet | Iterable[str] | None = None,
    strict: bool = False,
) -> list[Sample]:
    """Parse file content; ``labels`` fixes the allowed label set.

    Lines with an empty token and lines holding a single space are skipped with
    one warning that counts them and names their lines, or, with ``strict``,
    refused with a ``DataFormatError``.
    """
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt not in ("umt", "conll"):
        raise ValueError(f"unknown format {fmt!r}: use 'umt', 'conll' or 'auto'")
    allowed = _label_filter(labels)
    stem = Path(source).stem if source != "<memory>" else "sample"
    text = text.removeprefix("\ufeff")

    samples: list[Sample] = []
    first_line: dict[str, int] = {}
    image_id: str | None = None
    start = 0
    tokens: list[str] = []
    tags: list[str] = []
    open_sample = False
    skipped: dict[str, list[int]] = {}

    def skip(n: int, what: str) -> None:
        if strict:
            raise DataFormatError(source, n, f"{what} (strict reading refuses it; without strict it is skipped)")
        skipped.setdefault(what, []).append(n)

    def finish() -> None:
        nonlocal open_sample, tokens, tags, image_id
        if not open_sample:
            return
        if not tokens:
            raise DataFormatError(source, start, f"sample IMGID:{image_id} has no tokens")
        sid = image_id if fmt == "umt" else f"{stem}-{len(samples) + 1}"
        assert sid is not None
        if sid in first_line:
            raise DataFormatError(
                source, start, f"duplicate sample id {show(sid)} (first at line {first_line[sid]})"
            )
        first_line[sid] = start
        samples.append(Sample(id=sid, tokens=tokens, labels=tags, image_id=image_id, source=source, line=start))
        tokens, tags, image_id, open_sample = [], [], None, False

    lines = _split_lines(text)
    for n, line in enumerate(lines, start=1):
        if _is_separator(line):
            finish()
            continue
        if line == " ":
            skip(n, "a line holding a single space")
            continue
        if fmt == "umt" and _is_imgid(line):
            finish()
            image_id = line[len(IMGID_PREFIX):]
            if image_id == "" or image_id.strip() != image_id:
                raise DataFormatError(source, n, f"bad image id in {show(line)}: empty or surrounded by spaces")
            start, open_sample = n, True
            continue
        if fmt == "conll" and _is_imgid(line):
            raise DataFormatError(source, n, f"IMGID line in a CoNLL file: {show(line)} (read it as UMT)")
        if fmt == "umt" and not open_sample:
            raise DataFormatError(source, n, f"token line before any IMGID line: {show(line)}")
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(
                source,
                n,
                f"expected 'token<TAB>label' (2 fields) but found {len(fields)} field(s): {show(line)}"
                + (" (a token may not contain a tab)" if len(fields) > 2 else ""),
            )
        token, label = fields
        if not is_valid_label(label):
            raise DataFormatError(source, n, f"label {show(label)} is not O, B-<type> or I-<type>")
        if allowed is not None and label not in allowed:
            raise DataFormatError(
                source, n, f"unknown label {show(label)}; allowed: {', '.join(sorted(allowed))}"
            )
        if token == "":
            skip(n, f"an empty token (label {label})")
            continue
        if not open_sample:
            start, open_sample = n, True
        tokens.append(token)
        tags.append(label)
    finish()
    if skipped:
        logger.warning("%s", _skip_message(source, skipped))
    return samples


def _skip_message(source: str, skipped: dict[str, list[int]]) -> str:
    parts = []
    for what, lines in skipped.items():
        listed = ", ".join(map(str, lines[:MAX_LISTED_LINES])) + (", …" if len(lines) > MAX_LISTED_LINES else "")
        parts.append(f"{len(lines)} with {what} (line{'s' if len(lines) > 1 else ''} {listed})")
    total = sum(len(v) for v in skipped.values())
    return f"{source}: skipped {total} line(s): " + "; ".join(parts) + " (strict reading refuses them)"


def read_samples(
    path: str | os.PathLike,
    *,
    labels: LabelSet | Iterable[str] | None = None,
    fmt: Format | Literal["auto"] = "auto",
    strict: bool = False,
) -> list[Sample]:
    """Read a UMT or CoNLL file (format detected from its first non-blank line); see ``parse_samples``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"expected a data file but got a directory: {path}") from None
    return parse_samples(_decode(raw, str(path)), source=str(path), fmt=fmt, labels=labels, strict=strict)


def read_umt(
    path: str | os.PathLike, *, labels: LabelSet | Iterable[str] | None = None, strict: bool = False
) -> list[Sample]:
    return read_samples(path, labels=labels, fmt="umt", strict=strict)


def read_conll(
    path: str | os.PathLike, *, labels: LabelSet | Iterable[str] | None = None, strict: bool = False
) -> list[Sample]:
    return read_samples(path, labels=labels, fmt="conll", strict=strict)


def format_samples(
    samples: Sequence[Sample],
    labels: Sequence[Sequence[str]] | None = None,
    fmt: Format = "umt",
    *,
    final_blank_line: bool = True,
) -> str:
    """File text for ``samples``; ``labels`` (one sequence per sample) replaces their labels.

    UMT writes ``IMGID:<image_id>``, or ``IMGID:<id>`` for a sample without
    image id, so every written sample stays addressable.
    """
    if fmt not in ("umt", "conll"):
        raise ValueError(f"unknown format {fmt!r}: use 'umt' or 'conll'")
    if labels is not None and len(labels) != len(samples):
        raise ValueError(f"got {len(labels)} label sequences for {len(samples)} samples")
    blocks = []
    for i, sample in enumerate(samples):
        tags = labels[i] if labels is not None else sample.labels
        where = f"sample {sample.id!r} ({sample.source}:{sample.line})"
        if tags is None:
            raise ValueError(f"{where} has no labels to write")
        if len(tags) != len(sample.tokens):
            raise ValueError(f"{where} has {len(sample.tokens)} tokens but {len(tags)} labels")
        if not sample.tokens:
            raise ValueError(f"{where} has no tokens")
        lines = []
        if fmt == "umt":
            image_id = sample.image_id if sample.image_id is not None else sample.id
            if not image_id or any(c in image_id for c in "\t\r\n"):
                raise ValueError(f"{where}: image id {show(image_id)} cannot be written on an IMGID line")
            lines.append(IMGID_PREFIX + image_id)
        for token, tag in zip(sample.tokens, tags):
            if token == "" or "\t" in token or "\n" in token:
                raise ValueError(f"{where}: token {show(token)} cannot be written (empty, tab or newline)")
            if not is_valid_label(tag):
                raise ValueError(f"{where}: label {show(tag)} is not O, B-<type> or I-<type>")
            lines.append(f"{token}\t{tag}")
        blocks.append("\n".join(lines) + "\n")
    text = "\n".join(blocks)
    if final_blank_line and blocks:
        text += "\n"
    return text


def write_samples(
    path: str | os.PathLike,
    samples: Sequence[Sample],
    labels: Sequence[Sequence[str]] | None = None,
    fmt: Format = "umt",
    *,
    final_blank_line: bool = True,
) -> None:
    """Write samples (UTF-8, LF). Atomic, so a crash never leaves half a prediction file.

    ``final_blank_line=False`` ends the file right after the last token line,
    as the Twitter-2015 files do.
    """
    text = format_samples(samples, labels, fmt, final_blank_line=final_blank_line)
    with atomic_write(path) as f:
        f.write(text)


def find_split(directory: str | os.PathLike, split: str) -> Path:
    """The file of ``split`` in a dataset directory: ``train``, ``valid``/``dev``, ``test``.

    Accepts ``.txt``, ``.conll``, ``.tsv``, ``.bio`` or no extension; two
    candidates for one split is an error rather than a silent pick.
    """
    directory = Path(directory)
    key = "valid" if split in ("dev", "val") else split
    if key not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}: use train, valid (or dev) or test")
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    found = [
        directory / f"{name}{ext}"
        for name in SPLIT_NAMES[key]
        for ext in SPLIT_EXTENSIONS
        if (directory / f"{name}{ext}").is_file()
    ]
    if not found:
        names = "/".join(SPLIT_NAMES[key])
        raise FileNotFoundError(
            f"no {key} split in {directory} (looked for {names} with .txt, .conll, .tsv, .bio or no extension)"
        )
    if len(found) > 1:
        raise ValueError(f"ambiguous {key} split in {directory}: {', '.join(p.name for p in found)}")
    return found[0]


def find_splits(directory: str | os.PathLike) -> dict[str, Path]:
    """Every split present, keyed by its file stem (``train``, ``valid`` or ``dev``, ``test``)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    out: dict[str, Path] = {}
    for split in SPLIT_NAMES:
        try:
            path = find_split(directory, split)
        except FileNotFoundError:
            continue
        out[path.stem] = path
    if not out:
        raise FileNotFoundError(f"no train/valid/dev/test files in {directory} (accepted names: {ACCEPTED_SPLIT_NAMES})")
    return out


def image_path(
    images_dir: str | os.PathLike,
    image_id: str | None,
    extensions: Sequence[str] = (".jpg",),
) -> Path | None:
    """Path of the image for ``image_id``, or None when there is none (a normal case).

    Ids are file names, never paths: one with a separator is refused so a data
    file cannot point outside ``images_dir``.
    """
    if image_id is None:
        return None
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\0" in image_id:
        raise ValueError(f"image id {show(image_id)} is not a plain file name")
    base = Path(images_dir)
    for ext in extensions:
        candidate = base / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def image_paths(
    samples: Sequence[Sample], images_dir: str | os.PathLike | None, extensions: Sequence[str] = (".jpg",)
) -> list[Path | None]:
    """Each sample's image file, or None (no images folder, no IMGID, or no file: the no-image case)."""
    if images_dir is None:
        return [None] * len(samples)
    return [image_path(images_dir, s.image_id, tuple(extensions)) for s in samples]
