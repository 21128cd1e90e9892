"""The durable write-back queue against a real Label Studio 1.23.2 and `g4seg serve` (classic engine).

Each test runs once on the embedded SQLite store and once on a real redis-server:
- kill -9 of the whole server (two workers) with >= 10 write-backs not done, then a restart: every
  annotation gets its prediction, none twice;
- SIGTERM mid-queue: the server stops promptly (the running job finishes) and the rest is written
  after the next start;
- a job that keeps failing (its image gone) is dead-lettered after G4SEG_WRITEBACK_MAX_AGE, shown
  with its ids in /health and /metrics, and `g4seg dead-letters replay` writes it once the image is back;
- `g4seg sweep` queues what no webhook brought (annotations saved before the backend was
  connected), once.

The webhooks come from Label Studio itself (it makes one for the connected backend). To have them
all queued before the server consumes any, the test holds the queue's lease while the annotations
are saved, as a second server on the same queue would: the server then queues without consuming.
"""
from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest
import requests
from test_labelstudio_backend import polygon_region, rough_box

from backend.jobs import JobQueue
from backend.settings import Settings
from g4seg_core.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "redis"])
def queue_env(request, tmp_path, label_studio) -> dict[str, str]:
    env = {"G4SEG_ENGINE": "classic", "G4SEG_WRITEBACK_BACKOFF": "0.5", "G4SEG_WRITEBACK_MAX_DELAY": "2",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    if request.param == "redis":
        env["G4SEG_QUEUE_URL"] = request.getfixturevalue("redis_url")
    else:
        env["G4SEG_DATA_DIR"] = str(tmp_path / "queue")
    return env


@pytest.fixture
def serve(start_backend):
    """`start_backend`, but stopped when the test ends: no server of this test consumes the next test's queue."""
    started = []

    def start(env: dict[str, str]):
        started.append(start_backend(env))
        return started[-1]

    yield start
    for backend in started:
        backend.stop()


@contextlib.contextmanager
def queue_of(env: dict[str, str]):
    queue = JobQueue(Settings.from_env(env))
    try:
        yield queue
    finally:
        queue.close()


@contextlib.contextmanager
def lease_held(queue: JobQueue):
    """Hold the queue's lease, as another consumer would: servers queue jobs but run none."""
    lease = queue.lease(ttl=600)
    assert lease.acquire(), "a server holds the queue's lease already"
    try:
        yield
    finally:
        lease.release()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


def new_project(ls, backend, label_config_xml, test_images, count: int, title: str, seed: int):
    images = test_images(count, seed=seed)
    project = ls.create_project(label_config_xml, title=title)
    tasks = ls.import_images(project, [path for path, _ in images])
    if backend is not None:
        ls.register_ml_backend(project, backend.url, basic_auth=backend.auth)
    return project, list(zip(tasks, [rough_box(mask) for _, mask in images]))


def annotate(ls, tasks) -> list[tuple[int, int]]:
    """Save a rough polygon on each task; (task, annotation) pairs."""
    return [(task, ls.create_annotation(task, [polygon_region(box)])["id"]) for task, box in tasks]


def written(ls, task: int, annotation: int) -> list[dict]:
    marker = f"g4seg-a{annotation}-"
    return [p for p in ls.predictions(task) if any(r["id"].startswith(marker) for r in p["result"])]


def assert_all_written_once(ls, pairs, timeout: float = 120):
    wait_for(lambda: all(written(ls, t, a) for t, a in pairs), timeout, "every prediction")
    for task, annotation in pairs:
        predictions = ls.predictions(task)
        assert len(predictions) == 1 and written(ls, task, annotation) == predictions, (task, predictions)
        assert any(r["type"] == "brushlabels" for r in predictions[0]["result"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_server_loses_no_writeback_and_writes_none_twice(sig, queue_env, label_studio, serve,
                                                                   label_config_xml, test_images):
    count = 12
    env = dict(queue_env, G4SEG_WORKERS="2")  # two workers share the queue; one consumes at a time
    with queue_of(env) as queue:
        with lease_held(queue):
            backend = serve(env)
            project, tasks = new_project(label_studio, backend, label_config_xml, test_images, count,
                                         f"e2e queue {sig.name} {'redis' if 'G4SEG_QUEUE_URL' in env else 'sqlite'}",
                                         seed=20)
            pairs = annotate(label_studio, tasks)
            wait_for(lambda: queue.stats()["queued"] == count, 60, "every webhook queued")
            assert all(not written(label_studio, t, a) for t, a in pairs)
        # The server takes the lease and starts writing; stop it as soon as the first job is done.
        wait_for(lambda: queue.stats()["queued"] < count, 60, "the first write-back")
        started = time.monotonic()
        backend.kill(sig)
        stopped_in = time.monotonic() - started
        not_done = queue.stats()["queued"]
        if sig == signal.SIGKILL:
            assert not_done >= 10, f"only {not_done} write-backs were left when the server was killed"
        else:  # a graceful stop lets the running job finish (the next may start while requests drain)
            assert not_done >= 5, f"only {not_done} write-backs were left when the server stopped"
            assert stopped_in < 25  # it finishes the running job, not the queue
        backend.start_again()
        assert_all_written_once(label_studio, pairs)
        wait_for(lambda: queue.stats()["queued"] == 0, 30, "an empty queue")
        assert queue.stats()["dead_letters"] == 0


def test_a_dead_letter_is_shown_and_replayed(queue_env, label_studio, serve, label_config_xml, test_images,
                                             monkeypatch, capsys):
    env = dict(queue_env, G4SEG_WRITEBACK_MAX_AGE="4")
    backend = serve(env)
    images = test_images(2, seed=30)
    kind = "redis" if "G4SEG_QUEUE_URL" in env else "sqlite"
    project = label_studio.create_project(label_config_xml, title=f"e2e dead letters {kind}")
    tasks = label_studio.import_local_files(project, [path for path, _ in images], folder=f"dead-letters-{kind}")
    label_studio.register_ml_backend(project, backend.url, basic_auth=backend.auth)
    # The first task's image disappears from Label Studio's storage: Label Studio answers 404 for it.
    missing = label_studio.local_root / f"dead-letters-{kind}" / Path(images[0][0]).name
    kept = missing.read_bytes()
    missing.unlink()
    pairs = annotate(label_studio, list(zip(tasks, [rough_box(mask) for _, mask in images])))
    (bad_task, bad_annotation), good = pairs
    assert_all_written_once(label_studio, [good])

    def dead():
        return backend.get("/health").json()["queue"]["dead"]

    wait_for(lambda: dead(), 60, "the dead letter")
    assert [(d["task"], d["annotation"], d["project"]) for d in dead()] == [(bad_task, bad_annotation, project)]
    assert backend.get("/health").json()["status"] == "UP"
    assert backend.metric("g4seg_queue_dead_letters") == 1
    assert backend.metric("g4seg_queue_dead_letter_failed_at_seconds", task=str(bad_task),
                  annotation=str(bad_annotation), project=str(project)) > 0
    assert written(label_studio, bad_task, bad_annotation) == []

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["dead-letters", "list"]) == 0
    out = capsys.readouterr().out
    assert f"task {bad_task}  annotation {bad_annotation}" in out and "G4SEG_WRITEBACK_MAX_AGE" in out
    assert "answered 404" in out and "1 dead letter(s)" in out

    missing.write_bytes(kept)  # the operator puts the image back, then replays
    assert main(["dead-letters", "replay", "--all"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    assert_all_written_once(label_studio, pairs)
    wait_for(lambda: backend.get("/health").json()["queue"]["dead_letters"] == 0, 30, "no dead letters")


def test_sweep_queues_what_no_webhook_brought_once(queue_env, label_studio, serve, label_config_xml,
                                                     test_images, monkeypatch, capsys):
    if "G4SEG_QUEUE_URL" in queue_env:
        pytest.skip("the sweep's queueing is the same code on both stores; the SQLite run covers it")
    for name, value in queue_env.items():
        monkeypatch.setenv(name, value)
    # Annotations saved before any backend was connected: no webhook was ever sent for them.
    project, tasks = new_project(label_studio, None, label_config_xml, test_images, 3, "e2e sweep", seed=40)
    pairs = annotate(label_studio, tasks[:2])  # the third task stays without an annotation
    assert main(["sweep", "--project", str(project)]) == 2
    assert "start the server first" in capsys.readouterr().err  # no server has run on this queue yet

    backend = serve(queue_env)
    with queue_of(queue_env) as queue:
        wait_for(lambda: queue.model_version() is not None, 30, "the server's model version")
    assert main(["sweep", "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "queued 2, already waiting 0, done already 0, without rough shapes 1, of 3 tasks" in out
    assert_all_written_once(label_studio, pairs)
    assert main(["sweep", "--project", str(project)]) == 0
    assert "queued 0, already waiting 0, done already 2" in capsys.readouterr().out

    assert main(["sweep", "--project", "999999"]) == 2
    assert "project 999999 not found" in capsys.readouterr().err
    requests.get(backend.url + "/health", timeout=10).raise_for_status()
