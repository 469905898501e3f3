"""``bfcl predict``: run a trained model on one post or on a whole file.

Two modes:

* ``--text "..." [--image FILE]``: the entities of one post, as a table or JSON.
* ``--input FILE``: every post of a JSONL file (``{"id", "text" | "tokens", "image"}``
  per line) or of a UMT/CoNLL data file, written as JSONL (one prediction dict
  per line, with its id) or in the data format, whose tokens are exactly the
  input's so ``bfcl evaluate --gold ... --pred ...`` can score it.
  ``--engine ray`` (JSONL in and out) predicts on the workers of a Ray cluster instead of
  this process, with the same output (``bfcl.distributed``, docs/DISTRIBUTED.md).

Torch, transformers and the model code are imported inside the command, so
``bfcl --help`` stays fast. Usage errors (missing model or input, conflicting
options) exit with code 2; problems found while reading or predicting exit 1, and so
do all image errors (missing or unreadable alike).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Optional

import typer

from bfcl.data.atomic import atomic_write
from bfcl.data.jsonl import JSONL_SUFFIXES, Record, is_jsonl, read_jsonl
from bfcl.errors import DataFormatError
from bfcl.cli.predict_stream import CHUNK_POSTS, predict_chunk
from bfcl.threads import THREADS_HELP, apply_threads, follow_load

if TYPE_CHECKING:
    from bfcl.data.types import Sample
    from bfcl.distributed.ray_engine import RayPool
    from bfcl.inference.predictor import Prediction, Predictor

__all__ = ["InputError", "predict_command", "read_data_file", "read_jsonl", "register"]

DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png"]
DEFAULT_FEATURE_CACHE = Path(".cache") / "bfcl-features"
MAX_LISTED_WARNINGS = 5


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    umt = "umt"
    conll = "conll"


class ImageOnError(str, Enum):
    none = "none"
    error = "error"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


InputError = DataFormatError
"""A problem in the input file (the name this module used before the JSONL reader moved to ``bfcl.data.jsonl``)."""



def _summary(unusable: int, written: int, predicted: int, seconds: float, output, fmt: str, with_image: int,
             missing: int, resumed: int = 0) -> str:
    """The one-line report of a predict run: count, destination, speed, images used / not found / unreadable."""
    rate = predicted / seconds if seconds > 0 else float("inf")
    where = str(output) if output is not None else "stdout"
    line = f"{written} prediction(s) -> {where} ({fmt}), {rate:.1f} posts/s; images used {with_image}"
    for label, n in (("resumed after", resumed), ("not found", missing), ("unreadable", unusable)):
        if n:
            line += f", {label} {n}"
    return line


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _note(message: str) -> None:
    typer.echo(message, err=True)


# ----------------------------------------------------------------------------- input


def read_data_file(
    path: Path, images_dir: Optional[Path], extensions: Sequence[str]
) -> tuple[list[Record], str, int]:
    """Records of a UMT/CoNLL file, its format, and how many IMGIDs had no image file."""
    from bfcl.data.umt import image_path, read_samples

    samples = read_samples(path)
    fmt = "umt" if any(s.image_id is not None for s in samples) else "conll"
    records: list[Record] = []
    missing = 0
    for s in samples:
        image = None
        if images_dir is not None and s.image_id is not None:
            try:
                found = image_path(images_dir, s.image_id, tuple(extensions))
            except ValueError as e:
                raise DataFormatError(s.source, s.line, str(e)) from None
            if found is None:
                missing += 1
            else:
                image = str(found)
        records.append(Record(s.id, list(s.tokens), image, s))
    return records, fmt, missing


# ----------------------------------------------------------------------------- output


def _prediction_record(record: Record, pred: "Prediction") -> dict[str, Any]:
    return {"id": record.id, **pred.to_dict()}


def _sample_for_output(record: Record, pred: "Prediction") -> "Sample":
    from bfcl.data.types import Sample

    if record.sample is not None:
        return record.sample
    return Sample(id=str(record.id), tokens=[t.text for t in pred.tokens])


# ----------------------------------------------------------------------------- modes


def _load_predictor(
    model: Path, feature_cache: Path, on_error: str, device: Optional[str], follow: bool = False
) -> "Predictor":
    """``follow``: threads are "auto", so keep them at the free cores while the model runs (bfcl.threads)."""
    from bfcl.inference.predictor import Predictor

    try:
        predictor = Predictor.load(model, feature_cache=feature_cache, image_on_error=on_error, device=device)
    except FileNotFoundError as e:
        raise _fail(str(e), 2) from None
    if follow:
        follow_load(predictor.model)
    return predictor


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


def _unusable(predictor: "Predictor") -> int:
    """Images the predictor could not read (those posts were predicted from their text)."""
    return predictor.cache.failed if predictor.cache is not None else 0


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

    samples: list[Sample] = []
    labels: list[list[str]] = []
    skipped: list[str] = []
    with_image = 0
    with ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=len(records), unit="post", file=sys.stderr, disable=not show_progress, dynamic_ncols=True)
        )
        out: Optional[IO[str]] = None
        if out_format == "jsonl" and output is None:
            out = sys.stdout
        elif out_format == "jsonl":
            output.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(atomic_write(output))  # appears only once complete
        for k in range(0, len(records), CHUNK_POSTS):
            chunk = records[k : k + CHUNK_POSTS]
            preds = predict_chunk(predictor, chunk, batch_size, bar)
            for record, pred in zip(chunk, preds):
                with_image += pred.has_image
                if out is not None:
                    out.write(json.dumps(_prediction_record(record, pred), ensure_ascii=False) + "\n")
                elif not pred.tokens:
                    skipped.append(str(record.id))
                else:
                    samples.append(_sample_for_output(record, pred))
                    labels.append(pred.labels)
        if out is sys.stdout:
            out.flush()
    if out is None and output is None:
        sys.stdout.write(format_samples(samples, labels, out_format))
    elif out is None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_samples(output, samples, labels, out_format)
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
    device: Annotated[Optional[str], typer.Option("--device", help="torch device (default: cuda if available, else cpu).")] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: on a terminal).")
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help=THREADS_HELP + " With --engine ray: per worker (default 1).")
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            case_sensitive=False,
            help="Who predicts --input JSONL: 'local' (this process) or 'ray' (the workers of a Ray cluster, "
            "same output; needs bfcl's 'ray' extra; see docs/DISTRIBUTED.md).",
        ),
    ] = Engine.local,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="With --engine ray: the cluster. Default: start one on this machine, bound to loopback, for "
            "this run; 'auto': the one `ray start` runs here; HOST:PORT or ray://HOST:10001: a remote one.",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers", "-w", min=1,
            help="With --engine ray: worker processes, each loading the model once (default: one per --threads "
            "CPUs of the cluster, or one per GPU with --device cuda).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="JSONL in and out: continue a killed run, keeping the complete lines of OUTPUT.part (or OUTPUT) "
            "and predicting only the posts after them.",
        ),
    ] = False,
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
    ray_engine = engine == Engine.ray
    if ray_engine and text is not None:
        raise _fail("--engine ray applies to --input FILE (JSONL), not --text", 2)
    if not ray_engine:
        for flag, value in (("--address", address), ("--workers", workers)):
            if value is not None:
                raise _fail(f"{flag} applies to --engine ray", 2)
        apply_threads(threads)  # with ray, --threads is each worker's, set there

    if text is not None:
        predictor = _load_predictor(model, feature_cache, on_error, device, follow=threads is None)
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

    jsonl_in = is_jsonl(input_path)
    if jsonl_in and (out_format is None or out_format.value == "jsonl"):
        pool = None
        if ray_engine:
            from bfcl.distributed.ray_engine import RayPool, import_ray

            import_ray()  # a missing extra is named before the input is read
            pool = RayPool(
                model, address=address, workers=workers, threads=threads or 1, batch_size=batch_size, device=device,
                feature_cache=feature_cache, image_on_error=on_error, note=_note,
            )
        _stream_command(
            input_path, images, output, on_error, model, feature_cache, device, batch_size, progress, resume, pool,
            follow=threads is None,
        )
        return
    if ray_engine:
        raise _fail("--engine ray reads JSONL input and writes JSONL output", 2)
    if resume:
        raise _fail("--resume applies to JSONL input written as JSONL", 2)

    # ---- read -----------------------------------------------------------------
    try:
        if jsonl_in:
            in_format = "jsonl"
            records, warnings = read_jsonl(input_path, images, on_error)
            missing = len(warnings)
        else:
            extensions = [e if e.startswith(".") else f".{e}" for e in image_ext]
            records, in_format, missing = read_data_file(input_path, images, extensions)
            warnings = []
    except DataFormatError as e:
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

    predictor = _load_predictor(model, feature_cache, on_error, device, follow=threads is None)
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
    _note(_summary(_unusable(predictor), written, len(records), seconds, output, fmt, with_image, missing))


def _stream_command(
    input_path: Path,
    images: Optional[Path],
    output: Optional[Path],
    on_error: str,
    model: Path,
    feature_cache: Path,
    device: Optional[str],
    batch_size: int,
    progress: Optional[bool],
    resume: bool,
    pool: "Optional[RayPool]" = None,
    follow: bool = False,
) -> None:
    """JSONL in, JSONL out: read, predict and write a chunk at a time (bfcl.cli.predict_stream),
    here or, with a ``pool``, on the workers of a Ray cluster."""
    from bfcl.data.jsonl import iter_jsonl

    if resume and output is None:
        raise _fail("--resume needs --output FILE", 2)
    warnings: list[str] = []
    missing = 0

    def warn(message: str) -> None:
        nonlocal missing
        missing += 1
        if len(warnings) < MAX_LISTED_WARNINGS:
            warnings.append(message)

    records = iter_jsonl(input_path, images, on_error, warn)
    try:
        first = next(records, None)  # the first line's problems surface before the model loads
    except DataFormatError as e:
        raise _fail(str(e), 1) from None
    if first is None:  # an empty output with exit 0 would hide a wrong path or a failed export
        raise _fail(f"{input_path}: no posts to predict (the file is empty)", 1)
    with ExitStack() as stack:
        predictor = None
        if pool is None:
            predictor = _load_predictor(model, feature_cache, on_error, device, follow=follow)
        else:
            from bfcl.distributed.ray_engine import EngineError

            try:
                stack.enter_context(pool)
            except EngineError as e:
                raise _fail(str(e), 1) from None
            _note(f"ray: {pool.size} worker(s) on {len(pool.hosts)} node(s)")
        _stream_body(input_path, output, first, records, predictor, pool, batch_size, progress, resume, warnings, lambda: missing)


def _stream_body(
    input_path: Path,
    output: Optional[Path],
    first: Record,
    records: "Iterator[Record]",
    predictor: "Optional[Predictor]",
    pool: "Optional[RayPool]",
    batch_size: int,
    progress: Optional[bool],
    resume: bool,
    warnings: list[str],
    missing_count: "Callable[[], int]",
) -> None:
    """The streamed run itself, once the model is loaded (here, or on the pool's workers)."""
    from itertools import chain

    from tqdm import tqdm

    from bfcl.cli.predict_stream import part_path, stream_jsonl
    from bfcl.data.images import ImageLoadError

    engine_errors: tuple[type[BaseException], ...] = ()
    if pool is not None:
        from bfcl.distributed.ray_engine import EngineError

        engine_errors = (EngineError,)
    show = progress if progress is not None else sys.stderr.isatty()
    total = None
    if show:  # one cheap pass over the bytes, for the bar's total
        with input_path.open("rb") as f:
            total = sum(1 for line in f if line.strip())
    t0 = time.perf_counter()
    seen_image = False

    def watched() -> "Iterator[Record]":
        nonlocal seen_image
        for r in chain([first], records):
            seen_image = seen_image or r.image is not None
            yield r

    try:
        with tqdm(total=total, unit="post", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar:
            written, with_image, resumed = stream_jsonl(
                predictor, watched(), output, batch_size=batch_size, chunk_posts=CHUNK_POSTS, resume=resume, bar=bar,
                note=_note, run_chunks=pool,
            )
    except (DataFormatError, ImageLoadError, OSError, *engine_errors) as e:
        kept = part_path(output) if output is not None else None
        hint = f"; the predictions so far are in {kept}: fix the input and run again with --resume" if kept and kept.exists() else ""
        if kept is not None and isinstance(e, DataFormatError) and e.source == str(kept):
            hint = " (it was written for another input: delete it, or run without --resume to start over)"
        if isinstance(e, ImageLoadError):
            hint = " (use --image-on-error none to predict such posts from their text)" + hint
        if engine_errors and isinstance(e, engine_errors) and kept is not None and kept.exists():
            hint = f"; the predictions so far are in {kept}: run again with --resume"
        raise _fail(f"{e}{hint}", 1) from None
    seconds = time.perf_counter() - t0
    missing = missing_count()
    for w in warnings:
        _note(f"warning: {w}; predicted that post from its text")
    if missing > len(warnings):
        _note(f"warning: {missing - len(warnings)} more image files not found")
    reads_images = pool.reads_images if pool is not None else predictor.cache is not None
    if seen_image and not reads_images:
        _note("note: this model does not read images; they were ignored")
    unusable = pool.unusable if pool is not None else _unusable(predictor)
    _note(_summary(unusable, written, written - resumed, seconds, output, "jsonl", with_image, missing, resumed))


def register(app: typer.Typer) -> None:
    """Attach ``predict`` to the main ``bfcl`` app."""
    app.command("predict")(predict_command)
