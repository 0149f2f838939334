"""One frozen settings object, read from ``RECSTREAM_*`` environment variables.

Every field's variable is its name in upper case with the ``RECSTREAM_`` prefix,
e.g. ``session_gap`` is ``RECSTREAM_SESSION_GAP``.  Durations are seconds; lists
are comma-separated (``RECSTREAM_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """Everything an operator can set; see each field for its variable."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    """RECSTREAM_BOOTSTRAP_SERVERS: comma-separated host:port list of the Kafka cluster."""
    app_id: str = "recstream"
    """RECSTREAM_APP_ID: Faust app id, also the consumer group and changelog topic prefix."""
    topic_prefix: str = ""
    """RECSTREAM_TOPIC_PREFIX: prepended to every topic name (e.g. ``shop1.``)."""
    partitions: int = Field(4, ge=1)
    """RECSTREAM_PARTITIONS: partition count for the topics recstream creates."""
    replication_factor: int = Field(1, ge=1)
    """RECSTREAM_REPLICATION_FACTOR: replication factor for created topics."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """RECSTREAM_PROCESSING_GUARANTEE: ``exactly_once`` uses Kafka transactions."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """RECSTREAM_SECURITY_PROTOCOL: how every client talks to the brokers."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """RECSTREAM_SASL_MECHANISM: SASL mechanism when the protocol is SASL_*."""
    sasl_username: str | None = None
    """RECSTREAM_SASL_USERNAME: SASL user name."""
    sasl_password: SecretStr | None = None
    """RECSTREAM_SASL_PASSWORD: SASL password (never logged)."""
    ssl_cafile: Path | None = None
    """RECSTREAM_SSL_CAFILE: CA bundle to verify the brokers' certificates."""
    ssl_certfile: Path | None = None
    """RECSTREAM_SSL_CERTFILE: client certificate for mutual TLS."""
    ssl_keyfile: Path | None = None
    """RECSTREAM_SSL_KEYFILE: client private key for mutual TLS."""
    ssl_password: SecretStr | None = None
    """RECSTREAM_SSL_PASSWORD: password of the client private key."""

    # --- Sessions and state -------------------------------------------------
    session_gap: float = Field(1800.0, gt=0)
    """RECSTREAM_SESSION_GAP: seconds of event-time inactivity that close a session."""
    session_max_events: int = Field(200, ge=1)
    """RECSTREAM_SESSION_MAX_EVENTS: a session longer than this is closed and a new one opened."""
    history_length: int = Field(50, ge=1)
    """RECSTREAM_HISTORY_LENGTH: most recent events kept per user across sessions (model input)."""
    allowed_lateness: float = Field(300.0, ge=0)
    """RECSTREAM_ALLOWED_LATENESS: seconds an event may arrive behind the user's latest event."""
    state_ttl: float = Field(7 * 86_400.0, gt=0)
    """RECSTREAM_STATE_TTL: seconds of event time after which an idle user's state is dropped."""
    dedup_window: int = Field(64, ge=0)
    """RECSTREAM_DEDUP_WINDOW: recent event ids remembered per user to drop duplicates."""
    state_cache_users: int = Field(8192, ge=0)
    """RECSTREAM_STATE_CACHE_USERS: users whose decoded state and scoring tokens the worker
    keeps between batches (the most recently written; ~8 KB each with 50 events of history,
    ~64 MB at the default), and whose storefront row it keeps parsed (~1 KB each with 10
    items, besides the row); 0 turns the caches off."""
    max_event_bytes: int = Field(65_536, ge=256)
    """RECSTREAM_MAX_EVENT_BYTES: larger records are dead-lettered unread."""
    max_future_skew: float = Field(86_400.0, ge=0)
    """RECSTREAM_MAX_FUTURE_SKEW: seconds an event time may lie ahead of the wall clock."""
    user_id_salt: SecretStr | None = None
    """RECSTREAM_USER_ID_SALT: when set, user ids are keyed-hashed before state and outputs."""
    data_dir: Path = Path(".recstream-data")
    """RECSTREAM_DATA_DIR: local table state of the worker."""

    # --- Scoring -------------------------------------------------------------
    model_dir: Path = Path("models")
    """RECSTREAM_MODEL_DIR: folder with ``recs.onnx`` and ``sentiment.onnx``."""
    catalog_path: Path | None = None
    """RECSTREAM_CATALOG_PATH: a JSONL log whose clicks name the products the page shows."""
    model_variant: Literal["auto", "fp32", "int8", "fp16"] = "auto"
    """RECSTREAM_MODEL_VARIANT: which exported file to serve (``recs.int8.onnx`` for int8...);
    ``auto``: int8 on the CPU where the folder holds one of the same weights, else fp32."""
    model_reload_interval: float = Field(10.0, gt=0)
    """RECSTREAM_MODEL_RELOAD_INTERVAL: seconds between checks for a new model file."""
    top_k: int = Field(10, ge=1, le=100)
    """RECSTREAM_TOP_K: items per recommendation; each scoring run asks the recommender
    graph for this many (its top-k's work grows with them), at most the export's
    ``--top-k``."""
    exclude_trigger_item: bool = True
    """RECSTREAM_EXCLUDE_TRIGGER_ITEM: leave out the item of the click being answered
    (the one on screen); items purchased in the session are always left out."""
    batch_size: int = Field(1024, ge=1)
    """RECSTREAM_BATCH_SIZE: most events taken from a stream in one batch."""
    batch_within: float = Field(0.01, gt=0)
    """RECSTREAM_BATCH_WITHIN: longest a batch waits to fill before it is processed; it
    waits only while an earlier batch is being scored (at-least-once; exactly-once:
    always)."""
    fetch_max_wait: float = Field(0.5, gt=0, le=30)
    """RECSTREAM_FETCH_MAX_WAIT: longest a fetch waits at the broker for records.  Kafka
    answers as soon as records arrive; a broker that does not (Tansu) adds up to this to
    every event's latency.  Faust's own value is 1.5 s."""
    empty_fetch_pause: float = Field(0.005, ge=0, le=1)
    """RECSTREAM_EMPTY_FETCH_PAUSE: seconds the consumer waits after a fetch that came back
    empty before the next one to that broker (counted from when it was sent).  Kafka
    holds an empty fetch for the fetch wait, so this never waits there; a broker that
    answers at once (noida) would be polled in a tight loop.  0 turns it off."""
    producer_max_batch_bytes: int = Field(262_144, ge=1)
    """RECSTREAM_PRODUCER_MAX_BATCH_BYTES: most bytes the worker's producer puts in one
    record batch.  The producer has one request in flight per broker, carrying at most
    one batch per partition, so a batch's outputs (and a commit's changelog records)
    take one round trip per this many bytes per partition: 256 KiB ran the pass-through
    20-30 % faster than Kafka's 16 KiB on Tansu.  Keep it under the broker's
    ``message.max.bytes`` (~1 MiB by default).  1: one record per batch, which makes
    Tansu's end offsets exact."""
    providers: CommaList = ("CUDAExecutionProvider", "CPUExecutionProvider")
    """RECSTREAM_PROVIDERS: onnxruntime execution providers, in order of preference."""
    require_gpu: bool = False
    """RECSTREAM_REQUIRE_GPU: refuse to start when onnxruntime cannot use CUDA."""
    intra_op_threads: int = Field(1, ge=0)
    """RECSTREAM_INTRA_OP_THREADS: onnxruntime threads inside one operator (0 = all cores)."""
    inter_op_threads: int = Field(1, ge=0)
    """RECSTREAM_INTER_OP_THREADS: onnxruntime threads across operators."""
    model_processes: bool | Literal["auto"] = "auto"
    """RECSTREAM_MODEL_PROCESSES: on the CPU, run the recommender in a child process per
    scoring thread (``recstream.streams.model_process``), so its runs do not wait for
    the worker's GIL; the worker still encodes and decodes.  Ignored on CUDA.  false:
    onnxruntime runs in the scoring threads themselves.  auto: true where the worker
    can use two CPUs or more (its affinity and its cgroup's CPU limit), false on one."""
    scoring_threads: int = Field(2, ge=1, le=64)
    """RECSTREAM_SCORING_THREADS: micro-batches scored at the same time, each on its own
    thread (and, with model processes, its own model process); an agent keeps one more
    batch than this in flight.  With the model in the threads, 3-4 drained a backlog
    6-17 % faster on 2 cores but lengthened the latency tail near capacity
    (benchmarks/speed_log.md)."""

    # --- Worker process ----------------------------------------------------
    gc_young_threshold: int = Field(100_000, ge=0)
    """RECSTREAM_GC_YOUNG_THRESHOLD: objects allocated between two collections of the
    garbage collector's youngest generation.  Each collection walks every young object
    still alive (under load: the fetched records and batches in flight), so rarer ones
    cost less in all but pause longer (``recstream_gc_pause_seconds``): busy worker,
    scoring disabled, 1.5 us of CPU per event in collections at 100,000, 4.5-4.9 at
    20,000, about a sixth of all its CPU at Python's 700; 0 keeps Python's default."""

    # --- Web, metrics and logs ---------------------------------------------
    web_host: str = "127.0.0.1"
    """RECSTREAM_WEB_HOST: address the worker's HTTP server binds (loopback by default)."""
    web_advertised_host: str | None = None
    """RECSTREAM_WEB_ADVERTISED_HOST: host other workers use to reach this one (default: the
    bind address, or the machine's hostname when binding 0.0.0.0)."""
    web_port: int = Field(6066, ge=0, le=65535)
    """RECSTREAM_WEB_PORT: port of the worker's HTTP server (metrics, health, queries)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """RECSTREAM_LOG_LEVEL: log level of the worker."""
    log_json: bool = False
    """RECSTREAM_LOG_JSON: structured JSON log lines instead of plain text."""

    @field_validator("providers", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def topic(self, name: str) -> str:
        """The full name of one of recstream's topics."""
        return f"{self.topic_prefix}{name}"

    def connection_env(self) -> dict[str, str]:
        """The ``RECSTREAM_*`` variables that put a child process (a worker started by a
        test or benchmark) on this broker, topics, group and web port."""
        return {
            "RECSTREAM_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "RECSTREAM_TOPIC_PREFIX": self.topic_prefix,
            "RECSTREAM_APP_ID": self.app_id,
            "RECSTREAM_PARTITIONS": str(self.partitions),
            "RECSTREAM_WEB_PORT": str(self.web_port),
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
