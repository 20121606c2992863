"""The prediction log: one record per prediction a service makes, served or shadow, on `<design>.predictions`.

It is the contract between serving and monitoring: the services write it (features used, score, decision,
model version and variant, latency), the monitor reads it in windows and joins the labels that arrive later
(fraud chargebacks on `fraud.labels`, recommendation clicks/purchases on `recsys.interactions`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.errors import one_line
from pipelines.platform.events import EntityId, EventTime
from pipelines.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger("mlsd.deployment")

ALERTS_TOPIC = "monitoring.alerts"

Variant = Literal["champion", "challenger"]


def predictions_topic(design: str) -> str:
    """`<design>.predictions`: where a design's services log every prediction."""
    return f"{design}.predictions"


class PredictionRecord(BaseModel):
    """One model's answer to one request.

    `served` is False for a shadow prediction (the challenger scoring the same request without affecting the
    response); a canary request served by the challenger has `variant="challenger"` and `served=True`.
    `request_id` is shared by the served and the shadow record of the same request, so they can be paired.
    """

    model_config = ConfigDict(extra="ignore")

    design: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    request_id: EntityId
    entity_id: EntityId  # transaction_id (fraud) or user_id (recsys)
    timestamp: EventTime  # event time of the request (the transaction's time; the request time for recsys)
    model_name: str
    model_version: str
    variant: Variant = "champion"
    served: bool = True
    features: dict[str, float | None] = Field(default_factory=dict)
    score: float | None  # None for a degraded answer that had no model score
    decision: str  # approve | review | decline (fraud); "recommend" (recsys)
    items: list[str] = Field(default_factory=list)  # recommended item ids, best first (recsys)
    latency_ms: float
    # Why the answer was degraded (a dependency failed: rules only, popularity, ...); empty for a full answer.
    # The monitor leaves degraded records out of drift and quality: their features were never read.
    degraded: str = ""


class PredictionLogger:
    """Sends prediction records to a predictions topic without ever holding up the request they describe.

    The request path only appends the record to a bounded buffer. A sender thread connects to the broker (and
    reconnects after it goes away), encodes the records and hands them to a Kafka producer, which batches them. While
    the broker is unreachable the buffer keeps up to `buffer_records` records; beyond that new records are dropped and
    counted. Nothing is lost silently: `describe()` (the services' /model) and the log say how many records were
    delivered, are waiting, were dropped for lack of room and failed after the producer took them.
    """

    def __init__(
        self,
        connect: Callable[[], KafkaProducer] | None,
        topic: str,
        buffer_records: int = 20_000,
        retry_s: float = 2.0,
    ) -> None:
        self.connect = connect
        self.topic = topic
        self.buffer_records = buffer_records
        self.retry_s = retry_s
        self.producer: KafkaProducer | None = None
        self.buffer: deque[PredictionRecord] = deque()
        self.counts = {"logged": 0, "delivered": 0, "dropped": 0, "failed": 0}
        self.broker_reachable = connect is not None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if connect is not None:
            self._thread = threading.Thread(target=self._send_loop, name=f"log-{topic}", daemon=True)
            self._thread.start()

    @classmethod
    def for_design(cls, settings: Settings, design: str, publish: bool = True) -> PredictionLogger:
        from pipelines.platform.stream import make_producer

        def connect() -> KafkaProducer:
            # linger: the producer ships ~100 ms batches. gzip: the records' JSON shrinks ~8x before kafka-python
            # checksums it. max_block: a send waits at most 1 s for metadata or buffer room, then the record stays
            # in this logger's buffer instead.
            return make_producer(settings, linger_ms=100, compression_type="gzip", max_block_ms=1000)

        return cls(connect if publish else None, predictions_topic(design))

    def log(self, record: PredictionRecord) -> None:
        """Queue one record (a deque append: no I/O, no encoding on the request path)."""
        if self.connect is None:
            return
        if len(self.buffer) >= self.buffer_records:
            self.counts["dropped"] += 1
            dropped = self.counts["dropped"]
            if dropped == 1 or dropped % 1000 == 0:
                log.warning(
                    "prediction log buffer full (%d records, broker %s): %d records dropped so far",
                    self.buffer_records,
                    "reachable" if self.broker_reachable else "unreachable",
                    dropped,
                )
            return
        self.buffer.append(record)
        self.counts["logged"] += 1
        self._wake.set()

    def _send_loop(self) -> None:
        # Connect at once, not at the first record: building a producer holds the GIL for tens of milliseconds,
        # which the first requests would otherwise pay for.
        self._connect()
        while True:
            if not self.buffer:
                if self._stop.is_set():
                    return
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                sent = (self.producer is not None or self._connect()) and self._send_buffered()
            except Exception as exc:  # the sender must outlive any surprise: the buffer would only fill up
                log.warning("prediction log sender: %s; retrying in %.0f s", one_line(exc), self.retry_s)
                sent = False
            if not sent and self._stop.wait(self.retry_s):  # broker away: retry later, or give up when closing
                return

    def _connect(self) -> bool:
        assert self.connect is not None
        try:
            self.producer = self.connect()
        except Exception as exc:
            if self.broker_reachable:
                log.warning(
                    "prediction log: broker unreachable, keeping up to %d records until it is back: %s",
                    self.buffer_records,
                    one_line(exc),
                )
            self.broker_reachable = False
            return False
        if not self.broker_reachable:
            log.warning("prediction log: broker reachable again, sending %d buffered records", len(self.buffer))
        self.broker_reachable = True
        return True

    def _send_buffered(self) -> bool:
        """Hand the buffered records to the producer; False when the broker is away (the rest stay buffered)."""
        from kafka.errors import KafkaTimeoutError

        from pipelines.platform.stream import encode

        assert self.producer is not None
        while self.buffer:
            record = self.buffer[0]
            try:
                # Keyed by request: the served and the shadow record of a request share a partition and their order.
                future = self.producer.send(self.topic, encode(record), key=record.request_id.encode())
            except KafkaTimeoutError as exc:  # no metadata or no room within max_block: the broker is away
                if self.broker_reachable:
                    log.warning("prediction log: cannot send to %s, buffering: %s", self.topic, one_line(exc))
                self.broker_reachable = False
                return False
            except Exception as exc:  # this record cannot be sent (too large, ...): counted, never blocks the rest
                self.buffer.popleft()
                self._failed(exc)
                continue
            self.buffer.popleft()
            future.add_callback(self._delivered)
            future.add_errback(self._failed)
        self.broker_reachable = True
        return True

    def _delivered(self, _metadata: Any) -> None:
        with self._count_lock:  # the sender thread and Kafka's I/O thread both report outcomes
            self.counts["delivered"] += 1

    def _failed(self, exc: BaseException) -> None:
        with self._count_lock:
            self.counts["failed"] += 1
            failed = self.counts["failed"]
        if failed == 1 or failed % 1000 == 0:
            log.warning("prediction records lost after the producer took them (%d so far): %s", failed, one_line(exc))

    def describe(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "broker_reachable": self.broker_reachable,
            "waiting": len(self.buffer),
            "buffer_records": self.buffer_records,
            **self.counts,
        }

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is buffered (for up to `timeout_s`), flush the producer; records left behind are counted."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # still inside a send: leave the producer and the buffer to it
                log.warning("prediction log: %d records still being sent at shutdown", len(self.buffer))
                return
            self._thread = None
        if self.producer is not None:
            self.producer.flush(timeout=timeout_s)
            self.producer.close(timeout=timeout_s)
            self.producer = None
        if self.buffer:
            self.counts["dropped"] += len(self.buffer)
            log.warning("prediction log closed with %d records unsent (counted as dropped)", len(self.buffer))
            self.buffer.clear()
