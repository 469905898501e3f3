"""``bfcl predict --input posts.jsonl`` with JSONL output: streamed, and resumable after a kill.

Why: a year of posts does not fit in memory as one list. Posts are read, predicted and
written ``CHUNK_POSTS`` at a time, so memory stays flat whatever the input size (only each
post's id is kept, to refuse duplicates). Output to a file goes to ``<output>.part``,
flushed after every chunk and renamed to ``<output>`` once complete. After a kill,
``--resume`` counts the complete lines of ``<output>.part`` (or of ``<output>``), checks
that their ids are the input's first posts, in order, and predicts only the rest.

Who predicts a chunk is pluggable (``run_chunks``): this process by default, or the workers
of a cluster (``bfcl.distributed``). Either way the lines come from :func:`prediction_lines`,
so an engine's output is byte-identical to the local one for the same chunks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Optional

from bfcl.data.jsonl import Record
from bfcl.errors import DataFormatError

if TYPE_CHECKING:
    from bfcl.inference.predictor import Predictor

__all__ = ["CHUNK_POSTS", "ChunkRunner", "complete_lines", "part_path", "prediction_lines", "stream_jsonl"]

CHUNK_POSTS = 512
"""Posts handed to Predictor.predict_batch at once: large enough that its length sorting keeps
padding low, small enough that output streams and memory stays flat. Every engine cuts the same
chunks (a post's scores depend, in the 6th digit, on the posts batched beside it)."""

ChunkRunner = Callable[[Iterator[tuple[list[Record], int]], object], Iterator[tuple[str, int]]]
"""Predicts chunks for :func:`stream_jsonl`: given ``(chunk, skip)`` pairs and the progress bar,
yields, for each chunk in the same order, the output lines of its posts after the first ``skip``
(:func:`prediction_lines`) and how many of those used an image; it advances the bar."""


def part_path(output: Path) -> Path:
    """Where a streamed output grows until it is complete."""
    return output.with_name(output.name + ".part")


def complete_lines(path: Path) -> int:
    """Complete (newline-ended) lines of ``path``; a trailing partial line, as a kill leaves, is cut off."""
    count, end = 0, 0
    with path.open("rb") as f:
        pos = 0
        for raw in f:
            pos += len(raw)
            if raw.endswith(b"\n"):
                count, end = count + 1, pos
    if end != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(end)
    return count


def _skip_done(records: Iterator[Record], done: Path, n: int, chunk_posts: int) -> list[Record]:
    """Consume the first ``n`` records, checking each against the id on the same line of ``done``;
    returns those of the last, unfinished chunk (``n % chunk_posts``), to be predicted again."""
    held: list[Record] = []
    with done.open("r", encoding="utf-8", newline="\n") as f:
        for k, line in enumerate(islice(f, n), start=1):
            try:
                got = json.loads(line).get("id")
            except (json.JSONDecodeError, AttributeError):
                raise DataFormatError(done, k, "cannot resume: not a prediction line") from None
            record = next(records, None)
            if record is None:
                raise DataFormatError(done, k, f"cannot resume: the output has more lines than the input has posts ({k - 1})")
            if got != record.id:
                raise DataFormatError(
                    done, k, f"cannot resume: this line is post id {json.dumps(got)}, but post {k} of the input is {json.dumps(record.id)}"
                )
            if k > n - n % chunk_posts:
                held.append(record)
    return held


def predict_chunk(predictor, chunk: list[Record], batch_size: int, bar, already: int = 0) -> list:
    """Predictions for one chunk of records, advancing ``bar`` by posts from ``already`` on."""
    done = already

    def tick(n_windows: int) -> None:
        nonlocal done  # the runner counts windows (a long post has several): never run past the chunk
        step = min(n_windows, len(chunk) - done)
        bar.update(step)
        done += step

    preds = predictor.predict_batch(
        [{"text" if isinstance(r.content, str) else "tokens": r.content, "image": r.image} for r in chunk],
        batch_size=batch_size,
        progress=tick,
    )
    bar.update(len(chunk) - done)
    return preds


def prediction_lines(chunk: list[Record], preds: list, skip: int = 0) -> tuple[str, int]:
    """The JSONL lines of a chunk's predictions after the first ``skip``, and how many used an image."""
    new = list(zip(chunk, preds))[skip:]
    text = "".join(json.dumps({"id": r.id, **p.to_dict()}, ensure_ascii=False) + "\n" for r, p in new)
    return text, sum(p.has_image for _, p in new)


def local_runner(predictor: "Predictor", batch_size: int) -> ChunkRunner:
    """The default :data:`ChunkRunner`: every chunk predicted here, one after the other."""

    def run(chunks: Iterator[tuple[list[Record], int]], bar) -> Iterator[tuple[str, int]]:
        for chunk, skip in chunks:
            yield prediction_lines(chunk, predict_chunk(predictor, chunk, batch_size, bar, already=skip), skip)

    return run


def stream_jsonl(
    predictor: Optional["Predictor"],
    records: Iterator[Record],
    output: Optional[Path],
    *,
    batch_size: int,
    chunk_posts: int,
    resume: bool,
    bar: "object",
    note: Callable[[str], None],
    run_chunks: Optional[ChunkRunner] = None,
) -> tuple[int, int, int]:
    """Predict and write every record; returns (lines in the output, posts with an image used, posts resumed).

    ``run_chunks`` predicts the chunks (default: ``predictor`` in this process). The chunks are
    the same whoever predicts them: a post's scores depend on the posts batched beside it."""
    if run_chunks is None:
        if predictor is None:
            raise ValueError("stream_jsonl needs a predictor or run_chunks")
        run_chunks = local_runner(predictor, batch_size)
    resumed = 0
    held: list[Record] = []  # the posts of an unfinished chunk that are already written
    out: IO[str]
    part: Optional[Path] = None
    if output is None:
        out = sys.stdout
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(output)
        if resume and not part.exists() and output.exists():
            os.replace(output, part)  # a finished (or truncated) output continues like a part file
        if resume and part.exists():
            resumed = complete_lines(part)
            held = _skip_done(records, part, resumed, chunk_posts)
            if resumed:
                note(f"resuming after {resumed} post(s) already in {part.name}")
        elif part.exists():
            note(f"note: {part} from an earlier run is started over (use --resume to continue it)")
        out = part.open("a" if resumed else "w", encoding="utf-8", newline="\n")
    bar.update(resumed - len(held))
    with_image = 0
    written = resumed

    def chunks() -> Iterator[tuple[list[Record], int]]:
        # A post's scores can move in the 6th digit with the posts batched beside it, so a
        # resumed run predicts the unfinished chunk whole again and writes only what is new.
        nonlocal held
        while chunk := held + list(islice(records, chunk_posts - len(held))):
            skip, held = len(held), []
            yield chunk, skip

    try:
        for text, used in run_chunks(chunks(), bar):
            out.write(text)
            out.flush()
            with_image += used
            written += text.count("\n")  # one line per post: json.dumps escapes newlines
        if part is not None:
            os.fsync(out.fileno())
    finally:
        if out is not sys.stdout:
            out.close()
    if part is not None and output is not None:
        os.replace(part, output)
    return written, with_image, resumed
