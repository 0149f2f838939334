"""The worker's agents: micro-batches from the input topics through the pipeline to the outputs.

Every agent (a Faust app task, one per input topic and one for the repartition topic)
takes up to ``batch_size`` raw records from its topic's
:class:`~recstream.streams.input_batches.InputFeed` (whole fetched batches, waiting at
most ``within`` for more) and hands them to :class:`BatchProcessor`, which

1. decodes and validates the whole batch (invalid records -> ``deadletter``);
2. forwards each click, search and forget request that arrived on a partition other
   than its user's home partition (unkeyed or differently keyed records) to the
   internal repartition topic, keyed and partitioned for that user;
3. applies the rest to the users' sessions (one table write per user per batch) and
   sweeps the sessions the batch's event time closed;
4. scores the batch in the scoring executor, off the event loop (``scoring_threads``
   batches at once: onnxruntime releases the GIL while it runs);
5. produces every output without awaiting each one, then waits for all the
   acknowledgements; only then are the batch's records acknowledged and its state
   changes released for the changelog (sent, the latest per user, right before the
   next offset commit: at-least-once, a crash replays the batch from the state before
   it, so every output appears).

Steps 1-3 run in the agent; 4-5 in a task, so that the agent applies its next batches
while this one is scored and sent (at-least-once; at most ``scoring_threads + 1``
batches per agent in flight).  The micro-batch adapts to the load: a batch waits for
more records (at most ``within``) only while an earlier one is being scored, so when
the worker is idle an event is processed as soon as it arrives, and under load the
batches grow with what arrives meanwhile.  A batch's outputs go to the producer right after the
previous batch's (the producer keeps their order), without waiting for their
acknowledgements; batches are acknowledged in order.

With ``exactly_once`` each batch is split by input partition and everything it sends
goes into that partition's Kafka transaction, committed with its offsets
(:mod:`recstream.streams.transactions`).

A timer advances the event-time watermark of idle partitions by the wall time they
stay idle, so their last sessions are emitted too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Final, Protocol, TypeVar, cast

import faust

from recstream.streams.input_batches import BatchDeliveringConsumer, InputFeed, Taken, feed_topic
from recstream.streams.metrics import PROCESSING_ERROR, Metrics
from recstream.streams.pipeline import (
    Decoded,
    Outputs,
    Pipeline,
    RawRecord,
    Scores,
    Work,
    repartition_payload,
)
from recstream.streams.record_batches import Outbox, faust_record_batches
from recstream.streams.records import (
    DeadLetter,
    Forget,
    Reason,
    Recommendation,
    Sentiment,
    SessionSummary,
    to_json,
)
from recstream.streams.skipped_records import SkippedRecords
from recstream.streams.state_store import ChangelogBatch, TableStateStore
from recstream.streams.storefront import LatestRecommendations
from recstream.streams.thread_clock import ThreadTimes, thread_times
from recstream.streams.topics import Topics
from recstream.streams.transactions import Transactions

log = logging.getLogger(__name__)

#: Seconds between idle-partition sweeps.
SWEEP_INTERVAL: Final = 1.0
#: Kind of the records read from the repartition topic.
REPARTITIONED: Final = "repartitioned"
_REASONS: Final = frozenset(reason.value for reason in Reason)
_EVENT_TS: Final = attrgetter("event_ts")
T = TypeVar("T")


@dataclass
class _Step:
    """A batch between its two halves (see :meth:`BatchProcessor.process`)."""

    outbox: Outbox
    work: Work
    dead: list[DeadLetter]
    swept: list[SessionSummary]
    changes: ChangelogBatch
    #: ``(scores, how the scoring thread spent the scoring)``; None: nothing to score.
    scoring: asyncio.Future[tuple[Scores, ThreadTimes]] | None
    #: Set once the batch's outputs are with the producer (or it failed before that).
    handed_over: asyncio.Event = field(default_factory=asyncio.Event)


def _timed(call: Callable[[T], Scores], arg: T) -> tuple[Scores, ThreadTimes]:
    started = thread_times()
    scores = call(arg)
    return scores, thread_times() - started


class BatchProcessor:
    """Runs one micro-batch of one topic through the pipeline and produces the outputs."""

    def __init__(
        self,
        app: faust.App,
        pipeline: Pipeline,
        store: TableStateStore,
        topics: Topics,
        metrics: Metrics | None = None,
        transactions: Transactions | None = None,
        scoring_threads: int = 1,
    ) -> None:
        self.app = app
        self.pipeline = pipeline
        self.store = store
        self.topics = topics
        self.metrics = metrics
        #: Set for ``exactly_once``: sends go into the input partitions' transactions.
        self.transactions = transactions
        self.executor = ThreadPoolExecutor(scoring_threads, thread_name_prefix="recstream-scoring")
        #: Batches an agent may have in flight: one being prepared, one per scoring thread.
        self.max_in_flight = scoring_threads + 1
        self._idle_since: dict[int, float] = {}
        #: Each user's latest answers for the storefront; set by the worker.
        self.latest: LatestRecommendations | None = None
        #: Re-reads input records the consumer skipped; set by the app (None: no check).
        self.skipped: SkippedRecords | None = None
        #: Each agent's batches being completed (at-least-once), oldest first, by input kind.
        self._in_flight: dict[str, deque[tuple[asyncio.Task[None], _Step]]] = {}
        #: The worker's stop after a failed completion (held so it is not collected).
        self._stopping: asyncio.Future[None] | None = None
        #: Batches handed to the scoring threads and not scored yet.
        self._scoring = 0

    def busy_scoring(self) -> bool:
        """Whether a batch is being scored (or waits for a scoring thread) now."""
        return self._scoring > 0

    def _scored(self, _: object) -> None:
        self._scoring -= 1

    async def process(self, kind: str, taken: Taken) -> None:
        """Process one batch taken from the ``kind`` input topic's feed (or the
        repartition topic's).

        Its records are acknowledged (their offsets become committable) only when the
        whole batch went through.  At-least-once, the batch's first half (decode,
        sessions, the scoring request) runs here and its second half (outputs,
        changelog, acknowledgement) in a task, so the agent takes its next batches while
        this one is scored: at most ``max_in_flight`` batches of an agent are in flight,
        completed in order.  Raises when an earlier batch of the agent failed.
        Exactly-once, the batch is split by input partition, each part into its
        partition's transaction: the parts are begun one after the other and completed
        side by side (their scoring, and the broker's acknowledgements of their
        records, overlap).
        """
        transactions = self.transactions
        if transactions is None:
            step = await self._begin(kind, taken.records, None)
            queue = self._in_flight.setdefault(kind, deque())
            previous = queue[-1] if queue else None
            task = asyncio.create_task(self._complete_after(previous, step, taken))
            task.add_done_callback(partial(self._check_completed, kind))
            queue.append((task, step))
            while queue and (len(queue) >= self.max_in_flight or queue[0][0].done()):
                await queue.popleft()[0]
            return
        by_partition: dict[int, list[RawRecord]] = {}
        for tp, start, end in taken.spans:  # each partition's share of the take, in order
            by_partition.setdefault(tp.partition, []).extend(taken.records[start:end])
        async with transactions.batch():  # no offset commit until the batch is done
            steps = [
                await self._begin(kind, part, transactions.transactional_id(part[0].topic, p))
                for p, part in by_partition.items()
            ]
            done = await asyncio.gather(*map(self._complete, steps), return_exceptions=True)
            failed = next((result for result in done if isinstance(result, BaseException)), None)
            if failed is not None:
                raise failed
        self._acknowledge(taken)

    async def drain(self) -> None:
        """Wait until every batch in flight is completed (raises if one failed)."""
        for queue in list(self._in_flight.values()):
            while queue:
                await queue.popleft()[0]

    async def _complete_after(
        self,
        previous: tuple[asyncio.Task[None], _Step] | None,
        step: _Step,
        taken: Taken,
    ) -> None:
        await self._complete(step, None if previous is None else previous[1].handed_over)
        if previous is not None and not previous[0].done():
            await asyncio.wait([previous[0]])  # in order: the agent's batch before this one
        self._acknowledge(taken)

    def _acknowledge(self, taken: Taken) -> None:
        cast(BatchDeliveringConsumer, self.app.consumer).acknowledge(taken)

    def _check_completed(self, kind: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # also when the agent is idle and would not notice
            self._stopping = asyncio.ensure_future(stop_worker(self.app, kind, exc))

    async def _begin(self, kind: str, records: list[RawRecord], route: str | None) -> _Step:
        """Decode, forward, apply to the sessions, sweep, and submit the scoring."""
        if self.skipped is not None:  # records Faust skipped go first (see skipped_records)
            positions = [(r.topic, r.partition, r.offset) for r in records]
            recovered, repeated = await self.skipped.recover(kind, positions)
            if recovered and self.metrics is not None:
                self.metrics.reread(len(recovered))
            if repeated:  # delivered again by Faust: processed already
                if self.metrics is not None:
                    self.metrics.repeated(len(repeated))
                dropped = set(repeated)
                records = [r for i, r in enumerate(records) if i not in dropped]
            records = recovered + records
        pipeline = self.pipeline
        decoded, dead = pipeline.decode(records, repartitioned=kind == REPARTITIONED)
        outbox = self._outbox(route)
        local: list[Decoded] = []
        repartition = self.topics.repartition.get_topic_name()
        for item in decoded:
            if item.home is None or item.home == item.source.partition or kind == "reviews":
                local.append(item)
            else:  # forwarded to the partition that owns the user's state
                payload = repartition_payload(item.event, item.source.kind)
                outbox.add(repartition, item.event.user_id.encode("utf-8"), payload, item.home)
        if self.metrics is not None and local:  # forwarded events count where they land
            begun = pipeline.clock()
            self.metrics.input_delay([begun - item.event.ts for item in local])
        if self.latest is not None:  # before prepare: it deletes forgotten users' state
            self.latest.forget([i.event.user_id for i in local if isinstance(i.event, Forget)])
        work = pipeline.prepare(local, self.store)
        swept: list[SessionSummary] = []
        now = time.monotonic()
        for partition in {
            item.source.partition if item.home is None else item.home for item in local
        }:
            self._idle_since[partition] = now
            swept += pipeline.sweep(partition, self.store)
        # One synchronous step of state changes: sealed before anything else can run.
        changes = self.store.seal(route)
        scoring = None
        if work.recs or work.reviews:
            loop = asyncio.get_running_loop()
            scoring = loop.run_in_executor(self.executor, _timed, pipeline.score, work)
            self._scoring += 1
            scoring.add_done_callback(self._scored)
        return _Step(outbox, work, dead, swept, changes, scoring)

    async def _complete(self, step: _Step, after: asyncio.Event | None = None) -> None:
        """Wait for the scores, send every output, then release the state changes.

        ``after``: set when the previous batch's outputs are with the producer; this
        batch's go after them (the producer keeps their order), without waiting for
        their acknowledgements.
        """
        try:
            scores = Scores()
            if step.scoring is not None:
                scores, times = await step.scoring
                self._observe_scoring(len(step.work.recs), len(step.work.reviews), times)
            if after is not None:
                await after.wait()
            out = self.pipeline.finish(step.work, scores)
            recs_json = list(map(to_json, out.recommendations))  # topic and storefront row
            if self.latest is not None:
                self.latest.record(out.recommendations, recs_json)
                self.latest.record_sentiments(out.sentiments)
            out.dead_letters = step.dead + out.dead_letters
            out.sessions += step.swept
            add_outputs(step.outbox, out, self.topics, recs_json)
            sends = await step.outbox.send()
            step.handed_over.set()
            if sends:
                await asyncio.gather(*sends)
        except BaseException:
            # Its state changes must never reach the changelog (they hold event ids
            # whose outputs may be missing); the worker stops.
            self.store.fail()
            raise
        finally:
            step.handed_over.set()  # also after a failure: the next batch may go on
            # Only now may the changelog remember this batch (see TableStateStore).
            await self.store.publish(step.changes)
        self._observe_outputs(out)

    async def sweep_idle(self) -> None:
        """Advance idle partitions' watermarks by their idle wall time and sweep them."""
        now = time.monotonic()
        due = []
        for partition, since in list(self._idle_since.items()):
            idle = now - since
            if idle >= SWEEP_INTERVAL and partition in self.pipeline.watermarks:
                self.pipeline.watermarks[partition] += idle
                self._idle_since[partition] = now
                due.append(partition)
        if not due:
            return
        if self.transactions is None:
            await self._sweep(due, None)
            await self.store.flush()  # no offset commit follows a sweep of idle partitions
            return
        changelog = self.store.table.changelog_topic.get_topic_name()
        route = self.transactions.transactional_id
        async with self.transactions.batch():
            for partition in due:
                await self._sweep([partition], route(changelog, partition))

    async def _sweep(self, partitions: list[int], route: str | None) -> None:
        out = Outputs()
        for partition in partitions:
            out.sessions += self.pipeline.sweep(partition, self.store)
        changes = self.store.seal(route)
        try:
            if out.sessions:
                outbox = self._outbox(route)
                add_outputs(outbox, out, self.topics)
                await asyncio.gather(*await outbox.send())
                self._observe_outputs(out)
        except BaseException:
            self.store.fail()  # as in ``_complete``
            raise
        finally:
            await self.store.publish(changes)

    def rebuild_index(self, active_partitions: set[int]) -> None:
        """After a rebalance: sweep only the partitions this worker owns, from its table."""
        for partition in list(self.pipeline.watermarks):
            if partition not in active_partitions:
                self.pipeline.forget_partition(partition)
                self._idle_since.pop(partition, None)
        now = time.monotonic()
        for partition, user, raw in self.store.items_by_partition():
            if partition in active_partitions:
                self.pipeline.track(partition, user, raw)
                self._idle_since.setdefault(partition, now)

    def close(self) -> None:
        """Stop the scoring thread."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- helpers --------------------------------------------------------------------

    def _outbox(self, route: str | None) -> Outbox:
        """Where a step's records go: batches per partition, or the ``route`` transaction."""
        if route is None or self.transactions is None:
            return faust_record_batches(self.app)
        return self.transactions.outbox(route)

    def _observe_scoring(self, recs: int, reviews: int, times: ThreadTimes) -> None:
        if self.metrics is None:
            return
        if recs:
            self.metrics.scoring_batch("recs", recs, times.wall)
        if reviews:
            self.metrics.scoring_batch("sentiment", reviews, times.wall)
        self.metrics.scoring_thread_time(times)

    def _observe_outputs(self, out: Outputs) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.events_out("recommendations", len(out.recommendations))
        metrics.events_out("sentiment", len(out.sentiments))
        metrics.events_out("sessions", len(out.sessions))
        metrics.events_out("deadletter", len(out.dead_letters))
        for dead in out.dead_letters:
            reason = dead.error.split(":", 1)[0]
            metrics.deadletter(Reason(reason) if reason in _REASONS else PROCESSING_ERROR)
        now = self.pipeline.clock()
        metrics.end_to_end([now - ts for ts in map(_EVENT_TS, out.recommendations)])
        metrics.session_users(len(self.store))


class OutputTopics(Protocol):
    """The names of the topics outputs go to (as :class:`~recstream.streams.topics.Topics`
    has them)."""

    @property
    def recommendations(self) -> str: ...

    @property
    def sentiment(self) -> str: ...

    @property
    def sessions(self) -> str: ...

    @property
    def deadletter(self) -> str: ...


def add_outputs(
    outbox: Outbox, out: Outputs, topics: OutputTopics, recs_json: Sequence[bytes] | None = None
) -> None:
    """Queue a batch's outputs as JSON: keyed by user id, dead letters without a key.

    ``recs_json``: the recommendations' JSON when the caller already wrote it.
    """
    if recs_json is None:
        recs_json = list(map(to_json, out.recommendations))
    keyed: list[
        tuple[str, Sequence[Recommendation | Sentiment | SessionSummary], Sequence[bytes]]
    ] = [
        (topics.recommendations, out.recommendations, recs_json),
        (topics.sentiment, out.sentiments, list(map(to_json, out.sentiments))),
        (topics.sessions, out.sessions, list(map(to_json, out.sessions))),
    ]
    for topic, records, values in keyed:
        if records:
            keys = [record.user_id.encode("utf-8") for record in records]
            outbox.add_keyed(topic, keys, values)
    for dead in out.dead_letters:
        outbox.add(topics.deadletter, None, to_json(dead))


async def stop_worker(app: faust.App, kind: str, exc: BaseException) -> None:
    """A ``kind`` batch failed: stop the worker (see :func:`register_agents`)."""
    log.critical("a %s batch failed (%r); stopping the worker", kind, exc)
    await app.crash(exc)


def register_agents(
    app: faust.App, processor: BatchProcessor, topics: Topics, batch_size: int, within: float
) -> None:
    """Add one agent per input topic, one for the repartition topic, and the sweep timer.

    An agent is an app task taking batches from its topic's feed.  A batch that raises
    stops the worker: its offsets, never acknowledged, would hold back every later
    commit of its partitions; a restarted worker replays it.
    """

    # At-least-once a batch waits for more records only while another is being scored
    # (see InputFeed.take).  Exactly-once keeps the plain wait: every batch is a
    # transaction per partition, and the next one is taken only after it committed.
    busy = processor.busy_scoring if processor.transactions is None else None

    def make_agent(kind: str, feed: InputFeed) -> None:
        async def agent() -> None:
            while True:
                taken = await feed.take(batch_size, within, busy)
                if not taken.records:  # taken during a rebalance: read again after it
                    continue
                try:
                    await processor.process(kind, taken)
                except Exception as exc:
                    await stop_worker(app, kind, exc)
                    raise

        agent.__name__ = agent.__qualname__ = f"recstream_{kind}"
        app.task(agent)

    for kind, topic in topics.inputs.items():
        make_agent(kind, feed_topic(app, topic, kind))
    make_agent(REPARTITIONED, feed_topic(app, topics.repartition, REPARTITIONED))

    @app.timer(SWEEP_INTERVAL, name="recstream-sweep")
    async def sweep_idle() -> None:
        await processor.sweep_idle()
