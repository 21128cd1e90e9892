"""Pre-annotation of a Label Studio project: text-only masks (then G4Seg refinement) uploaded as predictions.

`Preannotator` turns task images into Label Studio predictions (brush results, one per class found);
the backend's batch predictions call it for tasks that hold no rough shape.

`preannotate_project` runs one pipeline over a project, whatever executes it:

    list the tasks (paginated; skip those holding this model version's prediction)
      -> DownloadStage: the images, a few at once, every request with a timeout
      -> PredictStage:  text-only masks (+ refinement); each worker loads the model once
      -> UploadStage:   predictions imported in batches, idempotent per task and model version
      -> here: one progress bar over all tasks, and the summary

A batch is a dict of numpy columns (Ray Data's numpy batch format), so each stage is a plain
callable class: `InProcess` calls them in this process (no Ray needed); `backend.preannotation_ray`
hands the same classes to Ray Data's `map_batches`, in actor pools (one model per actor, a GPU
each where there are GPUs). Delivery is at least once (Ray retries what a dead actor held), and the
upload is what makes it exactly once: it checks before writing, and when two writers raced, the
lowest prediction id stays. An interrupted run loses nothing uploaded, and running it again resumes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import httpx
import numpy as np

from backend.ls_api import ls_client
from backend.ls_format import OWN_ID_PREFIX, BrushOutput, FormatError, mask_results, renumber_regions
from g4seg_core.errors import SettingError, UserError

if TYPE_CHECKING:  # the stages that download and upload never import torch
    from backend.settings import Settings
    from g4seg_core.engines.base import Engine
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.textseg import TextSegConfig, TextSegmenter

log = logging.getLogger(__name__)

MODEL_VERSION_PREFIX = "g4seg-preannotate"
DOWNLOADS_AT_ONCE = 8  # image downloads in flight per download worker
# Test hook: the worker that first creates this file kills its own process at the start of its
# second batch (after handing over its first), as a lost machine would. Tests only.
KILL_HOOK_ENV = "G4SEG_TEST_KILL_WORKER"


class UploadError(RuntimeError):
    """Label Studio did not take a batch of predictions, even after retries."""


# ---------------------------------------------------------------- images to predictions


class Preannotator:
    """A text-only segmenter and, optionally, a refiner on the same loaded model."""

    def __init__(self, segmenter: TextSegmenter, refiner: Engine | None = None):
        self.segmenter = segmenter
        self.refiner = refiner

    @classmethod
    def for_engine(cls, engine: Engine, method: str = "iseg", settings: dict[str, str] | None = None,
                   refine: bool = True) -> "Preannotator":
        """Pre-annotation on a loaded G4Seg engine's model (no second copy of the weights)."""
        from g4seg_core.method.textseg import TextSegmenter, config_for

        model = getattr(engine, "model", None)
        if model is None:
            raise SettingError(f"pre-annotation needs the Stable Diffusion model; the {engine.name} engine has none")
        return cls(TextSegmenter(model, config_for(method, settings)), engine if refine else None)

    @property
    def model_version(self) -> str:
        """Names the method, the model, its settings and the refinement (with its settings)."""
        from dataclasses import replace

        version = f"{MODEL_VERSION_PREFIX} {self.segmenter.version}"
        if self.refiner is not None:
            config = getattr(self.refiner, "config", None)
            if config is not None and hasattr(config, "short"):
                size = getattr(self.refiner, "working_size", None) or config.working_size
                settings = replace(config, working_size=size).short()
                version += f" refine {self.refiner.name}:{settings}"
            else:
                version += f" refine {self.refiner.version}"
        return version

    def predict(self, image: np.ndarray, output: BrushOutput, labels: list[str] | None = None) -> dict:
        """A prediction for one image: {"result": [brush results], "score", "model_version"}."""
        (answer,) = self.predict_many([image], output, labels)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def predict_many(self, images: list[np.ndarray], output: BrushOutput, labels: list[str] | None = None,
                     keys: list[int] | None = None) -> list[dict | Exception]:
        """A prediction, or the exception that stopped it, per image; the text-only step runs the
        images in one model call. `keys` (task ids) make region ids deterministic, so a task done
        twice gives the same prediction."""
        labels = list(labels or output.labels)
        for label in labels:
            output.check_label(label)
        if not images:
            return []
        try:
            segmentations = self.segmenter.segment_many(list(images), labels)
        except Exception as exc:
            if len(images) == 1:
                return [exc]
            log.debug("a batch of %d images failed (%s); one at a time", len(images), exc)
            return [answer for i, image in enumerate(images)  # the image at fault fails alone
                    for answer in self.predict_many([image], output, labels, keys and [keys[i]])]
        version = self.model_version
        answers: list[dict | Exception] = []
        for i, (image, segmentation) in enumerate(zip(images, segmentations)):
            try:
                if self.refiner is not None:
                    from g4seg_core.method.textseg import refine_segmentation

                    segmentation = refine_segmentation(self.refiner, image, segmentation)
                answers.append(self._prediction(segmentation, output, version, None if keys is None else keys[i]))
            except Exception as exc:  # one image's failure is that image's
                answers.append(exc)
        return answers

    @staticmethod
    def _prediction(segmentation, output: BrushOutput, version: str, key: int | None) -> dict:
        result, scores = [], []
        for label, mask in segmentation.masks.items():
            if mask.any():  # an empty brush region is of no use to the annotator
                score = segmentation.score(label)
                regions = mask_results(mask, label, output, score)
                if key is not None:  # the same task, version and class: the same ids, so a retry writes the same regions
                    stem = hashlib.sha1(f"{version}|{key}|{label}".encode()).hexdigest()[:10]
                    regions = renumber_regions(regions, lambda n: f"{OWN_ID_PREFIX}p{stem}-{n}")
                result.extend(regions)
                scores.append(score)
        score = float(np.mean(scores)) if scores else 0.0
        return {"result": result, "score": round(score, 4), "model_version": version}


# ---------------------------------------------------------------- what a run is


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to do its part of a run (it travels to Ray workers as is)."""

    url: str
    api_key: str
    project: int
    output: BrushOutput
    labels: tuple[str, ...]
    fetch_settings: Settings  # where images may come from, and their limits
    text_config: TextSegConfig
    refiner_config: RefinerConfig | None = None  # None: text-only masks
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4  # images per model call
    upload_batch: int = 16  # predictions per upload
    overwrite: bool = False
    model_version: str = ""  # known once the model is loaded somewhere; every worker must agree
    threads: int | None = None  # torch threads per worker (CPU workers on Ray)


def load_preannotator(plan: Plan) -> Preannotator:
    """The model, loaded once, behind a text-only segmenter and (with refinement) the refiner."""
    from g4seg_core.method.model import SDModel
    from g4seg_core.method.textseg import TextSegmenter

    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    model = SDModel.from_pretrained(plan.model, device=plan.device, dtype=plan.dtype)
    refiner = None
    if plan.refiner_config is not None:
        from g4seg_core.method.refiner import G4SegRefiner

        refiner = G4SegRefiner(model, plan.refiner_config)  # one loaded model serves both
    return Preannotator(TextSegmenter(model, plan.text_config), refiner)


def to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows {"task", "data", "replaces"} as a batch of columns."""
    return {
        "task": np.array([r["task"] for r in rows], np.int64),
        "data": _strings([r["data"] for r in rows]),
        "replaces": _strings([r["replaces"] for r in rows]),
    }


def batch_rows(batch: dict[str, np.ndarray]) -> Iterator[dict]:
    columns = list(batch)
    for i in range(len(batch["task"])):
        yield {c: batch[c][i] for c in columns}


def _strings(values) -> np.ndarray:
    out = np.empty(len(values), object)
    out[:] = list(values)
    return out


class DownloadStage:
    """Adds each task's image (or the reason it has none) to the batch."""

    def __init__(self, plan: Plan):
        from backend.fetch import ImageFetcher

        self.plan = plan
        self.fetcher = ImageFetcher(plan.fetch_settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["task"])
        images, errors = np.empty(n, object), np.empty(n, object)

        def one(i: int) -> None:
            images[i], errors[i] = np.zeros((0, 0, 3), np.uint8), ""
            try:
                url = json.loads(batch["data"][i]).get(self.plan.output.data_key)
                if url is None:
                    raise FormatError(f"the task has no data.{self.plan.output.data_key} "
                                      "(the image the brush tag labels)")
                images[i] = self.fetcher.fetch(url, int(batch["task"][i]))
            except Exception as exc:
                errors[i] = describe(exc)

        with ThreadPoolExecutor(min(n, DOWNLOADS_AT_ONCE) or 1, thread_name_prefix="g4seg-download") as pool:
            list(pool.map(one, range(n)))
        return {"task": batch["task"], "replaces": batch["replaces"], "image": images, "error": errors}


class PredictStage:
    """Turns each downloaded image into a prediction; the model loads once per worker."""

    def __init__(self, plan: Plan, preannotator: Preannotator | None = None):
        self.plan = plan
        self.preannotator = preannotator or load_preannotator(plan)
        version = self.preannotator.model_version
        if plan.model_version and version != plan.model_version:
            raise SettingError(f"a worker on {socket.gethostname()} makes model version {version!r}, the run "
                               f"{plan.model_version!r}: give every node the same model, --dtype and settings")
        model = self.preannotator.segmenter.model
        device = str(model.device)
        if model.device.type == "cuda" and os.environ.get("CUDA_VISIBLE_DEVICES"):
            device = f"GPU {os.environ['CUDA_VISIBLE_DEVICES']}"  # the machine's numbering (Ray sets it per actor)
        self.worker = f"{socket.gethostname()}:{os.getpid()} ({device})"
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.batches >= 1:
            _kill_hook()
        self.batches += 1
        n = len(batch["task"])
        errors = np.array([str(e) for e in batch["error"]], object)
        predictions = _strings([""] * n)
        ready = [i for i in range(n) if not errors[i]]
        started = time.perf_counter()
        answers = self.preannotator.predict_many([batch["image"][i] for i in ready], self.plan.output,
                                                 list(self.plan.labels), [int(batch["task"][i]) for i in ready])
        seconds = time.perf_counter() - started
        for i, answer in zip(ready, answers):
            if isinstance(answer, Exception):
                if not isinstance(answer, UserError):
                    log.warning("task %s failed", batch["task"][i], exc_info=answer)
                errors[i] = describe(answer)
            else:
                predictions[i] = json.dumps(answer)
        workers = _strings([self.worker if i in ready else "" for i in range(n)])
        share = seconds / len(ready) if ready else 0.0
        return {"task": batch["task"], "replaces": batch["replaces"], "prediction": predictions, "error": errors,
                "worker": workers, "seconds": np.array([share if i in ready else 0.0 for i in range(n)])}


class UploadStage:
    """Uploads a batch's predictions (idempotently) and answers each task's status."""

    def __init__(self, plan: Plan, retries: int = 4, backoff: float = 1.0):
        self.plan = plan
        self.uploader = PredictionUploader(ls_client(plan.url, plan.api_key), plan.project, plan.model_version,
                                           retries=retries, backoff=backoff)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["task"])
        items, empty = [], np.zeros(n, bool)
        for i in range(n):
            if batch["prediction"][i]:
                prediction = json.loads(batch["prediction"][i])
                empty[i] = not prediction["result"]
                items.append((int(batch["task"][i]), prediction, json.loads(batch["replaces"][i])))
        statuses = self.uploader.upload(items)
        status = _strings([statuses.get(int(t), "failed") for t in batch["task"]])
        return {"task": batch["task"], "status": status, "reason": batch["error"], "empty": empty,
                "worker": batch["worker"], "seconds": batch["seconds"]}


def _kill_hook() -> None:
    marker = os.environ.get(KILL_HOOK_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # one worker dies per run
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- Label Studio: listing and uploading


class PredictionUploader:
    """Imports predictions in one request per batch (POST /api/projects/{id}/import/predictions).

    Idempotent per task and model version: before writing it asks which tasks already hold one
    (a retried batch, a re-run, a lost answer that landed); after writing it removes any second one
    that a concurrent writer made (the lowest id stays, so racing writers agree on the survivor).
    """

    def __init__(self, client, project_id: int, model_version: str, retries: int = 4, backoff: float = 1.0):
        self.client, self.project_id, self.model_version = client, project_id, model_version
        self.retries, self.backoff = retries, backoff

    def upload(self, items: list[tuple[int, dict, list[int]]]) -> dict[int, str]:
        """(task, prediction, ids it replaces) -> {task: "uploaded" | "present"}."""
        from label_studio_sdk import PredictionRequest

        status: dict[int, str] = {}
        todo = list(items)
        for attempt in range(self.retries + 1):
            try:
                # First: already there? On a retry: did the request whose answer was lost land?
                landed = self.holding(todo)
                for task, _, _ in todo:
                    if task in landed:
                        status[task] = "uploaded" if attempt else "present"
                todo = [item for item in todo if item[0] not in landed]
                if todo:
                    requests = [PredictionRequest(task=task, **p) for task, p, _ in todo]
                    self.client.projects.import_predictions(self.project_id, request=requests)
                status.update({task: "uploaded" for task, _, _ in todo})
                break
            except Exception as exc:
                if attempt == self.retries or not transient(exc):
                    raise UploadError(f"Label Studio did not take {len(todo)} predictions: {describe(exc)}") from None
                log.warning("uploading %d predictions failed (%s); retrying in %.0f s", len(todo), describe(exc),
                            self.backoff * 2**attempt)
                time.sleep(self.backoff * 2**attempt)
        written = [(task, old) for task, _, old in items if status.get(task) == "uploaded"]
        for _, old in written:
            for pid in old:  # --overwrite: the new prediction is in, the old one goes
                self._delete(pid)
        self._converge([task for task, _ in written], {pid for _, old in written for pid in old})
        return status

    def holding(self, items: list[tuple[int, dict, list[int]]]) -> set[int]:
        """The tasks that hold a prediction of this version (other than the ones they replace)."""
        plain = [task for task, _, old in items if not old]
        found = {task for task, (_, versions) in self.versions(plain).items() if self.model_version in versions}
        for task, _, old in items:
            if old and set(version_prediction_ids(self.client, task, self.model_version)) - set(old):
                found.add(task)
        return found

    def versions(self, tasks: list[int]) -> dict[int, tuple[int, set[str]]]:
        """{task: (number of predictions, their model versions)}, one request per 100 tasks."""
        out = {}
        for start in range(0, len(tasks), 100):
            chunk = tasks[start:start + 100]
            query = json.dumps({"selectedItems": {"all": False, "included": chunk}})
            page = self.client.tasks.list(project=self.project_id, fields="all", query=query, page=1,
                                          page_size=len(chunk), resolve_uri=False,
                                          include="id,total_predictions,predictions_model_versions")
            for task in page.items or []:
                out[int(task.id)] = (int(task.total_predictions or 0), _version_set(task.predictions_model_versions))
        return out

    def _converge(self, tasks: list[int], replaced: set[int]) -> None:
        """Two writers raced on a task: keep its lowest-id prediction of this version, delete the rest."""
        try:
            counts = self.versions(tasks)
            for task, (total, versions) in counts.items():
                if total <= len(versions):
                    continue  # no model version twice on this task
                ours = sorted(set(version_prediction_ids(self.client, task, self.model_version)) - replaced)
                for pid in ours[1:]:
                    log.warning("task %s held %d predictions of this version: deleting %s", task, len(ours), pid)
                    self._delete(pid)
        except Exception as exc:  # the upload itself went through; say so and go on
            log.warning("could not check %d tasks for duplicate predictions: %s", len(tasks), describe(exc))

    def _delete(self, pid: int) -> None:
        try:
            self.client.predictions.delete(pid)
        except Exception as exc:
            if getattr(exc, "status_code", None) != 404:  # gone already: what we wanted
                log.warning("could not delete prediction %s: %s", pid, describe(exc))


def version_prediction_ids(client, task_id: int, model_version: str) -> list[int]:
    """Ids of the task's predictions made with exactly this model version."""
    return [p.id for p in client.predictions.list(task=task_id) if p.model_version == model_version]


def _version_set(text) -> set[str]:
    # Label Studio joins a task's distinct model versions with commas (ours never hold one).
    return {v for v in str(text or "").split(",") if v}


def pending_tasks(client, plan: Plan, progress: bool = True) -> tuple[list[dict], int, int]:
    """(rows to do, tasks in the project, tasks skipped) from one paginated listing.

    A task holding a prediction of this model version is skipped, or with `overwrite` redone, the
    ids of the predictions to replace noted (one more request per such task)."""
    from tqdm import tqdm

    rows, total, skipped, redo = [], 0, 0, []
    listing = client.tasks.list(project=plan.project, fields="all", include="id,data,predictions_model_versions",
                                resolve_uri=False, page_size=100)
    with tqdm(desc="listing tasks", unit="task", disable=not progress, leave=False) as bar:
        for task in listing:
            total += 1
            bar.update(1)
            row = {"task": int(task.id), "data": json.dumps(dict(task.data or {})), "replaces": "[]"}
            if plan.model_version in _version_set(task.predictions_model_versions):
                if not plan.overwrite:
                    skipped += 1
                    continue
                redo.append(row)
            rows.append(row)
    for row in tqdm(redo, desc="noting predictions to replace", unit="task", disable=not progress or not redo,
                    leave=False):
        row["replaces"] = json.dumps(version_prediction_ids(client, row["task"], plan.model_version))
    rows.sort(key=lambda r: r["task"])
    return rows, total, skipped


# ---------------------------------------------------------------- executing the stages


class InProcess:
    """The stages in this process: one model, downloads a batch ahead of it, uploads as batches fill."""

    description = "in-process"

    def __init__(self, preannotator: Preannotator):
        self.preannotator = preannotator

    def model_version(self, plan: Plan) -> str:
        return self.preannotator.model_version

    def run(self, plan: Plan, rows: list[dict]) -> Iterator[dict[str, np.ndarray]]:
        download, predict, upload = DownloadStage(plan), PredictStage(plan, self.preannotator), UploadStage(plan)
        batches = [to_batch(rows[i:i + plan.batch_size]) for i in range(0, len(rows), plan.batch_size)]
        waiting: list[dict[str, np.ndarray]] = []  # predicted, not yet a full upload batch
        with ThreadPoolExecutor(1, thread_name_prefix="g4seg-prefetch") as prefetch:
            ahead = deque(prefetch.submit(download, b) for b in batches[:2])
            following = iter(batches[2:])
            try:
                while ahead:
                    downloaded = ahead.popleft().result()
                    for batch in following:
                        ahead.append(prefetch.submit(download, batch))
                        break
                    waiting.append(predict(downloaded))
                    while sum(len(b["task"]) for b in waiting) >= plan.upload_batch:
                        chunk, waiting = _split(waiting, plan.upload_batch)
                        yield upload(chunk)
            except KeyboardInterrupt:
                for future in ahead:
                    future.cancel()
                if waiting:  # what is computed is worth keeping
                    yield upload(_concat(waiting))
                    waiting = []
                raise
            if waiting:
                yield upload(_concat(waiting))

    def close(self) -> None:
        pass


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _split(batches, size: int):
    whole = _concat(batches)
    head = {k: v[:size] for k, v in whole.items()}
    tail = {k: v[size:] for k, v in whole.items()}
    return head, ([tail] if len(tail["task"]) else [])


# ---------------------------------------------------------------- the run


@dataclass
class WorkerStats:
    images: int = 0
    seconds: float = 0.0  # computing

    @property
    def images_per_hour(self) -> float:
        return 3600.0 * self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Summary:
    executor: str = "in-process"
    total: int = 0  # tasks in the project
    pending: int = 0  # tasks this run set out to do
    done: int = 0  # predictions uploaded
    empty: int = 0  # of those, with no class found (uploaded empty so the task counts as done)
    skipped: int = 0  # already had a prediction of this model version
    failed: list[tuple[int, str]] = field(default_factory=list)  # (task id, reason)
    left: int = 0  # set out to do but not finished (interrupted, or the run stopped)
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def images_per_hour(self) -> float:
        return 3600.0 * self.done / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        lines = [f"done {self.done} (of which {self.empty} with no class found), skipped {self.skipped}, "
                 f"failed {len(self.failed)}, left {self.left}, of {self.total} tasks; {self.executor}; "
                 f"{self.seconds:.1f} s, {self.images_per_hour:.0f} images/hour"]
        for name, stats in sorted(self.workers.items()):
            lines.append(f"worker {name}: {stats.images} images, {stats.seconds:.1f} s computing, "
                         f"{stats.images_per_hour:.0f} images/hour")
        lines += [f"failed: task {task_id}: {reason}" for task_id, reason in sorted(self.failed)]
        if self.left:
            lines.append(f"left: {self.left} tasks not finished; run again to do them")
        if self.interrupted:
            lines.append("interrupted: what was uploaded stays; run again to continue")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return lines


def preannotate_project(client, plan: Plan, executor, progress: bool = True) -> Summary:
    """Pre-annotate the project's tasks with `executor` (`InProcess`, or `preannotation_ray.OnRay`).

    One task's failure never stops the run. When Label Studio stops taking uploads, the run stops
    and the summary says why; what was uploaded before stays.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    summary = Summary(executor=executor.description)
    rows, summary.total, summary.skipped = pending_tasks(client, plan, progress)
    summary.pending = len(rows)
    seen: set[int] = set()
    bar = tqdm(total=len(rows), desc="pre-annotating", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if rows:
            for batch in executor.run(plan, rows):
                for row in batch_rows(batch):
                    task = int(row["task"])
                    if task in seen:  # a retried batch delivered it again
                        continue
                    seen.add(task)
                    _tally(summary, task, row)
                    bar.update(1)
                bar.set_postfix(uploaded=summary.done, failed=len(summary.failed), refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
    except Exception as exc:
        stop = _cause(exc, UploadError)
        if stop is None:
            raise
        summary.stopped = str(stop)
    finally:
        bar.close()
        summary.left = len(rows) - len(seen)
        summary.seconds = time.perf_counter() - started
    return summary


def _tally(summary: Summary, task: int, row: dict) -> None:
    status = str(row["status"])
    if status == "uploaded":
        summary.done += 1
        summary.empty += bool(row["empty"])
    elif status == "present":
        summary.skipped += 1
    else:
        summary.failed.append((task, str(row["reason"]) or "no prediction"))
    if row["worker"]:
        stats = summary.workers.setdefault(str(row["worker"]), WorkerStats())
        stats.images += 1
        stats.seconds += float(row["seconds"])


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    """`exc` or what it wraps (Ray wraps a worker's exception) when of `kind`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        wrapped = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the worker's own exception
        if isinstance(wrapped, BaseException):
            exc = wrapped  # (whose message is one line, not the worker's traceback)
            continue
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def transient(exc: BaseException) -> bool:
    """Worth retrying: connection trouble, timeouts, 429 and 5xx answers."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    text = f"HTTP {status}: {body}" if isinstance(status, int) else (str(exc) or type(exc).__name__)
    if not isinstance(exc, (UserError, UploadError)) and not isinstance(status, int):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())[:300]
