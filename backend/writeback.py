"""The webhook path: a saved annotation's rough shapes refined and written back as a prediction.

`/webhook` checks the annotation and puts a job in the durable queue (backend/jobs.py): ids and
shapes only (project, task, annotation, the rough regions, the task's image reference, the
label-config key). The job runs in the one process that consumes the queue. It is done only when
Label Studio holds its prediction:

1. the annotation is read back from Label Studio: if it is gone, or its shapes changed since (a
   newer job has them), there is nothing to write;
2. the task's predictions are checked for the one this backend wrote for that annotation (region
   ids carry the annotation id and a digest of its shapes): with the same shapes and model version
   it is done already (a restart, a replay or a sweep never writes twice);
3. the shapes are refined and the prediction is created, or the earlier one for that annotation
   updated.

Label Studio unreachable (or answering 5xx/429), or the task image not handed over: the queue
retries with backoff until G4SEG_WRITEBACK_MAX_AGE; anything else sends the job to the dead letters.
"""
from __future__ import annotations

import logging
from typing import Callable

import httpx
import requests

from backend.fetch import ImageDownloadError
from backend.jobs import JobQueue, QueueConsumer, QueueFull, QueueUnavailable, job_id
from backend.ls_api import ls_client
from backend.ls_format import (
    FormatError,
    items_digest,
    parse_label_config,
    renumber_regions,
    rough_items,
    writeback_marker,
    writeback_region_id,
)
from backend.service import BackendError, RefineService
from backend.settings import Settings

log = logging.getLogger(__name__)

WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def default_client_factory(settings: Settings):
    def make():
        return ls_client(settings.label_studio_url, settings.label_studio_api_key, timeout=30)

    return make


def writeback_job(project_id, task: dict, annotation_id: int, items: list[dict], config_key: str,
                  data_keys) -> dict:
    """What the queue keeps of a saved annotation: ids, shapes, and the image reference only."""
    digest = items_digest(items)
    return {"id": job_id(task["id"], annotation_id, digest), "kind": "writeback",
            "project": project_id if isinstance(project_id, int) else None, "task": task["id"],
            "annotation": annotation_id, "digest": digest, "items": items, "config": config_key,
            "data": {key: task["data"][key] for key in sorted(data_keys) if key in task["data"]}}


class WriteBack:
    def __init__(self, settings: Settings, service: RefineService, client_factory: Callable | None = None):
        self.settings = settings
        self.service = service
        self.metrics = service.metrics
        self._client_factory = client_factory or default_client_factory(settings)
        self._client = None
        self._queue: JobQueue | None = None
        self.consumer: QueueConsumer | None = None

    @property
    def queue(self) -> JobQueue | None:
        """The durable queue, opened on first use; None while write-back is not configured."""
        if self._queue is None and self.settings.can_write_back:
            try:
                self._queue = JobQueue(self.settings)
            except QueueUnavailable as exc:
                raise BackendError(503, str(exc)) from None
        return self._queue

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
        config = parse_label_config(label_config)
        if annotation.get("was_cancelled"):
            return {"status": "ignored", "reason": "the annotation was skipped"}
        items = rough_items(annotation.get("result"))
        if not items:
            return {"status": "ignored", "reason": "the annotation holds no rough shape to refine"}
        if not self.settings.can_write_back:
            log.warning("webhook for annotation %s ignored: writing predictions back needs LABEL_STUDIO_URL "
                        "and LABEL_STUDIO_API_KEY", annotation["id"])
            return {"status": "ignored", "reason": "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set"}
        queue = self.queue
        try:
            job = writeback_job(project.get("id"), task, annotation["id"], items, queue.put_config(label_config),
                                {b.data_key for b in config.brushes})
            status = queue.submit(job)
        except QueueFull as exc:
            self.metrics.writebacks.labels("rejected_busy").inc()
            raise BackendError(503, str(exc)) from None
        except QueueUnavailable as exc:
            raise BackendError(503, str(exc)) from None
        except Exception as exc:  # the store failed while saving the label config
            raise BackendError(503, f"cannot reach the job queue at {queue.location}: {exc}") from None
        self.metrics.writebacks.labels("duplicates" if status == "duplicate" else "queued").inc()
        return {"status": status, "task": task["id"], "annotation": annotation["id"], "job": job["id"]}

    # ------------------------------------------------------------ the consumer

    def start(self) -> None:
        """Take part in consuming the queue: once the engine is ready, whoever holds the lease runs the jobs."""
        if not self.settings.can_write_back:
            return
        queue = self.queue
        queue.set_handler(self.run_job, is_transient, self._count)

        def ready() -> bool:
            self.service.holder.wait()
            if self.service.holder.state != "ready":
                log.error("the engine did not load: this process does not run write-back jobs")
                return False
            return True

        def publish() -> None:  # what `g4seg sweep` compares predictions against
            queue.publish_model_version(self.service.model_version())

        self.consumer = QueueConsumer(queue, ready=ready, on_start=publish)
        self.consumer.start()

    def stop(self, timeout: float = 20.0) -> None:
        if self.consumer is not None:
            self.consumer.stop(timeout)
        if self._queue is not None:
            self._queue.close()

    def _count(self, job: dict, outcome: str) -> None:
        self.metrics.writebacks.labels(outcome).inc()

    # ------------------------------------------------------------ one job

    def run_job(self, job: dict) -> str:
        """Do one write-back job; the outcome: created, updated, exists, stale, gone or empty."""
        from label_studio_sdk.core.api_error import ApiError

        client = self._client = self._client or self._client_factory()
        try:
            return self._run_job(client, job)
        except ApiError as exc:
            if exc.status_code == 404:
                return "gone"  # the task or annotation was deleted: nothing to write
            self._client = None if is_transient(exc) else self._client
            raise
        except (httpx.TransportError, ConnectionError, TimeoutError):
            self._client = None  # reconnect on the next try
            raise

    def _run_job(self, client, job: dict) -> str:
        annotation_id, task_id = job["annotation"], job["task"]
        annotation = client.annotations.get(annotation_id)
        current = rough_items(annotation.result or [])
        if annotation.was_cancelled or not current or items_digest(current) != job["digest"]:
            return "stale"  # changed since: the newer webhook (or `g4seg sweep`) has its shapes
        version = self.service.model_version()
        mine = [p for p in client.predictions.list(task=task_id) if _has_region(p, writeback_marker(annotation_id))]
        same = writeback_marker(annotation_id, job["digest"])
        if any(p.model_version == version and _has_region(p, same) for p in mine):
            return "exists"
        config = parse_label_config(self._queue.label_config(job["config"]))
        prediction, digest = self.service.refine_annotation({"id": task_id, "data": job["data"]},
                                                            {"id": annotation_id, "result": job["items"]}, config)
        if prediction is None or not prediction["result"]:
            return "empty"
        result = renumber_regions(prediction["result"], lambda n: writeback_region_id(annotation_id, digest, n))
        fields = dict(result=result, score=prediction["score"], model_version=prediction["model_version"])
        if mine:
            client.predictions.update(mine[0].id, **fields)
            return "updated"
        client.predictions.create(task=task_id, **fields)
        return "created"


def _has_region(prediction, prefix: str) -> bool:
    return any(str(region.get("id", "")).startswith(prefix) for region in (prediction.result or []))


def is_transient(exc: BaseException) -> bool:
    """Failures that waiting may cure: Label Studio (or its storage) down, slow or overloaded."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (httpx.TransportError, requests.ConnectionError, requests.Timeout, ImageDownloadError,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ApiError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code in (408, 429)
    return False
