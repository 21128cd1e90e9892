"""The pre-annotation pipeline on Ray Data: the stages of `backend.preannotation` in actor pools.

    ray.data.from_items(tasks)
      .map_batches(DownloadStage, ...)  actors that reserve no CPU (they wait on the network)
      .map_batches(PredictStage, ...)   `actors` actors, each with its model and `gpus_per_actor` GPUs
      .map_batches(UploadStage, ...)    actors that reserve no CPU
      .iter_batches()                   back here: the progress bar and the summary

Ray Data restarts an actor that dies and retries the batches it held (elsewhere when its node is
gone); the upload stage's check-before-write makes a retried task's prediction land once.
Ray is an optional extra: `pip install 'g4seg[ray]'`.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from backend.preannotation import DownloadStage, Plan, PredictStage, UploadStage, load_preannotator
from g4seg_core.errors import UserError

log = logging.getLogger(__name__)

# How long to wait for the cluster to give the first worker its resources and load the model
# (an autoscaling cluster may have to start a GPU node first).
FIRST_WORKER_TIMEOUT = 1800


def _model_version(plan: Plan) -> str:
    """Loads the model where an actor would run and names its version (the dtype `auto` resolves there)."""
    return load_preannotator(plan).model_version


class OnRay:
    """Runs the stages on a Ray cluster: `address` "auto" (the cluster this machine belongs to, else a
    Ray started here for this run) or a cluster's address."""

    def __init__(self, address: str = "auto", actors: int | None = None, gpus_per_actor: float | None = None,
                 cpus_per_actor: float | None = None):
        self.address = address
        self.actors, self.gpus_per_actor, self.cpus_per_actor = actors, gpus_per_actor, cpus_per_actor
        self.started = False  # a Ray this run started (stopped at the end)
        self.connected = False
        self.where = ""

    def check(self, device: str) -> None:
        """What can be told wrong before anything slow: Ray missing, settings that contradict."""
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise UserError("--ray needs Ray Data: pip install 'g4seg[ray]'") from None
        device = (device or "auto").lower()
        if device.startswith("cuda:"):
            raise UserError(f"with --ray each actor uses the GPUs Ray gives it: --device auto or cuda, not {device}")
        if device == "cpu" and self.gpus_per_actor:
            raise UserError("--device cpu with --gpus-per-actor: give one or the other")
        if device == "cuda" and self.gpus_per_actor == 0:
            raise UserError("--device cuda with --gpus-per-actor 0: the actors would have no GPU")

    def connect(self, plan: Plan) -> Plan:
        """Joins or starts Ray, settles the actors' resources, and answers the plan with the threads set."""
        self.check(plan.device)
        import ray

        if ray.is_initialized():
            self.where = "the Ray this process already uses"
        else:
            self.where = self._init(ray)
            self.connected = True  # close() disconnects (and stops a Ray started here)

        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        device = (plan.device or "auto").lower()
        if self.gpus_per_actor is None:
            self.gpus_per_actor = 1.0 if (gpus > 0 and device != "cpu") or device == "cuda" else 0.0
        if self.actors is None:
            self.actors = max(1, int(gpus // self.gpus_per_actor)) if self.gpus_per_actor else 1
        if self.cpus_per_actor is None:
            cpus = float(resources.get("CPU", 1))
            self.cpus_per_actor = 1.0 if self.gpus_per_actor else max(1.0, float(int(cpus // self.actors)))
        if self.gpus_per_actor and gpus < self.gpus_per_actor * self.actors:
            log.warning("the Ray cluster has %g GPUs now; %d actors need %g: they wait for more (an autoscaler "
                        "may add nodes)", gpus, self.actors, self.gpus_per_actor * self.actors)
        threads = None if self.gpus_per_actor else max(1, int(self.cpus_per_actor))
        from dataclasses import replace

        return replace(plan, threads=threads)

    def _init(self, ray) -> str:
        quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
        if self.address != "auto":
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
            return f"the Ray cluster at {self.address}"
        try:
            ray.init(address="auto", **quiet)  # RAY_ADDRESS, or a `ray start` on this machine
            return "the Ray cluster this machine belongs to"
        except ConnectionError:
            # None running here: a private one for this run, without the dashboard.
            ray.init(address="local", include_dashboard=False, **quiet)
            self.started = True
            return "a local Ray started for this run"

    @property
    def description(self) -> str:
        gpus = f"{self.gpus_per_actor:g} GPU + " if self.gpus_per_actor else ""
        return f"Ray Data on {self.where}, {self.actors} actors x ({gpus}{self.cpus_per_actor:g} CPU)"

    @property
    def download_workers(self) -> int:
        return self.actors  # each fetches DOWNLOADS_AT_ONCE images at a time: ahead of its model actor

    @property
    def upload_workers(self) -> int:
        return max(1, self.actors // 4)

    def model_version(self, plan: Plan) -> str:
        """The version the actors will make, from a model loaded where an actor would run."""
        import ray
        from ray.exceptions import GetTimeoutError

        # max_calls=1: the worker exits after it, handing its GPU memory back before the actors start.
        probe = ray.remote(num_cpus=self.cpus_per_actor, num_gpus=self.gpus_per_actor, max_calls=1,
                           max_retries=1)(_model_version)
        try:
            return ray.get(probe.remote(plan), timeout=FIRST_WORKER_TIMEOUT)
        except GetTimeoutError:
            raise UserError(f"no Ray worker with {self.gpus_per_actor:g} GPU and {self.cpus_per_actor:g} CPU loaded "
                            f"the model within {FIRST_WORKER_TIMEOUT} s: is the cluster that big?") from None
        except Exception as exc:
            raise _user_error_in(exc) or exc

    def run(self, plan: Plan, rows: list[dict]) -> Iterator[dict[str, np.ndarray]]:
        import ray.data
        from ray.data import ActorPoolStrategy

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts every task, whatever the executor
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # One block per model batch, so that idle actors take the next one (load balancing); no more
        # actors than batches (each would load a model for nothing).
        blocks = max(1, math.ceil(len(rows) / plan.batch_size))
        actors = min(self.actors, blocks)
        network = dict(num_cpus=0)  # downloads and uploads wait on the network
        gpus = dict(num_gpus=self.gpus_per_actor) if self.gpus_per_actor else {}
        dataset = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(DownloadStage, fn_constructor_args=(plan,), batch_size=plan.batch_size,
                         compute=ActorPoolStrategy(size=min(self.download_workers, blocks)), **network)
            .map_batches(PredictStage, fn_constructor_args=(plan,), batch_size=plan.batch_size,
                         compute=ActorPoolStrategy(size=actors), num_cpus=self.cpus_per_actor, **gpus)
            .map_batches(UploadStage, fn_constructor_args=(plan,), batch_size=plan.upload_batch,
                         compute=ActorPoolStrategy(size=self.upload_workers), **network)
        )
        try:
            yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
        except Exception as exc:
            raise _user_error_in(exc) or exc

    def close(self) -> None:
        if self.connected:
            import ray

            ray.shutdown()  # stops the Ray this run started; leaves a cluster's
            self.connected = False


def _user_error_in(exc: BaseException) -> UserError | None:
    """The user's mistake (a model not found on a node, ...) that a worker raised, if that is what it was."""
    from backend.preannotation import _cause

    return _cause(exc, UserError)
