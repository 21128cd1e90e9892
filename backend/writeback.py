"""The webhook path: refine a saved annotation in the background and write a prediction back.

`/webhook` answers at once; one thread per process refines queued annotations and writes each
result to Label Studio through label-studio-sdk's client, retrying with backoff while Label
Studio is unreachable. The same annotation (same shapes) twice makes one prediction: duplicates
are dropped on arrival, and before writing, the task's predictions are checked for regions this
backend already wrote for that annotation (their ids carry the annotation id and a digest of its
shapes), so a restart or a second worker process does not write it again either. An annotation
whose shapes changed gets its earlier prediction updated, not a second one.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import httpx

from backend.fetch import ImageDownloadError
from backend.ls_format import (
    FormatError,
    items_digest,
    parse_label_config,
    rough_items,
    writeback_marker,
    writeback_region_id,
)
from backend.service import BackendError, RefineService, error_status
from backend.settings import Settings

log = logging.getLogger(__name__)

WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


@dataclass
class Job:
    task: dict
    annotation: dict
    label_config: str
    digest: str

    @property
    def key(self) -> tuple:
        return (self.task["id"], self.annotation["id"], self.digest)


def default_client_factory(settings: Settings):
    def make():
        from label_studio_sdk import LabelStudio

        # Our own retry loop spaces the attempts; the client's retries would stack on top of it.
        return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                           timeout=30, max_retries=0)

    return make


class WriteBack:
    def __init__(self, settings: Settings, service: RefineService, client_factory: Callable | None = None):
        self.settings = settings
        self.service = service
        self.metrics = service.metrics
        self._client_factory = client_factory or default_client_factory(settings)
        self._client = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=settings.writeback_queue_size)
        self._seen: OrderedDict = OrderedDict()  # keys queued or written, most recent last
        self._seen_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the webhook route

    def handle(self, body) -> dict:
        """Validate a webhook and queue its annotation; returns the JSON answer."""
        if not isinstance(body, dict):
            raise FormatError("the request body must be a JSON object")
        action = body.get("action")
        if action not in WEBHOOK_ACTIONS:
            return {"status": "ignored", "reason": f"action {action!r} is not one the backend acts on"}
        annotation, task, project = body.get("annotation"), body.get("task"), body.get("project")
        if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
            raise FormatError("the webhook carries no annotation with an integer id")
        if not isinstance(task, dict) or not isinstance(task.get("id"), int) or not isinstance(task.get("data"), dict):
            raise FormatError("the webhook carries no task with an integer id and a data object")
        if not isinstance(project, dict):
            raise FormatError("the webhook carries no project")
        label_config = project.get("label_config")
        parse_label_config(label_config)
        if annotation.get("was_cancelled"):
            return {"status": "ignored", "reason": "the annotation was skipped"}
        items = rough_items(annotation.get("result"))
        if not items:
            return {"status": "ignored", "reason": "the annotation holds no rough shape to refine"}
        if not self.settings.can_write_back:
            log.warning("webhook for annotation %s ignored: writing predictions back needs LABEL_STUDIO_URL "
                        "and LABEL_STUDIO_API_KEY", annotation["id"])
            return {"status": "ignored", "reason": "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set"}
        if self.service.holder.state == "failed":
            self.service.holder.require()  # raises the 503 with the load error
        job = Job(task=task, annotation=annotation, label_config=label_config, digest=items_digest(items))
        return {"status": self.submit(job), "task": task["id"], "annotation": annotation["id"]}

    def submit(self, job: Job) -> str:
        with self._seen_lock:
            if job.key in self._seen:
                self.metrics.writebacks.labels("duplicates").inc()
                return "duplicate"
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.metrics.writebacks.labels("rejected_busy").inc()
                raise BackendError(503, f"busy: {self._queue.maxsize} annotations are already waiting to be "
                                        "refined; try again") from None
            self._remember(job.key)
        self.metrics.writebacks.labels("queued").inc()
        return "queued"

    # ------------------------------------------------------------ the worker

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="g4seg-writeback", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the worker at once
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued job is done (tests and shutdown use this)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                self._queue.task_done()
                break
            try:
                self._process(job)
            except Exception:  # a bug in one job must not end the worker
                log.exception("write-back of annotation %s failed unexpectedly", job.annotation["id"])
                self.metrics.writebacks.labels("failed").inc()
            finally:
                self._queue.task_done()

    def _process(self, job: Job) -> None:
        self.service.holder.wait()
        retries = self.settings.writeback_retries
        for attempt in range(retries + 1):
            try:
                config = parse_label_config(job.label_config)
                prediction, digest = self.service.refine_annotation(job.task, job.annotation, config)
                outcome = self._write(job, prediction, digest)
                self.metrics.writebacks.labels(outcome).inc()
                log.info("task %s, annotation %s: prediction %s", job.task["id"], job.annotation["id"], outcome)
                return
            except Exception as exc:
                if not _transient(exc):
                    status = error_status(exc)
                    log.error("task %s, annotation %s: not refined: %s", job.task["id"], job.annotation["id"],
                              status[1] if status else exc, exc_info=status is None)
                    self.metrics.writebacks.labels("failed").inc()
                    return
                if attempt == retries or self._stop.is_set():
                    log.error("task %s, annotation %s: giving up writing the prediction after %d attempts: %s",
                              job.task["id"], job.annotation["id"], attempt + 1, _describe(exc))
                    self.metrics.writebacks.labels("failed").inc()
                    self._forget(job.key)  # the same annotation sent again may try again
                    return
                delay = self.settings.writeback_backoff * (2 ** attempt)
                log.warning("task %s, annotation %s: Label Studio unreachable (%s); retry %d of %d in %.1f s",
                            job.task["id"], job.annotation["id"], _describe(exc), attempt + 1, retries, delay)
                self.metrics.writebacks.labels("retries").inc()
                self._client = None  # reconnect on the next attempt
                self._stop.wait(delay)

    def _write(self, job: Job, prediction: dict, digest: str) -> str:
        annotation_id = job.annotation["id"]
        result = [dict(region, id=writeback_region_id(annotation_id, digest, i))
                  for i, region in enumerate(prediction["result"])]
        client = self._client = self._client or self._client_factory()
        existing = client.predictions.list(task=job.task["id"])
        mine = [p for p in existing if any(str(r.get("id", "")).startswith(writeback_marker(annotation_id))
                                           for r in (p.result or []))]
        same = writeback_marker(annotation_id, digest)
        if any(str(r.get("id", "")).startswith(same) for p in mine for r in (p.result or [])):
            return "exists"
        if not result:
            return "empty"
        fields = dict(result=result, score=prediction["score"], model_version=prediction["model_version"])
        if mine:
            client.predictions.update(mine[0].id, **fields)
            return "updated"
        client.predictions.create(task=job.task["id"], **fields)
        return "created"

    def _remember(self, key) -> None:
        self._seen[key] = True
        self._seen.move_to_end(key)
        while len(self._seen) > 4096:
            self._seen.popitem(last=False)

    def _forget(self, key) -> None:
        with self._seen_lock:
            self._seen.pop(key, None)


def _transient(exc: BaseException) -> bool:
    """Failures that waiting may cure: Label Studio down, slow or overloaded."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (httpx.TransportError, ImageDownloadError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ApiError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return False


def _describe(exc: BaseException) -> str:
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, ApiError):
        return f"Label Studio answered {exc.status_code}"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


