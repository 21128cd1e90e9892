"""The durable job queue: work that outlives a request (the webhook write-backs), on huey.

The store is SQLite in G4SEG_DATA_DIR (the default: nothing to install) or Redis at G4SEG_QUEUE_URL,
through huey's SqliteStorage or RedisStorage. Messages and records are JSON (huey's default
serializer pickles; this backend never unpickles). What the store holds:

- huey's queue and schedule (retries waiting for their time), whose messages carry only a job id;
- the ledger (huey's key-value store under the queue's name): job id -> the job itself, a small
  record of ids and shapes (project, task, annotation, the rough regions, the image reference,
  the label-config key), never a request body. A job leaves the ledger only when it is done;
- dead letters (jobs that failed for good), label configs by digest, and the model version the
  serving engine writes, each under its own name in the same store.

Why a ledger beside huey's queue: huey takes a message off the queue when a worker starts it, so
a process killed mid-job would lose that job. The consumer that takes over the queue first puts
back every ledger entry that is neither queued nor scheduled. That is safe because one consumer at
a time holds the queue (a lease: an flock beside the SQLite file, released by the kernel when its
process dies; or a Redis lock with a TTL that its holder renews), and because a job checks Label
Studio before writing, so a job run twice writes once.

Retries: a job that fails with a transient error (Label Studio or its storage unreachable, 5xx,
429) tries again after G4SEG_WRITEBACK_BACKOFF seconds, doubling up to G4SEG_WRITEBACK_MAX_DELAY,
until G4SEG_WRITEBACK_MAX_AGE seconds after it was queued: an outage of any length shorter than
that loses nothing. Any other failure, or one past that age, moves the job to the dead letters,
which `/health`, `/metrics` and `g4seg dead-letters list` show and `g4seg dead-letters replay`
puts back.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from huey import RedisHuey, SqliteHuey
from huey.consumer import Consumer, ConsumerStopped
from huey.exceptions import RetryTask
from huey.registry import Message
from huey.serializer import Serializer

from backend.settings import Settings
from g4seg_core.errors import UserError, one_line

log = logging.getLogger(__name__)

QUEUE_NAME = "g4seg"
SQLITE_FILE = "queue.sqlite3"
LEASE_TTL = 15.0  # a Redis lease not renewed for this long passes to another consumer
LEASE_POLL = 1.0  # how often a server without the lease tries to take it


class QueueUnavailable(UserError):
    """The queue's store cannot be opened or reached (a bad G4SEG_DATA_DIR, Redis down)."""


class QueueFull(UserError):
    """G4SEG_WRITEBACK_QUEUE_SIZE jobs are already waiting."""


def job_id(task_id: int, annotation_id: int, digest: str) -> str:
    """One id per annotation and shapes: the same annotation saved unchanged is one job."""
    return f"t{task_id}-a{annotation_id}-{digest[:12]}"


def config_key(label_config: str) -> str:
    return hashlib.sha256(label_config.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- JSON, not pickle


class JSONSerializer(Serializer):
    """huey's messages and our records as JSON: a store that someone else can write to never runs code here."""

    def _serialize(self, data) -> bytes:
        return json.dumps(_encode(data), separators=(",", ":")).encode()

    def _deserialize(self, data):
        return _decode(json.loads(bytes(data)))


def _encode(value):
    if isinstance(value, Message):
        return {"__message__": [_encode(v) for v in value]}
    if isinstance(value, datetime.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"the job queue stores JSON only, not {type(value).__name__}")


def _decode(value):
    if isinstance(value, dict):
        if "__message__" in value and len(value) == 1:
            return Message(*[_decode(v) for v in value["__message__"]])
        if "__datetime__" in value and len(value) == 1:
            return datetime.datetime.fromisoformat(value["__datetime__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# ---------------------------------------------------------------- leases: one consumer per queue


class FileLease:
    """An exclusive flock on a file beside the SQLite store; the kernel drops it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def acquire(self) -> bool:
        if self._handle is not None:
            return True
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def renew(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RedisLease:
    """redis-py's lock with a TTL; the holder renews it, so a dead holder's lease lapses after `ttl` seconds."""

    def __init__(self, conn, name: str, ttl: float = LEASE_TTL):
        self.ttl = ttl
        self._lock = conn.lock(name, timeout=ttl, blocking=False)
        self._renewed = 0.0

    def acquire(self) -> bool:
        if self._lock.acquire(blocking=False):
            self._renewed = time.monotonic()
            return True
        return False

    def renew(self) -> bool:
        if time.monotonic() - self._renewed < self.ttl / 3:
            return True
        try:
            self._lock.reacquire()
        except Exception as exc:  # LockNotOwnedError (it lapsed) or Redis unreachable
            log.error("the job queue's lease is lost (%s): this server stops consuming", exc)
            return False
        self._renewed = time.monotonic()
        return True

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self._lock.release()


# ---------------------------------------------------------------- the queue


class JobQueue:
    """The store, the ledger, the dead letters, and the one huey task that runs a job."""

    def __init__(self, settings: Settings, name: str = QUEUE_NAME):
        self.settings = settings
        self.name = name
        self._handler: Callable[[dict], str] | None = None
        self._is_transient: Callable[[BaseException], bool] = lambda exc: False
        self._on_outcome: Callable[[dict, str], None] = lambda job, outcome: None
        serializer = JSONSerializer()
        try:
            if settings.queue_url:
                from redis import ConnectionPool

                pool = ConnectionPool.from_url(settings.queue_url, socket_timeout=10, socket_connect_timeout=5)
                self.huey = RedisHuey(name, connection_pool=pool, results=False, serializer=serializer)
            else:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                self.huey = SqliteHuey(name, filename=str(self.sqlite_path), results=False, serializer=serializer,
                                       timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise QueueUnavailable(f"cannot open the job queue in {settings.data_dir} (G4SEG_DATA_DIR): {exc}") from None
        self.ledger = self.huey.storage
        self.dead = self._sibling("dead")
        self.configs = self._sibling("configs")
        self.meta = self._sibling("meta")
        self._task = self.huey.task(name="run_job")(self._run)

    @property
    def sqlite_path(self) -> Path:
        return self.settings.data_dir / SQLITE_FILE

    @property
    def location(self) -> str:
        """Where the store is, for messages (a Redis URL without its password)."""
        if not self.settings.queue_url:
            return str(self.sqlite_path)
        parsed = urlparse(self.settings.queue_url)
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        return parsed._replace(netloc=netloc).geturl()

    def _sibling(self, suffix: str):
        storage = self.huey.storage
        if self.settings.queue_url:  # one connection pool for all of them
            return type(storage)(f"{self.name}_{suffix}", connection_pool=storage.pool)
        return type(storage)(f"{self.name}_{suffix}", filename=str(self.sqlite_path), timeout=10)

    def check(self) -> None:
        """Reach the store once (for `g4seg serve` and the commands, before anything slow)."""
        try:
            self.ledger.result_store_size()
        except Exception as exc:
            raise QueueUnavailable(f"cannot reach the job queue at {self.location}: {one_line(exc)}") from None

    def lease(self, ttl: float = LEASE_TTL):
        """The right to consume this queue; one holder at a time."""
        if self.settings.queue_url:
            return RedisLease(self.ledger.conn, f"{self.ledger.name}.consumer", ttl)
        return FileLease(self.sqlite_path.with_name(SQLITE_FILE + ".consumer.lock"))

    # ------------------------------------------------------------ putting jobs in

    def put_config(self, label_config: str) -> str:
        key = config_key(label_config)
        if not self.configs.has_data_for_key(key):
            self.configs.put_data(key, label_config.encode())
        return key

    def label_config(self, key: str) -> str:
        from huey.constants import EmptyData

        raw = self.configs.peek_data(key)
        if raw is EmptyData:
            raise UserError(f"the job's label config {key} is not in the queue store")
        return bytes(raw).decode()

    def submit(self, job: dict) -> str:
        """Queue a job (a dict with an "id"); "queued", or "duplicate" when that job is already waiting."""
        try:
            if self.ledger.result_store_size() >= self.settings.writeback_queue_size:
                raise QueueFull(f"busy: {self.settings.writeback_queue_size} write-backs are already waiting "
                                "(G4SEG_WRITEBACK_QUEUE_SIZE); try again")
            job = dict(job, queued_at=time.time(), attempts=0, last_error=None)
            if not self.ledger.put_if_empty(job["id"], self.huey.serializer.serialize(job)):
                return "duplicate"
            self._enqueue(job["id"])
        except QueueFull:
            raise
        except Exception as exc:
            raise QueueUnavailable(f"cannot reach the job queue at {self.location}: {one_line(exc)}") from None
        return "queued"

    def _enqueue(self, key: str) -> None:
        self.huey.enqueue(self._task.s(key, id=key))  # the message carries the job id only

    # ------------------------------------------------------------ reading the store

    def job(self, key: str) -> dict | None:
        from huey.constants import EmptyData

        raw = self.ledger.peek_data(key)
        return None if raw is EmptyData else self.huey.serializer.deserialize(raw)

    def jobs(self) -> list[dict]:
        return [self.huey.serializer.deserialize(v) for v in self.ledger.result_items().values()]

    def dead_letters(self, limit: int | None = None) -> list[dict]:
        letters = [self.huey.serializer.deserialize(v) for v in self.dead.result_items().values()]
        letters.sort(key=lambda d: d.get("failed_at", 0))
        return letters[:limit] if limit is not None else letters

    def stats(self) -> dict:
        """Jobs not done (waiting, running, or waiting to retry), of which retrying, and dead letters."""
        return {"queued": self.ledger.result_store_size(), "retrying": self.ledger.schedule_size(),
                "dead_letters": self.dead.result_store_size()}

    def health(self, listed: int = 20) -> dict:
        """For /health: counts, and the ids of the oldest dead letters (no reasons: /health needs no login)."""
        try:
            body = self.stats()
            body["dead"] = [{"project": d.get("project"), "task": d["task"], "annotation": d["annotation"],
                             "failed_at": round(d["failed_at"], 1)} for d in self.dead_letters(listed)]
        except Exception as exc:
            return {"error": f"cannot reach the job queue at {self.location}: {one_line(exc)}"}
        return body

    def publish_model_version(self, version: str) -> None:
        self.meta.put_data("model_version", version.encode())

    def model_version(self) -> str | None:
        from huey.constants import EmptyData

        raw = self.meta.peek_data("model_version")
        return None if raw is EmptyData else bytes(raw).decode()

    # ------------------------------------------------------------ dead letters and recovery

    def replay(self, keys: list[str] | None = None) -> list[dict]:
        """Put dead letters back in the queue (all, or those with these ids), their age starting anew."""
        letters = {d["id"]: d for d in self.dead_letters()}
        unknown = sorted(set(keys or []) - set(letters))
        if unknown:
            raise UserError(f"no dead letter with the id {', '.join(unknown)} (`g4seg dead-letters list` shows them)")
        replayed = []
        for key in keys or list(letters):
            job = {k: v for k, v in letters[key].items() if k not in ("failed_at", "reason")}
            job.update(queued_at=time.time(), attempts=0, last_error=None)
            self.ledger.put_data(key, self.huey.serializer.serialize(job))
            self._enqueue(key)
            self.dead.delete_data(key)
            replayed.append(job)
        return replayed

    def recover(self) -> int:
        """Re-queue ledger entries that are neither queued nor scheduled (a consumer died running them).

        Only the lease holder calls this, when it takes over: no other consumer is running a job then.
        """
        waiting = set()
        for raw in [*self.ledger.enqueued_items(), *self.ledger.scheduled_items()]:
            message = self.huey.serializer.deserialize(raw)
            waiting.update(str(arg) for arg in (message.args or ()))
        lost = [key for key in self.ledger.result_items() if key not in waiting]
        for key in lost:
            self._enqueue(key)
        if lost:
            log.warning("job queue: %d job(s) were taken by a consumer that stopped before finishing them; "
                        "queued again: %s", len(lost), ", ".join(sorted(lost)[:20]))
        return len(lost)

    # ------------------------------------------------------------ running a job

    def set_handler(self, handler: Callable[[dict], str], is_transient: Callable[[BaseException], bool],
                    on_outcome: Callable[[dict, str], None] | None = None) -> None:
        """`handler(job)` does the job and names the outcome; an exception is a failure."""
        self._handler = handler
        self._is_transient = is_transient
        if on_outcome is not None:
            self._on_outcome = on_outcome

    def _run(self, key: str) -> None:
        job = self.job(key)
        if job is None:
            return  # done already (a job queued twice, e.g. by a recovery racing a webhook)
        if self._handler is None:
            raise RuntimeError("this process consumes the job queue without a job handler")
        try:
            outcome = self._handler(job)
        except Exception as exc:
            self._failed(key, job, exc)
            return
        self.ledger.delete_data(key)
        log.info("job %s (task %s, annotation %s): %s", key, job.get("task"), job.get("annotation"), outcome)
        self._on_outcome(job, outcome)

    def _failed(self, key: str, job: dict, exc: Exception) -> None:
        reason = one_line(exc) if isinstance(exc, UserError) or self._is_transient(exc) else \
            f"internal error: {type(exc).__name__}: {one_line(exc)}"
        job["attempts"] = int(job.get("attempts", 0)) + 1
        job["last_error"] = reason
        age = time.time() - float(job.get("queued_at", 0))
        if self._is_transient(exc) and age < self.settings.writeback_max_age:
            delay = min(self.settings.writeback_backoff * 2 ** (job["attempts"] - 1), self.settings.writeback_max_delay)
            delay = max(0.0, min(delay, self.settings.writeback_max_age - age))
            self.ledger.put_data(key, self.huey.serializer.serialize(job))
            log.warning("job %s (task %s, annotation %s): try %d failed: %s; next try in %.1f s",
                        key, job.get("task"), job.get("annotation"), job["attempts"], reason, delay)
            self._on_outcome(job, "retry")
            raise RetryTask(delay=delay)
        if self._is_transient(exc):
            reason = f"still failing {age:.0f} s after it was queued (G4SEG_WRITEBACK_MAX_AGE): {reason}"
        log.error("job %s (task %s, annotation %s) failed for good, moved to the dead letters: %s",
                  key, job.get("task"), job.get("annotation"), reason,
                  exc_info=exc if reason.startswith("internal error") else None)
        self.dead.put_data(key, self.huey.serializer.serialize(dict(job, failed_at=time.time(), reason=reason)))
        self.ledger.delete_data(key)
        self._on_outcome(job, "dead_letter")

    def close(self) -> None:
        for storage in (self.ledger, self.dead, self.configs, self.meta):
            with contextlib.suppress(Exception):
                storage.close()


# ---------------------------------------------------------------- the consumer, inside `g4seg serve`


class _EmbeddedConsumer(Consumer):
    """huey's consumer run from a thread of a server process: the server, not huey, owns the signals."""

    def _set_signal_handlers(self):
        pass


class QueueConsumer:
    """Consumes the queue in this process while it holds the lease; another process takes over when it dies.

    `g4seg serve` starts one in every gunicorn worker once its engine is ready: the one that gets the
    lease runs the jobs (one at a time, as the engine does), the others wait to take over.
    """

    def __init__(self, queue: JobQueue, ready: Callable[[], bool] = lambda: True, on_start: Callable[[], None] | None = None):
        self.queue = queue
        self._ready = ready
        self._on_start = on_start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consuming = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="g4seg-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        """Finish the running job (up to `timeout` seconds), take no other; the queue keeps the rest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 5)

    def _main(self) -> None:
        try:
            if not self._ready():
                return
            if self._on_start is not None:
                self._on_start()
            lease = self.queue.lease()
            while not self._lease(lease):
                if self._stop.wait(LEASE_POLL):
                    return
            try:
                self._consume(lease)
            finally:
                lease.release()
                self.consuming.clear()
        except Exception:
            log.exception("the job queue's consumer stopped on an error")

    def _lease(self, lease) -> bool:
        try:
            return lease.acquire()
        except Exception as exc:  # Redis unreachable: keep trying
            log.warning("cannot take the job queue's lease at %s: %s", self.queue.location, one_line(exc))
            return False

    def _consume(self, lease) -> None:
        self.queue.recover()
        consumer = _EmbeddedConsumer(self.queue.huey, workers=1, periodic=False, initial_delay=0.1, backoff=1.5,
                                     max_delay=1.0, scheduler_interval=1, shutdown_timeout=20)
        consumer.start()
        self.consuming.set()
        log.info("this process consumes the job queue at %s", self.queue.location)
        health = time.monotonic()
        try:
            while not self._stop.is_set():
                health = consumer.loop(health)  # waits 0.1 s; restarts a dead worker thread
                if not lease.renew():
                    break
        except ConsumerStopped:
            pass
        finally:
            consumer.stop(graceful=True)


# ---------------------------------------------------------------- /metrics (Prometheus)


class QueueCollector:
    """The queue's gauges for prometheus_client: jobs waiting, retrying, dead letters (with their ids)."""

    listed = 100  # dead letters named one by one

    def __init__(self, queue: Callable[[], JobQueue | None]):
        self._queue = queue

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("g4seg_queue_up", "1 when the job queue's store answers")
        try:
            queue = self._queue()
            if queue is None:  # write-back not configured: no queue to report
                return
            stats = queue.stats()
            letters = queue.dead_letters(self.listed)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("g4seg_queue_jobs", "Write-back jobs not done yet (waiting, running, or waiting "
                                "to retry)", value=stats["queued"])
        yield GaugeMetricFamily("g4seg_queue_retrying", "Jobs waiting for their next try", value=stats["retrying"])
        yield GaugeMetricFamily("g4seg_queue_dead_letters", "Jobs that failed for good (g4seg dead-letters)",
                                value=stats["dead_letters"])
        each = GaugeMetricFamily("g4seg_queue_dead_letter_failed_at_seconds",
                                 f"One per dead letter (the oldest {self.listed}): when it failed, unix time",
                                 labels=["job", "project", "task", "annotation"])
        for letter in letters:
            each.add_metric([letter["id"], str(letter.get("project") or ""), str(letter["task"]),
                             str(letter["annotation"])], letter["failed_at"])
        yield each


def open_queue(settings: Settings) -> JobQueue:
    """The queue for the commands: opened and reached once, or a one-line error."""
    queue = JobQueue(settings)
    queue.check()
    return queue
