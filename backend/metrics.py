"""The backend's Prometheus metrics, served by /metrics in the text format operators scrape.

Each app gets its own `Metrics` (tests build many apps in one process), whose `registry` also
carries prometheus_client's default registry: the process metrics (memory, CPU, open files) and
any metric another part of the backend defines at module level with the default registry (the
write-back queue's gauges) are served by the same /metrics without being named here.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _DefaultRegistry:
    """Forwards the default registry's collectors (registered later ones included) into an app's."""

    def describe(self):  # names are not checked against the app's: the default registry checks its own
        return []

    def collect(self):
        yield from REGISTRY.collect()


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_DefaultRegistry())
        r = self.registry
        self.requests = Counter("g4seg_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.refine_seconds = Histogram("g4seg_refine_seconds", "engine time per refinement",
                                        buckets=_SECONDS, registry=r)
        self.slot_wait_seconds = Histogram("g4seg_slot_wait_seconds",
                                           "time a request waited for a refinement slot (taken or not)",
                                           buckets=(0, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.busy = Counter("g4seg_busy_rejections", "requests answered 503 because no refinement slot "
                            "freed within G4SEG_SLOT_WAIT", registry=r)
        self.cache_hits = Counter("g4seg_result_cache_hits", "refinements answered from the result cache",
                                  registry=r)
        self.task_errors = Counter("g4seg_task_errors", "tasks of a batch answered with no prediction because their refinement failed",
                                   registry=r)
        self.downloads = Counter("g4seg_image_downloads", "image downloads from Label Studio by outcome "
                                 "(ok, timeout, unreachable, http_error, too_large, refused)", ["outcome"], registry=r)
        self.download_seconds = Histogram("g4seg_image_download_seconds", "time per image download",
                                          buckets=_SECONDS, registry=r)
        self.writebacks = Counter("g4seg_writebacks", "webhook write-backs by outcome", ["outcome"], registry=r)
        self.interactive = Counter("g4seg_interactive", "interactive requests by what they became: saved_shapes (a "
                                   "click or box refined a rough shape saved on the task), notes (answered with a "
                                   "note saying why no mask)", ["kind"], registry=r)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read when /metrics is scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
