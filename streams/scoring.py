"""Scoring: the scorer interface the agents use, its onnxruntime implementation, fakes.

The agents only see the two protocols below.  Implementations run synchronously
and are called off the event loop (in an executor), one micro-batch at a time;
they are thread-safe.

``load_scorers(settings)`` opens ``recs.onnx`` and ``sentiment.onnx`` (or their int8 /
fp16 variants, ``settings.model_variant``) from ``settings.model_dir`` (files written by
``recstream export``).  Loading checks the
file's recstream metadata (kind, vocabulary, tokenizer, ...) and raises
``ModelLoadError`` with the reason when anything is missing or inconsistent.
Execution providers come from ``settings.providers`` in order of preference; the
providers onnxruntime really obtained are logged (it falls back to the CPU
silently), and ``settings.require_gpu`` refuses to load without CUDA.

Model processes (``settings.model_processes``, on the CPU): a recommender's runs go to
a child process per scoring thread (``recstream.streams.model_process``), tensors in
and out, so they never wait for the worker's GIL; encoding and decoding stay here.
The processes start as the model loads, in the background.

Hot reload: each scorer checks at most every ``reload_interval`` seconds whether
its file changed (inode, size, mtime; ``recstream export`` replaces files
atomically), or reloads when ``reload()`` is called.  The new session is swapped
in as one reference, so calls in flight finish on the model they started with,
and every result names the model that scored it (``model_version``).  A new file
that fails to load is logged and the running model kept.

No torch here: this module is on the serving path.
"""

from __future__ import annotations

import logging
import operator
import struct
import threading
import time
import weakref
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from itertools import chain, count, pairwise, repeat
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from recstream.export.metadata import (
    FIXED_K_RECS_INPUTS,
    GRAPH_INPUTS,
    GRAPH_OUTPUTS,
    MetadataError,
    ModelMetadata,
    parse_metadata,
    takes_k,
)
from recstream.export.metadata import PREFIX as METADATA_PREFIX
from recstream.model.features import (
    ACTION_IDS,
    FIRST_ITEM,
    OOV,
    PAD,
    WORDS_PER_SEARCH,
    query_hashes,
)
from recstream.model.text_tokens import TextTokenizer
from recstream.streams.model_process import (
    ModelProcessError,
    ModelProcesses,
    SessionSpec,
    auto_enabled,
)
from recstream.streams.records import RecordBuilder, ScoredItem
from recstream.streams.settings import Settings

log = logging.getLogger(__name__)

CUDA: Final = "CUDAExecutionProvider"
#: ``RECSTREAM_MODEL_VARIANT`` value that picks the variant from the hardware (served_variant).
AUTO_VARIANT: Final = "auto"
#: Padded sequence lengths a batch is rounded up to (plus the model's max length),
#: so onnxruntime sees a few shapes only and buffers are reused.
SEQUENCE_BUCKETS: Final = (8, 16, 32, 64, 128, 256)
#: Batches of at most this many histories are decoded and get their results without
#: numpy (its fixed costs dominate at this size).
SMALL_BATCH: Final = 8
#: Batches of at most this many histories get their exclusions without numpy
#: (measured right after a run: faster up to 64 rows, slower at 128).
SMALL_EXCLUSIONS: Final = 64
#: Bytes of bound input and output arrays (``BatchBuffers``) a scoring thread keeps for
#: the batch shapes it saw last (a 512 x 50 batch takes ~1.3 MB, a 32 x 16 one ~30 kB).
BOUND_BYTES: Final = 8 << 20
#: On the CPU a batch is run in parts of histories of one padded length (see
#: ``RecsModel.runs``); a part with fewer rows than this joins the next longer part
#: (each run costs something fixed: the SASRec-size model runs 1 history of 10 tokens
#: in ~0.7 ms, 8 in ~2.2 ms).
MIN_RUN_ROWS: Final = 8
#: ... and a part is cut after this many rows.  The model's output layer and top-k pass
#: over the whole ``[rows, items]`` score matrix; at 32 rows x 50k items (6.4 MB) it
#: stays in the caches, and the SASRec-size model took 122 CPU-us per 16-token history
#: against 171 at 256 rows (int8: 82 against 106; 8 rows: 163, the run's fixed cost).
MAX_RUN_ROWS: Final = 32
#: Distinct search queries whose word hashes are kept (about 2 MB).
QUERY_CACHE: Final = 65_536
_PACK_WORDS: Final = struct.Struct(f"{WORDS_PER_SEARCH}q").pack
_PACKED_SIZE: Final = 8 * WORDS_PER_SEARCH
#: The packed hashes of a search without words.
_NO_WORDS: Final = bytes(_PACKED_SIZE)
#: Flag of a review whose text is empty or whitespace: label ``neutral``, p = 1.
EMPTY_TEXT: Final = "empty_text"
#: Default seconds between checks of a model file for a new version.
RELOAD_INTERVAL: Final = 10.0
_SEARCH: Final = ACTION_IDS["search"]
_ENCODED_OF = operator.attrgetter("encoded")
_TAG_OF = operator.itemgetter(0)
_ITEM_BYTES_OF = operator.itemgetter(1)
_ACTION_BYTES_OF = operator.itemgetter(2)
_WORDS_OF = operator.itemgetter(3)
_LAST = operator.itemgetter(-1)
#: What a token's encoding tag says of it (the tag is ``model serial << 2 | kind``).
_UNREAD: Final = 0  # an unknown action or a click without an item: left out
_TELLING: Final = 1  # an in-vocabulary item or a search with words
_READ: Final = 2  # read by the model but telling nothing (an unknown item, a wordless search)
_KIND_BITS: Final = 2
#: One int64 in the buffers' (native) byte order: ``_INT64(n)``.
_INT64: Final = struct.Struct("q").pack
_ACTION_BYTES: Final = {action: _INT64(action) for action in range(len(ACTION_IDS) + 1)}
#: Room for every action id under one vocab index, in the keys of click encodings.
_ACTION_SLOTS: Final = len(ACTION_IDS) + 1
#: Serials of loaded recommenders (``RecsModel.serial``), never 0.
_SERIALS: Final = count(1)
#: A token's encoding for one model (``Token.encoded``): (tag, vocab index, action id,
#: packed search words), the last three as native int64 bytes, ready to be joined.
Encoding = tuple[int, bytes, bytes, bytes]
#: The encoding of a token no model has encoded yet (serial 0 is no model's).
_NOT_ENCODED: Final[Encoding] = (0, b"", b"", b"")
#: The encoding of a padding position.
_PADDING: Final[Encoding] = (0, _INT64(PAD), _INT64(0), _NO_WORDS)


@dataclass(frozen=True, slots=True)
class Token:
    """One step of a user's history: a click on an item, or a search (item None).

    ``encoded`` is not part of the value: the recommender that last encoded the token
    leaves its model inputs there (:meth:`RecsModel.encoding`), since a token is
    encoded again in every recommendation of its user while it is among the last
    ``max_len``.
    """

    item_id: str | None
    action: str
    query: str | None = None
    encoded: Encoding = field(default=_NOT_ENCODED, init=False, compare=False, repr=False)


#: Set ``Token``'s fields on a frozen token (the slots' own setters).
_SET_ITEM_ID, _SET_ACTION, _SET_QUERY, _SET_ENCODED = (
    vars(Token)[name].__set__ for name in ("item_id", "action", "query", "encoded")
)


def new_token(item_id: str | None, action: str, query: str | None) -> Token:
    """``Token(item_id, action, query)`` without the frozen dataclass's ``__init__``, which
    sets each field through ``object.__setattr__`` in Python: ~0.4 us less, and the
    sessions make a token for most events when the catalogue is large (tested equal)."""
    token = object.__new__(Token)
    _SET_ITEM_ID(token, item_id)
    _SET_ACTION(token, action)
    _SET_QUERY(token, query)
    _SET_ENCODED(token, _NOT_ENCODED)
    return token


@dataclass(frozen=True, slots=True)
class RecsResult:
    """Items best first.  ``fallback``: popular items, the history gave the model nothing.

    ``model_version`` names the model that produced the result ("" from scorers
    that do not set it).
    """

    items: tuple[ScoredItem, ...]
    fallback: bool
    model_version: str = ""


@dataclass(frozen=True, slots=True)
class SentimentResult:
    """A label, the probability of every label (summing to 1) and flags (``empty_text``)."""

    label: str
    probs: dict[str, float]
    flags: tuple[str, ...] = ()
    model_version: str = ""


class RecsScorer(Protocol):
    """Next-item scoring for a batch of user histories (oldest token first)."""

    @property
    def model_version(self) -> str: ...

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]: ...


class SentimentScorer(Protocol):
    """Sentiment of a batch of review texts."""

    @property
    def model_version(self) -> str: ...

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]: ...


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable, of the wrong kind, or cannot run as asked."""


# --- sessions ---------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are opened: providers in order, GPU requirement, thread counts."""

    providers: tuple[str, ...] = (CUDA, "CPUExecutionProvider")
    require_gpu: bool = False
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    #: Whether a recommender on the CPU runs in model processes (``model_process``).
    model_processes: bool = False
    #: Model processes a recommender starts as it loads, one per thread that will score
    #: (a thread beyond them starts its own on its first run).
    prestart_processes: int = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, scoring_threads: int | None = None
    ) -> RuntimeOptions:
        """The options of ``settings`` (``model_processes="auto"`` decided here), for
        ``scoring_threads`` threads (default ``settings.scoring_threads``)."""
        processes = settings.model_processes
        enabled = auto_enabled() if processes == "auto" else processes
        threads = settings.scoring_threads if scoring_threads is None else scoring_threads
        return cls(
            tuple(settings.providers),
            settings.require_gpu,
            settings.intra_op_threads,
            settings.inter_op_threads,
            enabled,
            threads if enabled else 0,
        )


def _session_options(
    options: RuntimeOptions, level: ort.GraphOptimizationLevel
) -> ort.SessionOptions:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = level
    session_options.log_severity_level = 3  # onnxruntime's own warnings go to stderr
    return session_options


def _providers(options: RuntimeOptions) -> list[str]:
    available = ort.get_available_providers()
    unknown = [p for p in options.providers if p not in available]
    if unknown:
        log.warning("onnxruntime lacks providers %s (has %s)", unknown, available)
    usable = [p for p in options.providers if p in available]
    if options.require_gpu and CUDA not in usable:
        raise ModelLoadError(
            f"RECSTREAM_REQUIRE_GPU is set but {CUDA} is not among the usable providers "
            f"(requested {list(options.providers)}, onnxruntime has {available})"
        )
    if not usable:
        raise ModelLoadError(f"none of the providers {list(options.providers)} exist here")
    return usable


#: Set once a probe session opened without CUDA: onnxruntime could not create the CUDA
#: provider at all (libraries or device missing), so no later probe in this process can.
_CUDA_FAILED = threading.Event()


def runs_on_cuda(model: Path | bytes) -> bool:
    """Whether onnxruntime really runs ``model`` (a file, or its bytes) on CUDA here.

    onnxruntime-gpu lists the CUDA provider wherever it is installed and quietly
    falls back to the CPU when the CUDA libraries or the device are missing.  The
    probe session is not optimised, so it is safe for every variant.  Once a probe
    has fallen back, later ones answer False at once (the start-up of a worker with
    two models in two variants would otherwise try, and log the failure, four times).
    """
    if CUDA not in ort.get_available_providers() or _CUDA_FAILED.is_set():
        return False
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        probe = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), options, providers=[CUDA]
        )
    except Exception:  # an unreadable model: says nothing about CUDA
        return False
    if CUDA in probe.get_providers():
        return True
    _CUDA_FAILED.set()
    return False


def optimization_level(variant: str, providers: Sequence[str]) -> ort.GraphOptimizationLevel:
    """The graph optimization level a model variant can run with on these providers.

    onnxruntime 1.31's CPU provider crashes (segfault) in the extended fusions
    of fp16 graphs, so fp16 without CUDA runs with the basic optimizations only.
    """
    if variant == "fp16" and CUDA not in providers:
        return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@dataclass(frozen=True)
class OpenedModel:
    """A checked model: its session, metadata, the bytes both came from, and the
    optimisation level the session was opened with."""

    session: ort.InferenceSession
    meta: ModelMetadata
    data: bytes
    level: ort.GraphOptimizationLevel


def open_model(path: Path, kind: str, options: RuntimeOptions) -> OpenedModel:
    """Open and check one exported model; ``ModelLoadError`` says what is wrong.

    The file is read once: a new export replacing it meanwhile cannot mix two models.
    """
    if not path.is_file():
        raise ModelLoadError(f"no {kind} model at {path} (run `recstream export`)")
    providers = _providers(options)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    try:
        # A first, unoptimised CPU session only reads the metadata: the variant
        # decides how the real session may be optimised.
        peek = ort.InferenceSession(
            data,
            _session_options(options, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from exc
    try:
        meta = parse_metadata(peek.get_modelmeta().custom_metadata_map, kind, str(path))
    except MetadataError as exc:
        raise ModelLoadError(str(exc)) from exc
    inputs = tuple(i.name for i in peek.get_inputs())
    outputs = tuple(o.name for o in peek.get_outputs())
    served = (GRAPH_INPUTS[kind], FIXED_K_RECS_INPUTS) if kind == "recs" else (GRAPH_INPUTS[kind],)
    if inputs not in served or outputs != GRAPH_OUTPUTS[kind]:
        raise ModelLoadError(
            f"{path}: graph has inputs {inputs} and outputs {outputs}, a {kind} model has "
            f"{GRAPH_INPUTS[kind]} and {GRAPH_OUTPUTS[kind]}"
        )
    if CUDA in providers and not runs_on_cuda(data):
        if options.require_gpu:
            raise ModelLoadError(
                f"RECSTREAM_REQUIRE_GPU is set but onnxruntime cannot run {path} on {CUDA} "
                "here (CUDA libraries or device missing?)"
            )
        providers = [p for p in providers if p != CUDA]
        log.warning("%s is listed but cannot run here; %s loads on %s", CUDA, path, providers)
        if not providers:
            raise ModelLoadError(f"{path}: {CUDA} cannot run here and no other provider is set")
    level = optimization_level(meta.variant, providers)
    try:
        session = ort.InferenceSession(data, _session_options(options, level), providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"{path} cannot be opened with {providers}: {exc}") from exc
    obtained = session.get_providers()
    log.info("%s %s loaded with providers %s (asked %s)", kind, meta.version, obtained, providers)
    if options.require_gpu and CUDA not in obtained:
        raise ModelLoadError(
            f"RECSTREAM_REQUIRE_GPU is set but onnxruntime fell back to {obtained} for {path} "
            "(CUDA libraries or device missing?)"
        )
    if obtained[0] != providers[0]:
        log.warning("%s runs on %s, not on the preferred %s", kind, obtained[0], providers[0])
    return OpenedModel(session, meta, data, level)


# --- hot reload ------------------------------------------------------------------

LoadedT = TypeVar("LoadedT")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ReloadingModel(Generic[LoadedT]):
    """A loaded model that replaces itself when its file changes.

    ``current()`` is what a call uses: at most every ``interval`` seconds it looks
    at the file's signature, and one thread (the others keep using the old model)
    loads a changed file and swaps the reference.  A file that fails to load is
    logged once per signature and the running model kept.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], LoadedT],
        interval: float = RELOAD_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._load = load
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = _signature(path)
        self._model = load(path)  # errors here propagate: no model, no scorer
        self._next_check = clock() + interval

    def current(self) -> LoadedT:
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = self._clock() + self._interval
                signature = _signature(self.path)
                if signature is not None and signature != self._signature:
                    self._swap(signature)
            finally:
                self._lock.release()
        return self._model

    def reload(self) -> bool:
        """Load the file now (e.g. on a control message); False if it fails to load."""
        with self._lock:
            return self._swap(_signature(self.path))

    def _swap(self, signature: tuple[int, int, int] | None) -> bool:
        self._signature = signature  # a broken file is not retried until it changes
        try:
            model = self._load(self.path)
        except ModelLoadError as exc:
            log.error("keeping the running model; new %s failed to load: %s", self.path, exc)
            return False
        self._model = model
        return True


class LoadedModel(Protocol):
    """What a scorer needs of a loaded model: its session and version."""

    session: ort.InferenceSession
    version: str


ModelT = TypeVar("ModelT", bound=LoadedModel)


class ReloadingScorer(Generic[ModelT]):
    """The part both ONNX scorers share: a hot-reloadable model, its version and providers."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path, RuntimeOptions], ModelT],
        options: RuntimeOptions | None,
        reload_interval: float,
    ) -> None:
        self._options = options or RuntimeOptions()
        self._model = ReloadingModel(Path(path), lambda p: load(p, self._options), reload_interval)

    @property
    def model_version(self) -> str:
        return self._model.current().version

    @property
    def providers(self) -> list[str]:
        """The execution providers the current session really uses."""
        providers: list[str] = self._model.current().session.get_providers()
        return providers

    def reload(self) -> bool:
        """Load the model file again now; False (old model kept) if it fails."""
        return self._model.reload()


# --- recommender -------------------------------------------------------------------


class QueryWords:
    """``query_hashes`` of search queries, cached, each packed in one ``bytes`` object.

    Packed (``WORDS_PER_SEARCH`` native int64, 32 bytes), a query's hashes are the
    words part of its token's encoding (``Token.encoded``): a batch's words array is
    one ``join`` of those parts.
    The cache is cleared when it holds ``capacity`` queries.  Thread-safe: dict
    operations are atomic, and a race costs at most a recomputation.
    """

    def __init__(self, capacity: int = QUERY_CACHE) -> None:
        self._capacity = capacity
        self._packed: dict[str | None, bytes] = {}

    def packed(self, query: str | None) -> bytes:
        """The packed word hashes of one query (None: no words, all 0)."""
        packed = self._packed.get(query)
        if packed is None:
            packed = _PACK_WORDS(*query_hashes(query or ""))
            if len(self._packed) >= self._capacity:
                self._packed.clear()
            self._packed[query] = packed
        return packed


_SCORED_ITEMS: Final = RecordBuilder(ScoredItem)
_RECS_RESULTS: Final = RecordBuilder(RecsResult)
#: A placeholder while a split batch's results are gathered.
_NO_RESULT: Final = RecsResult((), True, "")


def bucket_length(length: int, max_len: int) -> int:
    """The padded length for a batch whose longest history has ``length`` tokens."""
    for bucket in SEQUENCE_BUCKETS:
        if length <= bucket < max_len:
            return bucket
    return max_len


def bucket_width(width: int) -> int:
    """The padded width of a batch's exclusion lists: the next power of two (>= 1)."""
    return 1 << max(0, width - 1).bit_length()


class BoundBatch:
    """Inputs and outputs for batches of one shape (rows x padded length), bound once
    to the session (an ``IOBinding``), reused call after call.

    A run then converts nothing: onnxruntime reads the inputs from, and writes top-k
    into, these arrays (a plain ``run`` wraps every input in a new ``OrtValue`` and
    allocates its outputs: ~60 us of a 1 ms run at batch 1, measured).  The flat
    ``memoryview``s let the encoder fill the arrays without numpy calls.
    On CUDA onnxruntime copies an input to the device when it is bound, not when it
    runs: there the inputs are bound again before each run (one copy each, which a
    run on the device needs anyway); only the top-k comes back.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        rows: int,
        width: int,
        items_per_row: int,
        slots: bool,
    ) -> None:
        """``slots``: the graph takes ``items_per_row`` as its ``slots`` input's length
        (else it returns that many, its own fixed K)."""
        self.session = session
        self.items = np.zeros((rows, width), np.int64)
        self.actions = np.zeros((rows, width), np.int64)
        self.words = np.zeros((rows, width, WORDS_PER_SEARCH), np.int64)
        self.lengths = np.zeros(rows, np.int64)
        self.top_items = np.zeros((rows, items_per_row), np.int64)
        self.top_scores = np.zeros((rows, items_per_row), np.float32)
        self.items_bytes = self.items.data.cast("B")
        self.actions_bytes = self.actions.data.cast("B")
        self.words_bytes = self.words.data.cast("B")
        self.lengths_view = self.lengths.data.cast("B").cast("q")
        self.binding = session.io_binding()
        self._values: dict[str, ort.OrtValue] = {}  # kept alive while bound
        self._inputs: tuple[tuple[str, np.ndarray], ...] = (
            ("items", self.items),
            ("actions", self.actions),
            ("words", self.words),
            ("lengths", self.lengths),
        )
        if slots:
            self._inputs += (("slots", np.zeros(items_per_row, np.bool_)),)
        #: Whether binding copies the inputs (to the GPU): then each run binds them anew.
        self.binds_each_run = session.get_providers()[0] == CUDA
        for name, values in self._inputs:
            self._bind(name, values)
        for name, out in (("top_items", self.top_items), ("top_scores", self.top_scores)):
            value = self._values[name] = ort.OrtValue.ortvalue_from_numpy(out)
            self.binding.bind_ortvalue_output(name, value)
        arrays = (self.items, self.actions, self.words, self.lengths, self.top_items)
        self.nbytes = sum(a.nbytes for a in arrays) + self.top_scores.nbytes
        #: Exclusion arrays by padded width, and the one bound now.
        self.excludes: dict[int, tuple[np.ndarray, memoryview]] = {}
        self._bound_exclude: np.ndarray | None = None

    def _bind(self, name: str, values: np.ndarray) -> None:
        value = self._values[name] = ort.OrtValue.ortvalue_from_numpy(values)
        self.binding.bind_ortvalue_input(name, value)

    def exclude(self, width: int) -> tuple[np.ndarray, memoryview]:
        """The ``[rows, width]`` exclusion array (not zeroed) and its flat view."""
        held = self.excludes.get(width)
        if held is None:
            masked = np.zeros((self.lengths.size, width), np.int64)
            held = self.excludes[width] = (masked, masked.data.cast("B").cast("q"))
        return held

    def run(self, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run on the bound inputs and ``exclude``; the bound ``(top_items, top_scores)``."""
        if self.binds_each_run:
            for name, values in self._inputs:
                self._bind(name, values)
        if exclude is not self._bound_exclude or self.binds_each_run:
            contiguous = self._exclusions(exclude)
            self._bind("exclude", contiguous)
            # A copy was bound: bind anew next time, the caller may change ``exclude``.
            self._bound_exclude = exclude if contiguous is exclude else None
        self.session.run_with_iobinding(self.binding)
        return self.top_items, self.top_scores

    def feeds(self, exclude: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs as named arrays, with ``exclude``: a run elsewhere (a model process)."""
        return {**dict(self._inputs), "exclude": self._exclusions(exclude)}

    def _exclusions(self, exclude: np.ndarray) -> np.ndarray:
        """``exclude`` as the graph takes it (int64, contiguous), one row per history."""
        if exclude.shape[0] != self.lengths.size:
            raise ValueError(f"{exclude.shape[0]} exclusion rows for {self.lengths.size}")
        return np.ascontiguousarray(exclude, np.int64)


def _top(outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(top_items, top_scores)`` of a run's outputs (the graph's output order)."""
    top_items, top_scores = outputs
    return top_items, top_scores


def _fill_padded(view: memoryview, rows: Iterable[list[int]], width: int) -> None:
    """Write ``rows``, each right-padded with PAD to ``width``, into the flat int64
    ``view`` of a ``[len(rows), width]`` array (one copy, no numpy call)."""
    pad = [PAD] * width
    flat: list[int] = []
    for row in rows:
        flat += row
        flat += pad[len(row) :]
    view[:] = array("q", flat)


def _bound(batch: EncodedBatch) -> BoundBatch:
    if batch.bound is None:
        raise ValueError("only batches from RecsModel.encode can be run")
    return batch.bound


class BatchBuffers:
    """Each thread's ``BoundBatch``es, by shape; the least recently used are dropped
    while their inputs and outputs hold more than ``capacity_bytes``."""

    def __init__(
        self, session: ort.InferenceSession, slots: bool, capacity_bytes: int = BOUND_BYTES
    ) -> None:
        """``slots``: the graph takes the items per row as an input (``BoundBatch``)."""
        self._session = session
        self._slots = slots
        self._capacity = capacity_bytes
        self._local = threading.local()

    def get(self, rows: int, width: int, items_per_row: int, copy: int = 0) -> BoundBatch:
        """The calling thread's buffers for ``rows`` x ``width`` and ``items_per_row``
        (contents left over); ``copy`` numbers the buffers of one shape that hold
        different parts at once."""
        shapes: dict[tuple[int, int, int, int], BoundBatch] | None = getattr(
            self._local, "shapes", None
        )
        if shapes is None:
            shapes = self._local.shapes = {}
        key = (rows, width, items_per_row, copy)
        bound = shapes.pop(key, None)
        if bound is None:
            bound = BoundBatch(self._session, rows, width, items_per_row, self._slots)
            held = sum(b.nbytes for b in shapes.values())
            while shapes and held + bound.nbytes > self._capacity:
                held -= shapes.pop(next(iter(shapes))).nbytes
        shapes[key] = bound  # (re)inserted last: the most recently used
        return bound


@dataclass
class EncodedBatch:
    """Model inputs for the rows of a batch that have a usable history.

    Made by ``RecsModel.encode``, the arrays are those of the calling thread's
    ``bound`` buffers: valid until that thread encodes its next batch of that shape.
    (``bound`` is None only for batches made elsewhere, which cannot be run.)
    """

    rows: list[int]
    items: npt.NDArray[np.int64]
    actions: npt.NDArray[np.int64]
    words: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    bound: BoundBatch | None = field(default=None, compare=False, repr=False)


class RecsModel:
    """One loaded recommender: session, vocabulary, popular items, buffers."""

    def __init__(
        self,
        session: ort.InferenceSession,
        meta: ModelMetadata,
        processes: ModelProcesses | None = None,
    ) -> None:
        """``processes``: where the runs go (None: ``session``, in the calling thread);
        they are closed when this model is dropped (a hot reload replaced it)."""
        self.session = session
        self.meta = meta
        self.processes = processes
        if processes is not None:
            weakref.finalize(self, processes.close)
        self.version = meta.version
        self.max_len = meta.max_len
        self.top_k = meta.top_k
        # index -> item id (PAD and OOV never come out of the graph's top-k unmasked)
        self.item_ids = ["", "", *meta.vocab]
        self.item_id_array = np.array(self.item_ids, dtype=object)
        # item id -> vocab index.  Only str keys: CPython looks those up faster than
        # in a dict with any other key (measured ~15 % of the encoding at 512 x 50).
        self.index: dict[str, int] = dict(
            zip(meta.vocab, range(FIRST_ITEM, FIRST_ITEM + len(meta.vocab)), strict=True)
        )
        #: Tells this model's encodings in ``Token.encoded`` from other models' (hot reload).
        self.serial = next(_SERIALS)
        #: This model's encoding tags by kind: ``serial << 2 | kind`` (one int object each).
        self._tags = tuple(self.serial << _KIND_BITS | kind for kind in (_UNREAD, _TELLING, _READ))
        #: The tags of encodings that are this model's and read by it.
        self._fresh_tags = frozenset(self._tags[_TELLING:])
        self._unread: Encoding = (self._tags[_UNREAD], b"", b"", b"")
        #: Click encodings by ``index * _ACTION_SLOTS + action``, each made once: every
        #: token of one item and action shares one tuple, so a token new to the model
        #: leaves no new container for the garbage collector once its click was encoded.
        self._click_encodings: dict[int, Encoding] = {}
        #: Each vocab index as native int64 bytes (PAD and OOV included).
        self.item_bytes = [_INT64(index) for index in range(len(self.item_ids))]
        self._padding = [_PADDING] * self.max_len
        self.query_words = QueryWords()
        self.popular = list(meta.popular)
        #: Whether the graph returns as many items as a run asks (its ``slots`` input),
        #: not always ``top_k`` (graphs exported before 2026-12-07).
        self.takes_k = takes_k(i.name for i in session.get_inputs())
        self.buffers = BatchBuffers(session, self.takes_k)
        #: Whether batches run in parts by history length (the CPU pays for padding; a
        #: GPU pays more for extra runs than for padded positions).
        self.runs_by_length = session.get_providers()[0] != CUDA

    def runs(self, histories: Sequence[Sized]) -> list[list[int]]:
        """The rows of a batch in the parts it is run in: one part per padded length
        (only the histories' lengths count).

        A batch is padded to its longest history, and the attention and feed-forward
        work grows with that length: a batch of mostly short histories with one long
        one costs as if all were long (measured on replayed shop-log batches of 256
        clicks, 50k items: ~330 CPU-us per history in one run, ~230 run by length).
        Rows are sorted by their bucketed length; a part smaller than
        ``MIN_RUN_ROWS`` joins the next longer one, one larger than ``MAX_RUN_ROWS`` is
        cut.  One part on CUDA.
        """
        if not self.runs_by_length or len(histories) <= MIN_RUN_ROWS:
            return [list(range(len(histories)))]
        max_len = self.max_len
        widths = [bucket_length(min(len(h), max_len), max_len) for h in histories]
        parts: list[list[int]] = []
        part: list[int] = []
        for row in sorted(range(len(histories)), key=widths.__getitem__):
            if len(part) >= MAX_RUN_ROWS or (
                len(part) >= MIN_RUN_ROWS and widths[row] != widths[part[-1]]
            ):
                parts.append(part)
                part = []
            part.append(row)
        parts.append(part)
        return parts

    def items_per_row(self, k: int | None) -> int:
        """How many items a run returns per row when ``k`` are asked (None: the most)."""
        return self.top_k if k is None or not self.takes_k else max(1, min(k, self.top_k))

    def encode(
        self,
        histories: Sequence[Sequence[Token]],
        taken: Counter[tuple[int, int]] | None = None,
        k: int | None = None,
    ) -> EncodedBatch:
        """Inputs for the usable histories of a batch.

        Each history contributes its last ``max_len`` tokens, minus those the model
        does not read (an unknown action, a click without an item).  A history is
        usable when those hold an in-vocabulary item or a search with words; the
        others are left out (``rows`` lists the histories kept) and get the
        popular-items fallback.

        No Python code runs per token once its ``Token.encoded`` is this model's:
        each history's encodings are read, their tags checked and their bytes joined
        by C loops (``map``, ``set``, ``bytes.join``); each input array is then one
        copy of the joined bytes into the bound buffers.

        ``taken`` counts the shapes whose buffers hold batches encoded earlier and not
        run yet: this batch then gets buffers of its own (``BatchBuffers`` copies).
        ``k``: the items each row asks for (:meth:`items_per_row`).
        """
        fresh, telling = self._fresh_tags, self._tags[_TELLING]
        rows: list[int] = []
        kept: list[list[Encoding]] = []
        for row, tail in enumerate(self._tails(histories)):
            encodings = list(map(_ENCODED_OF, tail))  # one read per token: a consistent tuple
            tags = set(map(_TAG_OF, encodings))
            if not tags <= fresh:  # tokens new to this model, or not read by it
                encodings = self._read_encodings(tail, encodings)
                tags = set(map(_TAG_OF, encodings))
            if telling in tags:
                rows.append(row)
                kept.append(encodings)
        if not rows:
            return self._no_rows()
        lengths = list(map(len, kept))
        width = bucket_length(max(lengths), self.max_len)
        padding = self._padding
        padded: list[Encoding] = []
        for encodings in kept:
            padded += encodings
            padded += padding[: width - len(encodings)]
        copy = 0
        if taken is not None:
            copy = taken[len(rows), width]
            taken[len(rows), width] = copy + 1
        bound = self.buffers.get(len(rows), width, self.items_per_row(k), copy)
        bound.items_bytes[:] = b"".join(map(_ITEM_BYTES_OF, padded))
        bound.actions_bytes[:] = b"".join(map(_ACTION_BYTES_OF, padded))
        bound.words_bytes[:] = b"".join(map(_WORDS_OF, padded))
        bound.lengths_view[:] = array("q", lengths)
        return EncodedBatch(rows, bound.items, bound.actions, bound.words, bound.lengths, bound)

    def encoding(self, token: Token) -> Encoding:
        """The token's encoding for this model, computed and left in ``token.encoded``.

        One tuple, replaced whole: a thread never sees parts of two models' encodings.
        """
        action = ACTION_IDS.get(token.action, 0)
        if action == _SEARCH:
            words = self.query_words.packed(token.query)
            kind = _TELLING if words != _NO_WORDS else _READ
            encoding = (self._tags[kind], self.item_bytes[PAD], _ACTION_BYTES[action], words)
        elif action and token.item_id is not None:
            encoding = self._click_encoding(self.index.get(token.item_id, OOV), action)
        else:
            encoding = self._unread
        _SET_ENCODED(token, encoding)
        return encoding

    def _click_encoding(self, item: int, action: int) -> Encoding:
        """The encoding of a click with ``action`` on vocab index ``item``, made once."""
        key = item * _ACTION_SLOTS + action
        encoding = self._click_encodings.get(key)
        if encoding is None:  # two threads at once make equal tuples: either is kept
            kind = _TELLING if item != OOV else _READ
            encoding = (self._tags[kind], self.item_bytes[item], _ACTION_BYTES[action], _NO_WORDS)
            self._click_encodings[key] = encoding
        return encoding

    def _read_encodings(self, tokens: Sequence[Token], encodings: list[Encoding]) -> list[Encoding]:
        """This model's encodings of the ``tokens`` it reads, from ``encodings`` (theirs
        as read) where those are this model's, computed for the others."""
        fresh, unread = self._fresh_tags, self._tags[_UNREAD]
        encodings = [
            encoding if encoding[0] in fresh else self.encoding(token)
            for token, encoding in zip(tokens, encodings, strict=True)
        ]
        return [encoding for encoding in encodings if encoding[0] != unread]

    def _tails(self, histories: Sequence[Sequence[Token]]) -> list[Sequence[Token]]:
        """The last ``max_len`` tokens of each history (the history itself when short)."""
        max_len = self.max_len
        return [
            h
            if len(h) <= max_len
            else h[-max_len:]
            if isinstance(h, list | tuple)
            else list(h)[-max_len:]
            for h in histories
        ]

    def _no_rows(self) -> EncodedBatch:
        """The encoding of a batch without a usable history (nothing to run)."""
        width = bucket_length(1, self.max_len)
        empty = np.zeros((0, width), np.int64)
        words = np.zeros((0, width, WORDS_PER_SEARCH), np.int64)
        return EncodedBatch([], empty, empty, words, np.zeros(0, np.int64))

    def exclusions(self, batch: EncodedBatch, exclude: Sequence[Collection[str]]) -> np.ndarray:
        """``[B, E]`` vocab indices to mask per row of ``batch`` (unknown ids become the 0
        padding; E rounded up to a power of two), in the batch's bound buffers."""
        bound = _bound(batch)
        chosen = [exclude[row] for row in batch.rows]
        if len(chosen) <= SMALL_EXCLUSIONS:  # lists: numpy's fixed costs dominate
            get = self.index.get
            lists = [[get(item, PAD) for item in items] for items in chosen]
            width = bucket_width(max(map(len, lists)))
            masked, view = bound.exclude(width)
            _fill_padded(view, lists, width)
            return masked
        widths = np.fromiter(map(len, chosen), np.int64, len(chosen))
        total = int(widths.sum())
        masked, _ = bound.exclude(bucket_width(int(widths.max())))
        masked.fill(PAD)
        if total:
            ids = map(self.index.get, chain.from_iterable(chosen), repeat(PAD))
            row_of = np.repeat(np.arange(len(chosen)), widths)
            columns = np.arange(total) - (np.cumsum(widths) - widths)[row_of]
            masked[row_of, columns] = np.fromiter(ids, np.int64, total)
        return masked

    def run(self, batch: EncodedBatch, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(top_items [B,K], top_scores [B,K])`` from onnxruntime: the thread's bound
        output arrays, valid until its next run of a batch of this shape."""
        return _bound(batch).run(exclude)

    def run_all(
        self, batches: Sequence[EncodedBatch], excludes: Sequence[np.ndarray | None]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Each batch run with its exclusions (None: not run, None out): in this thread,
        or all in one round trip to the thread's model process (in this thread after
        all when that process failed, or while none can start)."""
        if self.processes is None:
            return self._run_here(batches, excludes)
        feeds = [
            _bound(batch).feeds(exclude)
            for batch, exclude in zip(batches, excludes, strict=True)
            if exclude is not None
        ]
        try:
            outputs = self.processes.run(feeds)
        except ModelProcessError as exc:  # the inputs are still bound here: run them
            log.warning("%s; this batch runs in the scoring thread", exc)
            return self._run_here(batches, excludes)
        if outputs is None:  # no model process to be had now
            return self._run_here(batches, excludes)
        results = iter(outputs)
        return [None if exclude is None else _top(next(results)) for exclude in excludes]

    def _run_here(
        self, batches: Sequence[EncodedBatch], excludes: Sequence[np.ndarray | None]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """``run_all`` in the calling thread."""
        return [
            None if exclude is None else self.run(batch, exclude)
            for batch, exclude in zip(batches, excludes, strict=True)
        ]

    def decode(
        self, top_items: np.ndarray, top_scores: np.ndarray, k: int
    ) -> list[tuple[ScoredItem, ...]]:
        """Item ids and scores, best first, at most ``k``; -inf (masked) entries dropped."""
        indices, scores = top_items[:, :k], top_scores[:, :k]
        if len(top_items) <= SMALL_BATCH:  # lists: numpy's fixed costs dominate at this size
            index_rows, score_rows = indices.tolist(), scores.tolist()
            if min(map(min, index_rows)) < FIRST_ITEM or min(map(_LAST, score_rows)) == -np.inf:
                return list(map(self._decode_row, index_rows, score_rows))
            ids = list(map(self.item_ids.__getitem__, chain.from_iterable(index_rows)))
            if len(index_rows) == 1:  # plain construction: the builder's fixed cost is more
                return [tuple(map(ScoredItem, ids, score_rows[0]))]
            items = _SCORED_ITEMS.build(len(ids), ids, chain.from_iterable(score_rows))
            width = len(index_rows[0])  # k, or the model's top-k if smaller
            return [tuple(items[at : at + width]) for at in range(0, len(items), width)]
        # Scores are sorted: a row's last score tells whether it has a masked entry.
        if scores[:, -1].min() > -np.inf and indices.min() >= FIRST_ITEM:  # nothing masked
            ids = self.item_id_array[indices].ravel().tolist()
            items = _SCORED_ITEMS.build(len(ids), ids, scores.ravel().tolist())
            width = indices.shape[1]
            return [tuple(items[at : at + width]) for at in range(0, len(items), width)]
        keep = (scores > -np.inf) & (indices >= FIRST_ITEM)
        ids = self.item_id_array[indices[keep]].tolist()
        items = _SCORED_ITEMS.build(len(ids), ids, scores[keep].tolist())
        ends = np.cumsum(keep.sum(axis=1)).tolist()
        return [tuple(items[start:end]) for start, end in pairwise([0, *ends])]

    def _decode_row(self, indices: list[int], scores: list[float]) -> tuple[ScoredItem, ...]:
        """One row's items, its masked entries (-inf, PAD or OOV) dropped."""
        item_ids = self.item_ids
        return tuple(
            ScoredItem(item_ids[i], s)
            for i, s in zip(indices, scores, strict=True)
            if s > -np.inf and i >= FIRST_ITEM
        )

    def popular_for(self, exclude: Collection[str], k: int) -> tuple[ScoredItem, ...]:
        """The fallback: popular items not excluded, score 0.0 (not a model score)."""
        chosen = [item for item in self.popular if item not in exclude][:k]
        return tuple(ScoredItem(item, 0.0) for item in chosen)


def load_recs_model(path: Path, options: RuntimeOptions) -> RecsModel:
    """Open a recommender; on the CPU with ``options.model_processes``, its runs go to
    model processes (on CUDA the device does the work, and a run holds no core)."""
    opened = open_model(path, "recs", options)
    processes = None
    if options.model_processes and opened.session.get_providers()[0] != CUDA:
        spec = SessionSpec(
            opened.data, options.intra_op_threads, options.inter_op_threads, int(opened.level)
        )
        processes = ModelProcesses(spec, prestart=options.prestart_processes)
    return RecsModel(opened.session, opened.meta, processes)


class OnnxRecsScorer(ReloadingScorer[RecsModel]):
    """``RecsScorer`` on an exported recommender (``recs.onnx``), hot-reloadable."""

    def __init__(
        self,
        path: Path,
        options: RuntimeOptions | None = None,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        super().__init__(path, load_recs_model, options, reload_interval)
        self._warned_k = False

    @property
    def max_k(self) -> int:
        """The most items a recommendation can hold (the graph's top-k)."""
        return self._model.current().top_k

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        """Top ``k`` items per history, excluding ``exclude``; popular items as fallback."""
        if len(exclude) != len(histories):
            raise ValueError(f"{len(histories)} histories but {len(exclude)} exclusion sets")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        model = self._model.current()  # one model for the whole batch
        if k > model.top_k and not self._warned_k:
            log.warning(
                "k=%d exceeds the model's top-k %d; returning %d", k, model.top_k, model.top_k
            )
            self._warned_k = True
        parts = model.runs(histories)
        if len(parts) == 1:
            return _recommend(model, histories, exclude, k)
        return _recommend_parts(model, histories, exclude, k, parts)

    def popular(self, k: int, exclude: Collection[str] = ()) -> RecsResult:
        """The model's popular items (its fallback, ``fallback=True``, score 0.0), at most ``k``.

        What ``recommend`` gives a history the model can say nothing about, e.g.
        for a visitor without any history; ``exclude`` as in ``recommend``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        model = self._model.current()
        return RecsResult(model.popular_for(exclude, k), True, model.version)


def _recommend(
    model: RecsModel,
    histories: Sequence[Sequence[Token]],
    exclude: Sequence[Collection[str]],
    k: int,
) -> list[RecsResult]:
    """``recommend`` for the histories of one run of ``model``."""
    batch = model.encode(histories, k=k)
    mask = model.exclusions(batch, exclude) if batch.rows else None
    return _results(model, batch, model.run_all([batch], [mask])[0], exclude, k)


def _recommend_parts(
    model: RecsModel,
    histories: Sequence[Sequence[Token]],
    exclude: Sequence[Collection[str]],
    k: int,
    parts: list[list[int]],
) -> list[RecsResult]:
    """``recommend`` for a batch run in ``parts`` (rows of ``histories``).

    Every part is encoded first, then the parts are run one after the other, then
    decoded: a run streams the model's weights and score matrix through the caches,
    Python code right after it runs slower, and so does a run after Python code.
    Stage by stage, the pipeline on the benchmark's backlog took ~6 % less CPU per
    event than part by part (benchmarks/speed_log.md).
    """
    taken: Counter[tuple[int, int]] = Counter()
    part_excludes = [[exclude[row] for row in rows] for rows in parts]
    batches = [model.encode([histories[row] for row in rows], taken, k) for rows in parts]
    masks = [
        model.exclusions(batch, part_exclude) if batch.rows else None
        for batch, part_exclude in zip(batches, part_excludes, strict=True)
    ]
    outputs = model.run_all(batches, masks)
    results: list[RecsResult] = [_NO_RESULT] * len(histories)
    for rows, batch, output, part_exclude in zip(
        parts, batches, outputs, part_excludes, strict=True
    ):
        part = _results(model, batch, output, part_exclude, k)
        for row, result in zip(rows, part, strict=True):
            results[row] = result
    return results


def _results(
    model: RecsModel,
    batch: EncodedBatch,
    outputs: tuple[np.ndarray, np.ndarray] | None,
    exclude: Sequence[Collection[str]],
    k: int,
) -> list[RecsResult]:
    """The results of one encoded ``batch`` from its run's ``outputs`` (None when it
    had no usable row), one per history (``exclude`` holds one collection each); rows
    the model could not read get the popular fallback."""
    decoded = model.decode(*outputs, k) if outputs is not None else []
    if len(batch.rows) == len(exclude):  # the common case: every history usable
        if len(decoded) <= SMALL_BATCH:
            return [RecsResult(items, False, model.version) for items in decoded]
        return _RECS_RESULTS.build(len(decoded), decoded, repeat(False), repeat(model.version))
    scored = dict(zip(batch.rows, decoded, strict=True))
    results = []
    for row in range(len(exclude)):
        items = scored.get(row)
        if items is None:
            results.append(RecsResult(model.popular_for(exclude[row], k), True, model.version))
        else:
            results.append(RecsResult(items, False, model.version))
    return results


# --- sentiment -----------------------------------------------------------------------


class SentimentModel:
    """One loaded sentiment model: session, tokenizer, labels."""

    def __init__(self, session: ort.InferenceSession, meta: ModelMetadata) -> None:
        self.session = session
        self.version = meta.version
        self.max_len = meta.max_len
        self.labels = list(meta.labels)
        try:
            self.tokenizer = TextTokenizer.from_dict(meta.tokenizer)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"sentiment model {meta.version}: bad tokenizer: {exc}") from exc
        self.neutral = {label: float(label == "neutral") for label in self.labels}

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]:
        tokens, lengths, lexicon = self.tokenizer.inputs(texts, self.max_len)
        rows = np.flatnonzero(lengths > 0)
        results = [
            SentimentResult("neutral", dict(self.neutral), (EMPTY_TEXT,), self.version)
            for _ in texts
        ]
        if rows.size == 0:
            return results
        width = bucket_length(int(lengths[rows].max()), self.max_len)
        batch = np.zeros((rows.size, width), np.int64)
        used = tokens[rows, :width]
        batch[:, : used.shape[1]] = used
        feeds = {"tokens": batch, "lengths": lengths[rows], "lexicon": lexicon[rows]}
        (probs,) = self.session.run(["probs"], feeds)
        probs = probs.astype(np.float64)
        probs /= probs.sum(axis=1, keepdims=True)
        for row, p in zip(rows.tolist(), probs.tolist(), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            results[row] = SentimentResult(
                self.labels[best], dict(zip(self.labels, p, strict=True)), (), self.version
            )
        return results


def load_sentiment_model(path: Path, options: RuntimeOptions) -> SentimentModel:
    opened = open_model(path, "sentiment", options)
    return SentimentModel(opened.session, opened.meta)


class OnnxSentimentScorer(ReloadingScorer[SentimentModel]):
    """``SentimentScorer`` on an exported sentiment model (``sentiment.onnx``), hot-reloadable.

    Empty or whitespace-only text is not scored: it gets ``neutral`` with
    probability 1.0 and the flag ``empty_text``.
    """

    def __init__(
        self,
        path: Path,
        options: RuntimeOptions | None = None,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        super().__init__(path, load_sentiment_model, options, reload_interval)

    @property
    def labels(self) -> list[str]:
        return list(self._model.current().labels)

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]:
        return self._model.current().classify(texts)


def model_file(folder: Path, kind: str, variant: str) -> Path:
    """``recs.onnx`` for fp32, ``recs.int8.onnx`` / ``recs.fp16.onnx`` for the variants."""
    return Path(folder) / (f"{kind}.onnx" if variant == "fp32" else f"{kind}.{variant}.onnx")


def weights_sha256_of(path: Path) -> str | None:
    """The digest of the trained weights the model at ``path`` was exported from (None:
    no such file, or not one of recstream's)."""
    if not path.is_file():
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        peek = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises bare Exceptions for unreadable files
        return None
    return peek.get_modelmeta().custom_metadata_map.get(METADATA_PREFIX + "weights_sha256")


def served_variant(folder: Path, kind: str, variant: str, options: RuntimeOptions) -> str:
    """The variant of ``kind`` to serve from ``folder``: ``variant`` itself unless ``auto``.

    ``auto`` serves int8 where the model runs on the CPU and the folder holds an int8
    file exported from the same weights as its fp32 file (the exporter writes int8 only
    when it agrees with PyTorch; on the CPU it is the faster), and fp32 otherwise: on
    CUDA (int8 is a CPU format), without an int8 file, or with one of other weights.
    Decided when the scorers load; the scorer then watches that file.
    """
    if variant != AUTO_VARIANT:
        return variant
    fp32, int8 = model_file(folder, kind, "fp32"), model_file(folder, kind, "int8")
    if not int8.is_file() or not fp32.is_file():
        reason = f"no {int8.name if fp32.is_file() else fp32.name}"
    elif CUDA in options.providers and runs_on_cuda(fp32):
        reason = f"{fp32.name} runs on {CUDA}"
    elif (digest := weights_sha256_of(int8)) is None or digest != weights_sha256_of(fp32):
        reason = f"{int8.name} was not exported from the weights of {fp32.name}"
        log.warning("%s: %s; serving fp32", kind, reason)
    else:
        log.info("%s: RECSTREAM_MODEL_VARIANT=auto serves int8 (%s, on the CPU)", kind, int8.name)
        return "int8"
    log.info("%s: RECSTREAM_MODEL_VARIANT=auto serves fp32 (%s)", kind, reason)
    return "fp32"


def served_file(folder: Path, kind: str, variant: str, options: RuntimeOptions) -> Path:
    """The file of ``kind`` served from ``folder`` (see :func:`served_variant`)."""
    return model_file(folder, kind, served_variant(folder, kind, variant, options))


def load_scorers(settings: Settings) -> tuple[OnnxRecsScorer, OnnxSentimentScorer]:
    """The two scorers from ``settings.model_dir``, in ``settings.model_variant``
    (``auto``: see :func:`served_variant`)."""
    options = RuntimeOptions.from_settings(settings)
    folder, variant = Path(settings.model_dir), settings.model_variant
    interval = settings.model_reload_interval
    recs = OnnxRecsScorer(served_file(folder, "recs", variant, options), options, interval)
    sentiment = OnnxSentimentScorer(
        served_file(folder, "sentiment", variant, options), options, interval
    )
    if settings.top_k > recs.max_k:
        log.warning(
            "RECSTREAM_TOP_K=%d but recs.onnx returns at most %d items; re-export with --top-k",
            settings.top_k,
            recs.max_k,
        )
    return recs, sentiment


# --- fakes for unit tests -----------------------------------------------------------


class FakeRecsScorer:
    """A deterministic stand-in: ranks a fixed catalogue by a hash of the last token.

    Not a model.  Histories with no item click get the first ``k`` catalogue items
    with ``fallback=True``; items in ``exclude`` are never returned.
    """

    def __init__(self, catalogue: Sequence[str], version: str = "fake-recs") -> None:
        self.catalogue = list(catalogue)
        self._version = version

    @property
    def model_version(self) -> str:
        return self._version

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        results = []
        for history, excluded in zip(histories, exclude, strict=True):
            clicked = [t.item_id for t in history if t.item_id is not None]
            candidates = [item for item in self.catalogue if item not in excluded]
            if not clicked:
                items = tuple(ScoredItem(item, 0.0) for item in candidates[:k])
                results.append(RecsResult(items, True, self._version))
                continue
            ranked = sorted(
                (
                    (zlib.crc32(f"{clicked[-1]}|{item}".encode()) / 2**32, item)
                    for item in candidates
                ),
                reverse=True,
            )
            items = tuple(ScoredItem(item, score) for score, item in ranked[:k])
            results.append(RecsResult(items, False, self._version))
        return results


class FakeSentimentScorer:
    """A deterministic stand-in: a text's label is picked by a hash of it.  Not a model.

    Empty or whitespace text gives ``neutral`` with the ``empty_text`` flag, like
    the real scorer; other texts get 0.8 on the hashed label and 0.1 on the rest.
    """

    labels: Final = ("negative", "neutral", "positive")

    def __init__(self, version: str = "fake-sentiment") -> None:
        self._version = version

    @property
    def model_version(self) -> str:
        return self._version

    def classify(self, texts: Sequence[str]) -> list[SentimentResult]:
        results = []
        for text in texts:
            if not text.strip():
                probs = {label: float(label == "neutral") for label in self.labels}
                results.append(SentimentResult("neutral", probs, (EMPTY_TEXT,), self._version))
                continue
            label = self.labels[zlib.crc32(text.encode("utf-8")) % len(self.labels)]
            probs = {name: 0.8 if name == label else 0.1 for name in self.labels}
            results.append(SentimentResult(label, probs, (), self._version))
        return results


__all__ = [
    "EMPTY_TEXT",
    "FakeRecsScorer",
    "FakeSentimentScorer",
    "ModelLoadError",
    "OnnxRecsScorer",
    "OnnxSentimentScorer",
    "RecsResult",
    "RecsScorer",
    "SentimentResult",
    "SentimentScorer",
    "Token",
    "load_scorers",
    "served_variant",
]
