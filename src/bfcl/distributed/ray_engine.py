"""``bfcl predict --engine ray``: a JSONL file of posts predicted by workers on a Ray cluster.

Why this shape (Ray Core actors fed by the driver, rather than Ray Data reading the file):

* **Same output as ``bfcl predict``, byte for byte.** A post's scores can move in the 6th
  digit with the posts batched beside it, so the workers must see exactly the local chunks.
  The driver reads the file with the local reader (same validation, same error naming the
  line, same image-path resolution) and cuts the same chunks (``CHUNK_POSTS``); each worker
  predicts a whole chunk and formats its lines with the local code
  (:func:`bfcl.cli.predict_stream.prediction_lines`); the driver writes them in input order.
* **Constant memory.** At most ``AHEAD_PER_WORKER`` chunks per worker are in flight or
  waiting to be written; the driver keeps only the ids (to refuse duplicates), as locally.
* **Resumable.** Writing goes through :func:`bfcl.cli.predict_stream.stream_jsonl`:
  ``<output>.part`` grows chunk by chunk and ``--resume`` continues a killed run.
* **Nothing but bfcl and Ray on the workers.** The model folder is read once on the driver
  and shipped through Ray's object store; each worker (an actor) loads it once. Image paths
  are read by the workers: they must be readable at the same path on every node.

A crashed worker process is restarted by Ray and its chunk run again (the result is the
same); an error in the data (an unreadable image with ``image_on_error="error"``) ends the
run as it does locally, after writing every chunk before it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from bfcl.data.jsonl import Record
from bfcl.errors import BFCLError, ConfigError

__all__ = ["EngineError", "RayPool", "RayRunReport", "predict_ray", "start_local_cluster"]

INSTALL_HINT = 'pip install "bfcl[ray]"'
#: Chunks a worker holds at once: one running and one queued, so it never waits for the driver.
QUEUED_PER_WORKER = 2
#: Chunks per worker that may be in flight or done but not yet written (a fast worker runs
#: ahead of a slow one by this much); bounds the driver's memory.
AHEAD_PER_WORKER = 4
#: Ray restarts a worker process that died (out of memory, node lost) this many times,
#: and runs its chunks again.
MAX_RESTARTS = 2
#: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take 127.0.0.1 as the node address and
#: bind every port there (Ray's own switch for single-machine use); read when Ray starts.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class EngineError(RuntimeError):
    """The cluster failed (a worker died for good, Ray could not start); the data is not at fault."""


def import_ray():
    """Ray, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def start_local_cluster(num_cpus: int, num_gpus: Optional[int] = None) -> None:
    """Start Ray on this machine only: every Ray port bound to 127.0.0.1, no dashboard, no usage report.

    Raises EngineError (after shutting Ray down) if the node still took a non-loopback address,
    so a throwaway local cluster is never reachable from the network."""
    saved = {k: os.environ.get(k) for k in (_LOOPBACK_ENV, "RAY_USAGE_STATS_ENABLED")}
    os.environ[_LOOPBACK_ENV] = "0"  # inherited by the processes Ray starts
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = import_ray()
    try:  # Ray reads the switch when it is first imported; set it too in case it already was
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without it: the address check below decides
        ray_constants = None
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",  # a new cluster, even where RAY_ADDRESS names another
            num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.WARNING,
            log_to_driver=True, _node_ip_address="127.0.0.1",
        )
    finally:
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    address = ray.util.get_node_ip_address()
    if address not in _LOOPBACK:
        ray.shutdown()
        raise EngineError(
            f"Ray bound the local cluster to {address}, not to loopback: start a cluster yourself "
            "(ray start --head) and pass --address auto"
        )


def _model_files(model: Path) -> dict[str, bytes]:
    """Every file of a checkpoint folder by relative path (what a worker needs to load it)."""
    if not (model / "config.json").is_file():
        raise ConfigError(f"{model} is not a bfcl model directory (no config.json)")
    return {str(p.relative_to(model)): p.read_bytes() for p in sorted(model.rglob("*")) if p.is_file()}


class _NoBar:
    def update(self, n: int) -> None:
        pass


class ModelFiles:
    """The checkpoint's files, held by one small actor for the run (no CPU reserved), so that every
    worker, and a worker Ray restarts, can fetch them without the driver's disk."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def get(self) -> dict[str, bytes]:
        return self.files


class PredictWorker:
    """One worker (a Ray actor): the model loaded once, then whole chunks predicted on request."""

    def __init__(self, files: str, load_kw: dict[str, Any], threads: int) -> None:
        """``files``: the name of the run's :class:`ModelFiles` actor; a restarted worker asks it again.
        (A name, not a handle: Ray warns that an actor restarted from a handle argument may fail.)"""
        import ray
        import torch

        sys.stdout = sys.stderr  # the driver may write JSONL to its stdout: no worker print may join it
        torch.set_num_threads(threads)
        self.error: Optional[BaseException] = None
        self.predictor = None
        folder = tempfile.mkdtemp(prefix="bfcl-model-")
        try:
            store = ray.get_actor(files)  # kept in a variable: older Ray "loses" a call on a handle dropped at once
            for rel, data in ray.get(store.get.remote()).items():
                path = Path(folder, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            from bfcl.inference.predictor import Predictor

            self.predictor = Predictor.load(folder, **load_kw)
        except Exception as e:  # raised again by info(), so the driver names it instead of a dead actor
            self.error = e
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded in memory by now

    def info(self) -> dict[str, Any]:
        import socket

        import torch

        from bfcl._version import __version__

        if self.error is not None:
            raise self.error
        return {
            "bfcl": __version__, "torch": torch.__version__, "host": socket.gethostname(), "pid": os.getpid(),
            "reads_images": self.predictor.cache is not None,
        }

    def predict(self, chunk: list[Record], skip: int, batch_size: int, image_on_error: str) -> tuple[str, int, int]:
        """(JSONL lines of the posts after ``skip``, how many used an image, images that could not be read)."""
        from bfcl.cli.predict_stream import predict_chunk, prediction_lines

        self.predictor.image_on_error = image_on_error  # the run's policy: one pool can serve several runs
        cache = self.predictor.cache
        failed = cache.failed if cache is not None else 0
        preds = predict_chunk(self.predictor, chunk, batch_size, _NoBar(), already=skip)
        text, used = prediction_lines(chunk, preds, skip)
        return text, used, (cache.failed - failed) if cache is not None else 0


@dataclass
class _Task:
    ref: Any
    worker: int
    posts: int
    finished: bool = False


class RayPool:
    """Prediction workers on a Ray cluster; a ``ChunkRunner`` for :func:`bfcl.cli.predict_stream.stream_jsonl`.

    ``address``: None starts a cluster on this machine, bound to loopback, and stops it on exit;
    ``"auto"`` joins the cluster ``ray start`` runs here; ``"HOST:PORT"`` or ``"ray://HOST:10001"``
    a remote one. If Ray is already initialised in this process, that cluster is used as it is.
    ``workers``: actors to start (default: one per ``threads`` CPUs of the cluster, or one per
    GPU with a cuda ``device``). ``threads``: torch threads (and CPUs reserved) per worker.
    ``feature_cache``: the image-feature cache folder, at that (absolute) path on each worker's node;
    None: a private temporary folder per worker.
    ``batch_size`` and ``image_on_error`` ("none": an unreadable image's post is predicted from its
    text; "error": it ends the run) are read per chunk, so a pool can serve several runs.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike[str]],
        *,
        address: Optional[str] = None,
        workers: Optional[int] = None,
        threads: int = 1,
        batch_size: int = 32,
        device: Optional[str] = None,
        feature_cache: Union[str, os.PathLike[str], None] = None,
        image_on_error: str = "none",
        note: Callable[[str], None] = lambda message: None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if image_on_error not in ("none", "error"):
            raise ConfigError(f"image_on_error must be 'none' or 'error', got {image_on_error!r}")
        if device is not None and device.strip().lower().startswith("cuda:"):
            raise ConfigError(f"device {device!r}: with the Ray engine give 'cuda'; Ray gives each worker its own GPU")
        self.model = Path(model)
        self.address = address
        self.workers = workers
        self.threads = threads
        self.batch_size = batch_size
        self.device = device
        self.feature_cache = str(Path(feature_cache).resolve()) if feature_cache is not None else None
        self.image_on_error = image_on_error
        self.note = note
        self.unusable = 0
        """Images the workers could not read (predicted from the text), over the whole run."""
        self.reads_images = False
        """Whether the model uses images at all."""
        self.hosts: list[str] = []
        """The nodes the workers run on."""
        self.chunks_done: list[int] = []
        """Chunks each worker has predicted (how the work spread)."""
        self._ray = None
        self._started = False
        self._actors: list[Any] = []
        self._files: Any = None
        self._busy: list[int] = []

    @property
    def size(self) -> int:
        """Workers running (0 outside ``with``)."""
        return len(self._actors)

    def worker_info(self) -> list[dict[str, Any]]:
        """Each worker's bfcl and torch versions, host, process id and whether the model reads images."""
        return [self._get(a.info.remote()) for a in self._actors]

    # ---- lifetime ---------------------------------------------------------------
    def __enter__(self) -> "RayPool":
        ray = self._ray = import_ray()
        gpu = (self.device or "").split(":")[0].strip().lower() == "cuda"
        if not ray.is_initialized():
            if self.address is None:
                from bfcl.inference.threads import available_cores

                workers = self.workers or max(1, available_cores() // self.threads)
                start_local_cluster(num_cpus=workers * self.threads, num_gpus=None if gpu else 0)
            else:
                try:
                    ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
                except ConnectionError as e:
                    raise EngineError(f"cannot reach the Ray cluster at {self.address}: {e}") from None
            self._started = True
        try:
            self._start_workers(ray, gpu)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        ray = self._ray
        for actor in self._actors + ([self._files] if self._files is not None else []):
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self._actors = []
        self._files = None
        if self._started:
            ray.shutdown()  # stops a cluster started here; only disconnects from another
            self._started = False

    def _start_workers(self, ray, gpu: bool) -> None:
        resources = ray.cluster_resources()
        per = {"num_cpus": self.threads, "num_gpus": 1 if gpu else 0}
        if self.workers is not None:
            n = self.workers
        elif gpu:
            n = max(1, int(resources.get("GPU", 0)))
        else:
            n = max(1, int(resources.get("CPU", 1) // self.threads))
        need_cpu, have_cpu = n * self.threads, resources.get("CPU", 0)
        if need_cpu > have_cpu or (gpu and n > resources.get("GPU", 0)):
            self.note(
                f"note: {n} worker(s) need {need_cpu:g} CPU(s){f' and {n} GPU(s)' if gpu else ''}; the cluster has "
                f"{have_cpu:g} CPU(s) and {resources.get('GPU', 0):g} GPU(s) now: the rest wait until it grows"
            )
        name = f"bfcl-model-files-{uuid.uuid4().hex}"
        self._files = ray.remote(ModelFiles).options(num_cpus=0, name=name).remote(_model_files(self.model))
        load_kw = {"feature_cache": self.feature_cache, "device": self.device}
        cls = ray.remote(PredictWorker).options(
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, scheduling_strategy="SPREAD", **per
        )
        self._actors = [cls.remote(name, load_kw, self.threads) for _ in range(n)]
        self._busy = [0] * n
        self.chunks_done = [0] * n
        infos = self.worker_info()
        from bfcl._version import __version__

        versions = {i["bfcl"] for i in infos}
        if versions != {__version__}:
            self.note(f"warning: workers run bfcl {', '.join(sorted(versions))}, this driver {__version__}: output may differ")
        self.reads_images = infos[0]["reads_images"]
        self.hosts = sorted({i["host"] for i in infos})

    def _get(self, ref: Any) -> Any:
        """``ray.get``, with a worker's data error raised as itself and a lost worker as EngineError."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, (BFCLError, OSError)):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as e:
            raise EngineError(f"a prediction worker died and could not be restarted ({MAX_RESTARTS} restarts): {e}") from None

    # ---- the ChunkRunner -----------------------------------------------------------
    def __call__(self, chunks: Iterator[tuple[list[Record], int]], bar) -> Iterator[tuple[str, int]]:
        """Each chunk's (lines, posts with an image) in input order; several chunks run at once.

        A chunk goes to the least busy worker; results wait, in order, to be yielded. If reading
        the next chunk fails (a bad line), the chunks before it are still yielded, then the error."""
        if not self._actors:
            raise RuntimeError("RayPool is used inside `with RayPool(...) as pool:`")
        ray = self._ray
        n = len(self._actors)
        pending: deque[_Task] = deque()
        source = iter(chunks)
        error: Optional[Exception] = None
        exhausted = False
        try:
            while True:
                while not exhausted and error is None and len(pending) < AHEAD_PER_WORKER * n:
                    k = min(range(n), key=self._busy.__getitem__)
                    if self._busy[k] >= QUEUED_PER_WORKER:
                        break
                    try:
                        chunk, skip = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as e:  # written after the chunks before it, as locally
                        error = e
                        break
                    ref = self._actors[k].predict.remote(chunk, skip, self.batch_size, self.image_on_error)
                    self._busy[k] += 1
                    pending.append(_Task(ref, k, len(chunk) - skip))
                if not pending:
                    break
                head = pending[0]
                if not head.finished:
                    ready, _ = ray.wait([t.ref for t in pending if not t.finished], num_returns=1)
                    done = set(ready)
                    for t in pending:
                        if not t.finished and t.ref in done:
                            t.finished = True
                            self._busy[t.worker] -= 1
                    continue
                pending.popleft()
                text, used, unusable = self._get(head.ref)
                self.unusable += unusable
                self.chunks_done[head.worker] += 1
                bar.update(head.posts)
                yield text, used
        finally:
            for t in pending:  # stopped early (an error): do not leave work queued on the cluster
                try:
                    ray.cancel(t.ref)
                except Exception:
                    pass
            self._busy = [0] * n
        if error is not None:
            raise error


# ----------------------------------------------------------------------------- API


@dataclass
class RayRunReport:
    """What :func:`predict_ray` did."""

    written: int
    """Lines in the output (resumed ones included)."""
    with_image: int
    """Posts predicted with their image (this run)."""
    resumed: int
    """Posts already in the output before this run (``resume=True``)."""
    unusable: int
    """Images that could not be read (those posts were predicted from their text)."""
    missing: list[str] = field(default_factory=list)
    """Warnings about image files not found (those posts were predicted from their text)."""
    seconds: float = 0.0
    workers: int = 0
    hosts: list[str] = field(default_factory=list)
    chunks_per_worker: list[int] = field(default_factory=list)


def predict_ray(
    model: Union[str, os.PathLike[str]],
    input: Union[str, os.PathLike[str]],
    output: Union[str, os.PathLike[str]],
    *,
    images: Union[str, os.PathLike[str], None] = None,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    threads: int = 1,
    batch_size: int = 32,
    image_on_error: str = "none",
    feature_cache: Union[str, os.PathLike[str], None] = None,
    device: Optional[str] = None,
    resume: bool = False,
    chunk_posts: Optional[int] = None,
    progress: bool = False,
    pool: Optional[RayPool] = None,
) -> RayRunReport:
    """Predict a JSONL file of posts (``{"id", "text" | "tokens", "image"}`` a line) on a Ray
    cluster and write the predictions as JSONL, in input order, byte-identical to ``bfcl predict``.

    ``images``: folder that relative image paths are resolved against (default: the input's).
    ``chunk_posts``: posts per chunk (default ``CHUNK_POSTS``, as ``bfcl predict``; change it and the
    scores can move in the 6th digit). ``feature_cache``: the image-feature cache folder (made absolute
    here, used at that path on every node); default None, a private temporary folder per worker, as
    ``bfcl.load`` does. See :class:`RayPool` for the other settings.
    ``pool``: a running ``RayPool`` (inside its ``with``) to predict with, so several files share
    workers that loaded the model once; ``address``, ``workers``, ``threads``, ``device`` and
    ``feature_cache`` are then the pool's, and giving them too is an error.
    Raises ``DataFormatError`` for a bad input line, ``ImageLoadError`` for an unreadable image
    with ``image_on_error="error"``; the lines before either are kept in ``<output>.part``.
    """
    from tqdm import tqdm

    from bfcl.cli.predict_stream import CHUNK_POSTS, stream_jsonl
    from bfcl.data.jsonl import iter_jsonl

    input_path, output_path = Path(input), Path(output)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    chunk_posts = CHUNK_POSTS if chunk_posts is None else int(chunk_posts)
    if chunk_posts < 1:
        raise ConfigError(f"chunk_posts must be >= 1, got {chunk_posts}")
    if image_on_error not in ("none", "error"):
        raise ConfigError(f"image_on_error must be 'none' or 'error', got {image_on_error!r}")
    note = lambda message: print(message, file=sys.stderr)  # noqa: E731
    missing: list[str] = []
    records = iter_jsonl(input_path, Path(images) if images is not None else None, image_on_error, missing.append)
    if pool is None:
        pool = RayPool(
            model, address=address, workers=workers, threads=threads, batch_size=batch_size, device=device,
            feature_cache=feature_cache, image_on_error=image_on_error, note=note,
        )
        owned = pool
    else:
        given = {"address": address, "workers": workers, "device": device, "feature_cache": feature_cache}
        clash = [k for k, v in given.items() if v is not None] + (["threads"] if threads != 1 else [])
        if clash:
            raise ConfigError(f"{', '.join(clash)}: set on the pool given to predict_ray, not per run")
        if Path(model).resolve() != pool.model.resolve():
            raise ConfigError(f"the pool's workers run {pool.model}, not {model}")
        if not pool.size:
            raise ConfigError("the pool given to predict_ray is not running: use it inside `with pool:`")
        pool.batch_size, pool.image_on_error = batch_size, image_on_error
        owned = None
    before = list(pool.chunks_done)
    unusable_before = pool.unusable
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if owned is not None:
            stack.enter_context(owned)
        bar = stack.enter_context(tqdm(unit="post", file=sys.stderr, disable=not progress, dynamic_ncols=True))
        if owned is not None:
            before, unusable_before = [0] * pool.size, 0
        written, with_image, resumed = stream_jsonl(
            None, records, output_path, batch_size=batch_size, chunk_posts=chunk_posts, resume=resume, bar=bar,
            note=note, run_chunks=pool,
        )
        n_workers = pool.size
    return RayRunReport(
        written=written, with_image=with_image, resumed=resumed, unusable=pool.unusable - unusable_before,
        missing=missing, seconds=time.perf_counter() - t0, workers=n_workers, hosts=pool.hosts,
        chunks_per_worker=[a - b for a, b in zip(pool.chunks_done, before)],
    )
