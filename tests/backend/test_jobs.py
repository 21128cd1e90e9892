"""The durable job queue (backend/jobs.py) on its real stores: SQLite in a folder, and a real redis-server.

The job handler here is a plain function that records what it was given and fails on demand,
standing in for the write-back (tested against a real Label Studio in tests/e2e); the queue, its
store, its consumer thread and its lease are the real ones.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backend.jobs import JobQueue, QueueCollector, QueueConsumer, QueueFull
from backend.settings import Settings
from g4seg_core.errors import SettingError, UserError


@pytest.fixture(params=["sqlite", "redis"])
def settings(request, tmp_path):
    """Fast retries: 0.05 s doubling up to 0.2 s (huey's scheduler wakes once a second), for at most 3 s."""
    common = dict(data_dir=tmp_path / "queue", writeback_backoff=0.05, writeback_max_delay=0.2,
                  writeback_max_age=3.0)
    if request.param == "redis":
        return Settings(queue_url=request.getfixturevalue("redis_url"), **common)
    return Settings(**common)


def make_job(task: int, annotation: int | None = None) -> dict:
    annotation = annotation or task * 10
    return {"id": f"t{task}-a{annotation}", "task": task, "annotation": annotation, "project": 1,
            "items": [{"type": "polygonlabels", "value": {"points": [[1, 1], [5, 1], [5, 5]]}}]}


class Recorder:
    """A job handler: records each run; raises `failures[task]` (a list, consumed in order) when set."""

    def __init__(self, failures=None):
        self.runs: list[str] = []
        self.failures = failures or {}
        self.lock = threading.Lock()

    def __call__(self, job: dict) -> str:
        with self.lock:
            self.runs.append(job["id"])
            pending = self.failures.get(job["task"])
            if pending:
                raise pending.pop(0)
        return "created"


def transient(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def wait_until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def consume(queue: JobQueue, handler) -> QueueConsumer:
    queue.set_handler(handler, transient)
    consumer = QueueConsumer(queue)
    consumer.start()
    return consumer


def test_a_job_is_queued_once_and_the_queue_is_bounded(settings):
    queue = JobQueue(Settings(**{**settings.__dict__, "writeback_queue_size": 2}))
    assert queue.submit(make_job(1)) == "queued"
    assert queue.submit(make_job(1)) == "duplicate"  # the same annotation and shapes, still waiting
    assert queue.submit(make_job(2)) == "queued"
    with pytest.raises(QueueFull, match="G4SEG_WRITEBACK_QUEUE_SIZE"):
        queue.submit(make_job(3))
    assert queue.stats() == {"queued": 2, "retrying": 0, "dead_letters": 0}


def test_jobs_run_in_order_and_leave_the_ledger_when_done(settings):
    queue = JobQueue(settings)
    for task in range(1, 6):
        queue.submit(make_job(task))
    handler = Recorder()
    consumer = consume(queue, handler)
    try:
        wait_until(lambda: queue.stats()["queued"] == 0)
    finally:
        consumer.stop()
    assert handler.runs == [f"t{t}-a{t * 10}" for t in range(1, 6)]
    assert queue.jobs() == [] and queue.dead_letters() == []


def test_transient_failures_are_retried_with_backoff_until_they_succeed(settings):
    queue = JobQueue(Settings(**{**settings.__dict__, "writeback_max_age": 60}))
    queue.submit(make_job(1))
    queue.submit(make_job(2))
    handler = Recorder({1: [ConnectionError("Label Studio is down")] * 2})
    consumer = consume(queue, handler)
    try:
        wait_until(lambda: queue.stats()["queued"] == 0)
    finally:
        consumer.stop()
    # Job 2 was not held up by job 1's retries; job 1 succeeded on its third try.
    assert handler.runs.count("t1-a10") == 3 and handler.runs.count("t2-a20") == 1
    assert handler.runs.index("t2-a20") == 1
    assert queue.dead_letters() == []


def test_failing_past_the_age_limit_dead_letters_the_job_and_replay_puts_it_back(settings):
    queue = JobQueue(settings)
    queue.submit(make_job(1))
    handler = Recorder({1: [ConnectionError("Label Studio is down")] * 1000})
    consumer = consume(queue, handler)
    try:
        wait_until(lambda: queue.stats()["dead_letters"] == 1)
        (letter,) = queue.dead_letters()
        assert (letter["task"], letter["annotation"], letter["project"]) == (1, 10, 1)
        assert "G4SEG_WRITEBACK_MAX_AGE" in letter["reason"] and "Label Studio is down" in letter["reason"]
        # Bounded by age, not by a count: tried again (about once a second, the scheduler's tick) until
        # the job was 3 s old, however many tries that took on a loaded machine.
        assert letter["failed_at"] - letter["queued_at"] >= 3.0
        assert letter["attempts"] >= 2 and handler.runs.count("t1-a10") == letter["attempts"]
        assert queue.stats()["queued"] == 0
        health = queue.health()
        assert health["dead_letters"] == 1 and health["dead"][0]["task"] == 1 and health["dead"][0]["annotation"] == 10

        handler.failures.clear()  # the outage is over
        with pytest.raises(UserError, match="no dead letter"):
            queue.replay(["t9-a90"])
        (replayed,) = queue.replay()
        assert replayed["attempts"] == 0 and replayed["queued_at"] > letter["failed_at"]
        wait_until(lambda: queue.stats() == {"queued": 0, "retrying": 0, "dead_letters": 0})
    finally:
        consumer.stop()
    assert handler.runs[-1] == "t1-a10"


def test_a_permanent_failure_is_dead_lettered_at_once_and_a_bug_says_so(settings):
    queue = JobQueue(settings)
    queue.submit(make_job(1))
    queue.submit(make_job(2))
    handler = Recorder({1: [UserError("the image cannot be decoded")], 2: [KeyError("result")]})
    consumer = consume(queue, handler)
    try:
        wait_until(lambda: queue.stats()["dead_letters"] == 2)
    finally:
        consumer.stop()
    reasons = {d["task"]: d["reason"] for d in queue.dead_letters()}
    assert reasons[1] == "the image cannot be decoded"
    assert reasons[2].startswith("internal error: KeyError")
    assert handler.runs == ["t1-a10", "t2-a20"]  # one try each: waiting cannot cure these


def test_a_job_taken_by_a_consumer_that_died_is_run_again(settings):
    queue = JobQueue(settings)
    for task in (1, 2, 3):
        queue.submit(make_job(task))
    # What a consumer killed mid-job leaves behind: the message taken off the queue, never finished.
    taken = queue.huey.dequeue()
    assert taken.args == ["t1-a10"] and queue.ledger.queue_size() == 2
    handler = Recorder()
    consumer = consume(JobQueue(settings), handler)  # a new process takes over
    try:
        wait_until(lambda: queue.stats()["queued"] == 0)
    finally:
        consumer.stop()
    assert sorted(handler.runs) == ["t1-a10", "t2-a20", "t3-a30"]


def test_one_consumer_at_a_time_and_the_next_takes_over(settings):
    first, second = JobQueue(settings), JobQueue(settings)
    a, b = Recorder(), Recorder()
    consumer_a = consume(first, a)
    wait_until(consumer_a.consuming.is_set)
    consumer_b = consume(second, b)
    try:
        for task in (1, 2, 3):
            first.submit(make_job(task))
        wait_until(lambda: first.stats()["queued"] == 0)
        assert not consumer_b.consuming.is_set() and b.runs == []
        consumer_a.stop()
        wait_until(consumer_b.consuming.is_set)
        first.submit(make_job(4))
        wait_until(lambda: first.stats()["queued"] == 0)
    finally:
        consumer_a.stop()
        consumer_b.stop()
    assert a.runs == ["t1-a10", "t2-a20", "t3-a30"] and b.runs == ["t4-a40"]


def test_the_store_holds_json_not_pickle(tmp_path):
    queue = JobQueue(Settings(data_dir=tmp_path))
    queue.submit(make_job(1))
    db = sqlite3.connect(tmp_path / "queue.sqlite3")
    (message,) = [json.loads(bytes(row[0])) for row in db.execute("select data from task")]
    assert message["__message__"][0] == "t1-a10"  # the message names the job id, nothing more
    (record,) = [json.loads(bytes(row[0])) for row in db.execute("select value from kv where queue = 'g4seg'")]
    assert record["task"] == 1 and record["annotation"] == 10 and record["attempts"] == 0


def test_queue_gauges_in_prometheus_format(tmp_path):
    queue = JobQueue(Settings(data_dir=tmp_path))
    queue.submit(make_job(1))
    queue.submit(make_job(2, 7))
    queue.set_handler(Recorder({2: [UserError("bad shapes")]}), transient)
    queue.huey.execute(queue.huey.dequeue())  # job 1: done
    queue.huey.execute(queue.huey.dequeue())  # job 2: dead-lettered
    queue.submit(make_job(3))
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: queue))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    value = lambda name: families[name].samples[0].value  # noqa: E731
    assert value("g4seg_queue_up") == 1 and value("g4seg_queue_jobs") == 1 and value("g4seg_queue_dead_letters") == 1
    (sample,) = families["g4seg_queue_dead_letter_failed_at_seconds"].samples
    assert sample.labels == {"job": "t2-a7", "project": "1", "task": "2", "annotation": "7"}


def test_queue_settings_from_the_environment(tmp_path):
    settings = Settings.from_env({"G4SEG_DATA_DIR": str(tmp_path), "G4SEG_QUEUE_URL": "redis://cache:6379/2",
                                  "G4SEG_WRITEBACK_MAX_AGE": "3600", "G4SEG_WRITEBACK_MAX_DELAY": "30"})
    assert settings.data_dir == tmp_path and settings.queue_url == "redis://cache:6379/2"
    assert settings.writeback_max_age == 3600 and settings.writeback_max_delay == 30
    with pytest.raises(SettingError, match="G4SEG_QUEUE_URL"):
        Settings.from_env({"G4SEG_QUEUE_URL": "postgres://db/queue"})


def test_serve_refuses_a_data_dir_it_cannot_use_in_one_line(monkeypatch, capsys):
    from g4seg_core.cli import main

    for name, value in {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k" * 40,
                        "G4SEG_DATA_DIR": "/proc/g4seg-queue"}.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("g4seg: error: cannot open the job queue in /proc/g4seg-queue") and err.count("\n") == 1
