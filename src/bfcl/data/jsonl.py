"""JSONL posts: one ``{"id", "text" | "tokens", "image"}`` object a line, as ``bfcl predict --input`` reads them.

Every problem raises :class:`~bfcl.errors.DataFormatError` naming the file and line. Only
``\n`` ends a line: tweets contain U+2028 and U+2029, which ``str.splitlines`` would split on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from bfcl.data.umt import check_text_encoding
from bfcl.errors import DataFormatError

if TYPE_CHECKING:
    from bfcl.data.types import Sample

__all__ = ["JSONL_SUFFIXES", "Record", "is_jsonl", "iter_jsonl", "jsonl_lines", "read_jsonl"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class Record:
    """One post to predict, whatever file it came from."""

    id: Union[str, int]
    content: Union[str, list[str]]
    """Raw text (tokenised like the training data) or the exact tokens."""
    image: Optional[str]
    sample: Optional["Sample"] = None
    """The data-file sample, so data-format output keeps its IMGID and tokens."""


def is_jsonl(path: Path) -> bool:
    """JSONL by suffix, else by content: the first non-blank line parses as a JSON object.

    A CoNLL line such as ``{<TAB>O`` starts with a brace too, hence the parse.
    """
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if not line.startswith("{"):
                return False
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return "\t" not in line  # a broken JSON line is still meant as JSONL
    return False


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs, read one line at a time (memory does not grow with the file);
    only ``\\n`` ends a line (tweets contain U+2028)."""
    with path.open("rb") as f:
        head = f.read(4096)
        check_text_encoding(head, str(path))  # UTF-16 and binary files get a message that says so
        f.seek(0)
        offset = 0
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, offset = raw[3:], 3
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise DataFormatError(path, n, f"NUL byte at byte {offset + nul}: not a text file")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, n, f"not valid UTF-8 ({e.reason} at byte {offset + e.start})") from None
            offset += len(raw)
            line = line.removesuffix("\n").removesuffix("\r")
            if line.strip():
                yield n, line


def read_jsonl(path: Path, images_dir: Optional[Path], on_error: str) -> tuple[list[Record], list[str]]:
    """Records of a JSONL file and warnings about image files that are missing.

    Relative image paths are resolved against ``images_dir`` or the file's folder. A
    missing image is an error with ``on_error="error"``, else the post goes text-only.
    """
    warnings: list[str] = []
    return list(iter_jsonl(path, images_dir, on_error, warnings.append)), warnings


def iter_jsonl(
    path: Path, images_dir: Optional[Path], on_error: str, warn: Callable[[str], None]
) -> Iterator[Record]:
    """The records of ``read_jsonl`` one at a time, read as they are asked for; each missing
    image goes to ``warn``. Memory grows only by each post's id (kept to refuse duplicates)."""
    base = images_dir if images_dir is not None else path.parent
    first_line: dict[str, int] = {}
    for n, line in jsonl_lines(path):
        where = f"{path}:{n}"  # for warnings
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, f"expected a JSON object, got {type(obj).__name__}")
        content: Union[str, list[str]]
        if obj.get("text") is not None:
            if not isinstance(obj["text"], str):
                raise DataFormatError(path, n, f"'text' must be a string, got {type(obj['text']).__name__}")
            content = obj["text"]
        elif obj.get("tokens") is not None:
            tokens = obj["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise DataFormatError(path, n, f"'tokens' must be a list of strings")
            if any(t == "" or t.isspace() for t in tokens):
                raise DataFormatError(path, n, f"'tokens' contains an empty or whitespace-only token")
            content = list(tokens)
        else:
            raise DataFormatError(path, n, f"needs a 'text' (string) or 'tokens' (list of strings) field")
        rid = obj.get("id", n)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataFormatError(path, n, f"'id' must be a string or an integer, got {json.dumps(rid)}")
        key = str(rid)  # ids become IMGID lines in UMT output, where 3 and "3" collide
        if key in first_line:
            raise DataFormatError(path, n, f"duplicate id {json.dumps(rid)} (first at line {first_line[key]})")
        first_line[key] = n
        image = obj.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise DataFormatError(path, n, f"'image' must be a non-empty path string or null")
            resolved = Path(image).expanduser()
            if not resolved.is_absolute():
                resolved = base / resolved
            if not resolved.is_file():
                problem = "image is not a regular file" if resolved.exists() else "image file not found"
                if on_error == "error":
                    raise DataFormatError(path, n, f"{problem}: {resolved}")
                warn(f"{where}: {problem}: {resolved}")
                image = None
            else:
                image = str(resolved)
        yield Record(rid, content, image)
