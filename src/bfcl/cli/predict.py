"""``bfcl predict``: run a trained model on one post or on a whole file.

Two modes:

* ``--text "..." [--image FILE]``: the entities of one post, as a table or JSON.
* ``--input FILE``: every post of a JSONL file (``{"id", "text" | "tokens", "image"}``
  per line) or of a UMT/CoNLL data file, written as JSONL (one prediction dict
  per line, with its id) or in the data format, whose tokens are exactly the
  input's so ``bfcl evaluate --gold ... --pred ...`` can score it.

Torch, transformers and the model code are imported inside the command, so
``bfcl --help`` stays fast. Usage errors (missing model or input, conflicting
options) exit with code 2; problems found while reading or predicting exit 1, and so
do all image errors (missing or unreadable alike).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Optional, Union

import typer

if TYPE_CHECKING:
    from bfcl.data.types import Sample
    from bfcl.inference.predictor import Prediction, Predictor

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png"]
DEFAULT_FEATURE_CACHE = Path(".cache") / "bfcl-features"
# Posts handed to Predictor.predict_batch at once: large enough that its length
# sorting keeps padding low, small enough that output streams and memory stays flat.
CHUNK_POSTS = 512
MAX_LISTED_WARNINGS = 5


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    umt = "umt"
    conll = "conll"


class ImageOnError(str, Enum):
    none = "none"
    error = "error"


class InputError(Exception):
    """A problem in the input file; the message names the file and line."""


@dataclass
class Record:
    """One post to predict, whatever file it came from."""

    id: Union[str, int]
    content: Union[str, list[str]]
    """Raw text (tokenised like the training data) or the exact tokens."""
    image: Optional[str]
    sample: Optional["Sample"] = None
    """The data-file sample, so data-format output keeps its IMGID and tokens."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _note(message: str) -> None:
    typer.echo(message, err=True)


# ----------------------------------------------------------------------------- input


def _is_jsonl(path: Path) -> bool:
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


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs; only ``\\n`` ends a line (tweets contain U+2028)."""
    from bfcl.data.umt import DataFormatError, check_text_encoding

    raw = path.read_bytes()
    try:
        check_text_encoding(raw, str(path))  # UTF-16 and binary files get a message that says so
        text = raw.decode("utf-8-sig")
    except DataFormatError as e:
        raise InputError(str(e)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield n, line


def read_jsonl(path: Path, images_dir: Optional[Path], on_error: str) -> tuple[list[Record], list[str]]:
    """Records of a JSONL file and warnings about image files that are missing.

    Relative image paths are resolved against ``images_dir`` or the file's folder. A
    missing image is an error with ``on_error="error"``, else the post goes text-only.
    """
    base = images_dir if images_dir is not None else path.parent
    records: list[Record] = []
    warnings: list[str] = []
    first_line: dict[str, int] = {}
    for n, line in _jsonl_lines(path):
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        content: Union[str, list[str]]
        if obj.get("text") is not None:
            if not isinstance(obj["text"], str):
                raise InputError(f"{where}: 'text' must be a string, got {type(obj['text']).__name__}")
            content = obj["text"]
        elif obj.get("tokens") is not None:
            tokens = obj["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise InputError(f"{where}: 'tokens' must be a list of strings")
            if any(t == "" or t.isspace() for t in tokens):
                raise InputError(f"{where}: 'tokens' contains an empty or whitespace-only token")
            content = list(tokens)
        else:
            raise InputError(f"{where}: needs a 'text' (string) or 'tokens' (list of strings) field")
        rid = obj.get("id", n)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise InputError(f"{where}: 'id' must be a string or an integer, got {json.dumps(rid)}")
        key = str(rid)  # ids become IMGID lines in UMT output, where 3 and "3" collide
        if key in first_line:
            raise InputError(f"{where}: duplicate id {json.dumps(rid)} (first at line {first_line[key]})")
        first_line[key] = n
        image = obj.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise InputError(f"{where}: 'image' must be a non-empty path string or null")
            resolved = Path(image).expanduser()
            if not resolved.is_absolute():
                resolved = base / resolved
            if not resolved.is_file():
                problem = "image is not a regular file" if resolved.exists() else "image file not found"
                if on_error == "error":
                    raise InputError(f"{where}: {problem}: {resolved}")
                warnings.append(f"{where}: {problem}: {resolved}")
                image = None
            else:
                image = str(resolved)
        records.append(Record(rid, content, image))
    return records, warnings


def read_data_file(
    path: Path, images_dir: Optional[Path], extensions: Sequence[str]
) -> tuple[list[Record], str, int]:
    """Records of a UMT/CoNLL file, its format, and how many IMGIDs had no image file."""
    from bfcl.data.umt import DataFormatError, image_path, read_samples

    try:
        samples = read_samples(path)
    except DataFormatError as e:
        raise InputError(str(e)) from None
    fmt = "umt" if any(s.image_id is not None for s in samples) else "conll"
    records: list[Record] = []
    missing = 0
    for s in samples:
        image = None
        if images_dir is not None and s.image_id is not None:
            try:
                found = image_path(images_dir, s.image_id, tuple(extensions))
            except ValueError as e:
                raise InputError(f"{s.source}:{s.line}: {e}") from None
            if found is None:
                missing += 1
            else:
                image = str(found)
        records.append(Record(s.id, list(s.tokens), image, s))
    return records, fmt, missing


# ----------------------------------------------------------------------------- output


class _AtomicText:
    """A text file that appears under its name only once complete (a crash leaves no half file)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.tmp: Optional[str] = None
        if path is None:
            self.file: IO[str] = sys.stdout
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def commit(self) -> None:
        if self.path is None:
            self.file.flush()
            return
        self.file.close()
        assert self.tmp is not None
        os.replace(self.tmp, self.path)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            self.file.close()
            Path(self.tmp).unlink(missing_ok=True)
            self.tmp = None


def _prediction_record(record: Record, pred: "Prediction") -> dict[str, Any]:
    return {"id": record.id, **pred.to_dict()}


def _sample_for_output(record: Record, pred: "Prediction") -> "Sample":
    from bfcl.data.types import Sample

    if record.sample is not None:
        return record.sample
    return Sample(id=str(record.id), tokens=[t.text for t in pred.tokens])


# ----------------------------------------------------------------------------- modes


def _load_predictor(model: Path, feature_cache: Path, on_error: str, device: Optional[str]) -> "Predictor":
    from bfcl.inference.predictor import Predictor

    try:
        return Predictor.load(model, feature_cache=feature_cache, image_on_error=on_error, device=device)
    except FileNotFoundError as e:
        raise _fail(str(e), 2) from None


def _print_entities(pred: "Prediction", title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    table.add_column("text")
    table.add_column("type")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    table.add_column("score", justify="right")
    for e in pred.entities:
        table.add_row(Text(e.text), e.type, str(e.start), str(e.end), f"{e.score:.4f}")
    console = Console()
    if pred.entities:
        console.print(table)
    else:
        console.print(Text(f"{title}: no entities"))


def _predict_text(predictor: "Predictor", text: str, image: Optional[Path], as_json: bool) -> None:
    from bfcl.data.images import ImageLoadError

    try:
        pred = predictor.predict(text, image=str(image) if image is not None else None)
    except (ImageLoadError, OSError) as e:
        raise _fail(f"{e} (use --image-on-error none to predict without the image)", 1) from None
    if as_json:
        typer.echo(json.dumps(pred.to_dict(), ensure_ascii=False, indent=2))
        return
    if image is not None and predictor.cache is None:
        _note("note: this model does not read images; --image was ignored")
    elif image is not None and not pred.has_image:
        _note(f"note: image {image} could not be used; predicted from the text alone")
    n = len(pred.entities)
    _print_entities(pred, f"{n} entit{'y' if n == 1 else 'ies'} ({'with' if pred.has_image else 'without'} image)")


def _predict_file(
    predictor: "Predictor",
    records: list[Record],
    out_format: str,
    output: Optional[Path],
    batch_size: int,
    show_progress: bool,
) -> tuple[int, int, list[str]]:
    """Predict every record, in order, and write them; returns (written, with image, skipped ids)."""
    from tqdm import tqdm

    from bfcl.data.umt import format_samples, write_samples

    out = _AtomicText(output) if out_format == "jsonl" else None
    samples: list[Sample] = []
    labels: list[list[str]] = []
    skipped: list[str] = []
    with_image = 0
    bar = tqdm(total=len(records), unit="post", file=sys.stderr, disable=not show_progress, dynamic_ncols=True)
    try:
        for k in range(0, len(records), CHUNK_POSTS):
            chunk = records[k : k + CHUNK_POSTS]
            done = 0

            def tick(n_windows: int) -> None:
                # The runner counts windows (a long post has several): never run past the chunk.
                nonlocal done
                step = min(n_windows, len(chunk) - done)
                bar.update(step)
                done += step

            preds = predictor.predict_batch(
                [{"text" if isinstance(r.content, str) else "tokens": r.content, "image": r.image} for r in chunk],
                batch_size=batch_size,
                progress=tick,
            )
            bar.update(len(chunk) - done)
            for record, pred in zip(chunk, preds):
                with_image += pred.has_image
                if out is not None:
                    out.file.write(json.dumps(_prediction_record(record, pred), ensure_ascii=False) + "\n")
                elif not pred.tokens:
                    skipped.append(str(record.id))
                else:
                    samples.append(_sample_for_output(record, pred))
                    labels.append(pred.labels)
        bar.close()
        if out is not None:
            out.commit()
        elif output is None:
            sys.stdout.write(format_samples(samples, labels, out_format))
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            write_samples(output, samples, labels, out_format)
    finally:
        bar.close()
        if out is not None:
            out.discard()
    written = len(records) if out is not None else len(samples)
    return written, with_image, skipped


# ----------------------------------------------------------------------------- command


def predict_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Trained model directory (config.json, model.safetensors).")],
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="One post to label.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="The post's picture (with --text).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --text: print the prediction dict as JSON.")] = False,
    input_path: Annotated[
        Optional[Path],
        typer.Option("--input", "-i", help="JSONL ({'id', 'text'|'tokens', 'image'} per line) or UMT/CoNLL file."),
    ] = None,
    images: Annotated[
        Optional[Path],
        typer.Option(
            "--images",
            help="Image folder: UMT files look up <IMGID><ext> here; relative JSONL image paths are "
            "resolved against it (default: the input file's folder).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Where to write predictions ('-' or omitted: stdout).")
    ] = None,
    out_format: Annotated[
        Optional[OutputFormat],
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="Output format. Default: jsonl when --output ends in .jsonl/.ndjson/.json, else the "
            "input's format (JSONL stays JSONL, UMT/CoNLL stays UMT/CoNLL).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Encoder windows per forward pass.")] = 32,
    image_on_error: Annotated[
        Optional[ImageOnError],
        typer.Option(
            "--image-on-error",
            case_sensitive=False,
            help="An unreadable image: 'error' stops, 'none' predicts that post from its text. "
            "Default: error with --text, none with --input (one bad file does not end a long run).",
        ),
    ] = None,
    feature_cache: Annotated[
        Path, typer.Option("--feature-cache", help="Cache of image-encoder features, keyed by image content.")
    ] = DEFAULT_FEATURE_CACHE,
    image_ext: Annotated[
        list[str], typer.Option("--image-ext", help="Extensions tried for UMT image ids, in order (repeatable).")
    ] = DEFAULT_IMAGE_EXTENSIONS,
    device: Annotated[Optional[str], typer.Option("--device", help="torch device (default: cuda if available).")] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: on a terminal).")
    ] = None,
) -> None:
    """Find named entities, of the types the model was trained on, in one post (--text) or in every post of a file (--input)."""
    # ---- usage checks: cheap, before any heavy import -------------------------
    if (text is None) == (input_path is None):
        raise _fail("give either --text TEXT or --input FILE", 2)
    if text is not None:
        for flag, value in (("--images", images), ("--output", output), ("--format", out_format)):
            if value is not None:
                raise _fail(f"{flag} applies to --input, not --text", 2)
        if image is not None and not image.is_file():  # exit 1, like every image error
            problem = "not a regular file" if image.exists() else "file not found"
            raise _fail(f"image {image}: {problem}", 1)
    else:
        if image is not None:
            raise _fail("--image applies to --text; with --input give image paths in the file or --images DIR", 2)
        if as_json:
            raise _fail("--json applies to --text; use --format jsonl with --input", 2)
    if not model.is_dir():
        raise _fail(f"model directory not found: {model}", 2)
    if not (model / "config.json").is_file():
        raise _fail(f"{model} is not a bfcl model directory (no config.json)", 2)
    on_error = (image_on_error.value if image_on_error else None) or ("error" if text is not None else "none")

    if text is not None:
        predictor = _load_predictor(model, feature_cache, on_error, device)
        _predict_text(predictor, text, image, as_json)
        return

    assert input_path is not None
    if not input_path.exists():
        raise _fail(f"input file not found: {input_path}", 2)
    if not input_path.is_file():
        raise _fail(f"input is not a file: {input_path}", 2)
    if images is not None and not images.is_dir():
        raise _fail(f"image folder not found: {images}", 2)
    if output is not None and str(output) == "-":
        output = None
    if output is not None:
        if output.is_dir():
            raise _fail(f"--output is a directory: {output}", 2)
        if output.exists() and output.resolve() == input_path.resolve():
            raise _fail("--output would overwrite --input", 2)

    # ---- read -----------------------------------------------------------------
    try:
        if _is_jsonl(input_path):
            in_format = "jsonl"
            records, warnings = read_jsonl(input_path, images, on_error)
            missing = len(warnings)
        else:
            extensions = [e if e.startswith(".") else f".{e}" for e in image_ext]
            records, in_format, missing = read_data_file(input_path, images, extensions)
            warnings = []
    except InputError as e:
        raise _fail(str(e), 1) from None
    if not records:  # an empty output with exit 0 would hide a wrong path or a failed export
        raise _fail(f"{input_path}: no posts to predict (the file is empty)", 1)
    if out_format is not None:
        fmt = out_format.value
    elif output is not None and output.suffix.lower() in JSONL_SUFFIXES:
        fmt = "jsonl"
    else:
        fmt = in_format
    for w in warnings[:MAX_LISTED_WARNINGS]:
        _note(f"warning: {w}; predicting that post from its text")
    if len(warnings) > MAX_LISTED_WARNINGS:
        _note(f"warning: {len(warnings) - MAX_LISTED_WARNINGS} more image files not found")

    # ---- predict and write ------------------------------------------------------
    from bfcl.data.images import ImageLoadError

    predictor = _load_predictor(model, feature_cache, on_error, device)
    wants_images = any(r.image is not None for r in records)
    if wants_images and predictor.cache is None:
        _note("note: this model does not read images; they are ignored")
    if in_format != "jsonl" and images is None and predictor.cache is not None:
        _note("note: no --images folder given; predicting from the text alone")
    show = progress if progress is not None else sys.stderr.isatty()
    t0 = time.perf_counter()
    try:
        written, with_image, skipped = _predict_file(predictor, records, fmt, output, batch_size, show)
    except ImageLoadError as e:
        raise _fail(f"{e} (use --image-on-error none to predict such posts from their text)", 1) from None
    except OSError as e:
        raise _fail(str(e), 1) from None
    except ValueError as e:  # e.g. an id or token that cannot be written in the data format
        raise _fail(f"cannot write {fmt}: {e}", 1) from None
    seconds = time.perf_counter() - t0

    if skipped:
        shown = ", ".join(skipped[:MAX_LISTED_WARNINGS]) + (" ..." if len(skipped) > MAX_LISTED_WARNINGS else "")
        _note(f"warning: {len(skipped)} post(s) without tokens left out of the {fmt} output: {shown}")
    unusable = predictor.cache.failed if predictor.cache is not None else 0
    rate = len(records) / seconds if seconds > 0 else float("inf")
    where = str(output) if output is not None else "stdout"
    summary = f"{written} prediction(s) -> {where} ({fmt}), {rate:.1f} posts/s; images used {with_image}"
    if missing:
        summary += f", not found {missing}"
    if unusable:
        summary += f", unreadable {unusable}"
    _note(summary)


def register(app: typer.Typer) -> None:
    """Attach ``predict`` to the main ``bfcl`` app."""
    app.command("predict")(predict_command)
