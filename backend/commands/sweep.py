"""`g4seg sweep --project ID`: recovery for write-backs that never happened.

Lists the project's tasks and queues a write-back job (the same job a webhook queues, in the same
durable queue) for every task whose latest annotation has rough shapes and no prediction of the
serving model version for those shapes. The jobs run in `g4seg serve` (it holds the model); the
model version is the one the server wrote into the queue's store when its engine loaded, so the
sweep needs the server's G4SEG_DATA_DIR or G4SEG_QUEUE_URL. Running it twice queues nothing new.

Exit status: 0 when it went through the project; 2 for bad arguments, a project that cannot be read,
or a queue that cannot be reached (checked before anything is queued).
"""
from __future__ import annotations

import os

from g4seg_core.errors import UserError, one_line

HELP = ("queue a write-back for every task whose latest annotation has rough shapes and no prediction of the "
        "serving model version (recovery for missed webhooks; the server runs them)")


def add_arguments(parser) -> None:
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL"),
                        help="Label Studio address (default $LABEL_STUDIO_URL)")
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                        help="API token (default $LABEL_STUDIO_API_KEY)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be queued, queue nothing")


def run(args) -> int:
    from urllib.parse import urlparse

    from backend.ls_api import is_label_studio_error, ls_client, read_project
    from backend.jobs import QueueFull, open_queue
    from backend.ls_format import FormatError, parse_label_config
    from backend.settings import Settings

    if args.project < 1:
        raise UserError(f"--project must be a positive project id, got {args.project}")
    if not args.url:
        raise UserError("give --url (or set LABEL_STUDIO_URL)")
    if not args.api_key:
        raise UserError("give --api-key (or set LABEL_STUDIO_API_KEY)")
    parsed = urlparse(args.url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--url must start with http:// or https:// and name a host, got {args.url!r}")
    settings = Settings.from_env(label_studio_url=args.url.rstrip("/"), label_studio_api_key=args.api_key)
    queue = open_queue(settings)
    version = queue.model_version()
    if version is None:
        raise UserError(f"no `g4seg serve` has loaded its engine with the job queue at {queue.location} yet: "
                        "start the server first (same G4SEG_DATA_DIR or G4SEG_QUEUE_URL); the sweep's jobs run in it")
    client = ls_client(settings.label_studio_url, args.api_key)
    project = read_project(client, args.project)
    try:
        config = parse_label_config(project.label_config or "")
    except FormatError as exc:
        raise UserError(f"project {args.project}: {exc}") from None
    config_key = None if args.dry_run else queue.put_config(project.label_config)
    print(f"project {args.project}: sweeping for model version {version}", flush=True)
    try:
        counts = sweep(client, queue, args.project, config, config_key, version, dry_run=args.dry_run)
    except QueueFull as exc:
        raise UserError(f"{exc} (the jobs queued so far stay)") from None
    except Exception as exc:
        if is_label_studio_error(exc):
            raise UserError(f"Label Studio at {settings.label_studio_url}: {one_line(exc)} "
                            "(the jobs queued so far stay)") from None
        raise
    verb = "would queue" if args.dry_run else "queued"
    print(f"{verb} {counts['queued']}, already waiting {counts['waiting']}, done already {counts['done']}, "
          f"without rough shapes {counts['no_shapes']}, of {counts['tasks']} tasks", flush=True)
    return 0


def sweep(client, queue, project_id: int, config, config_key: str | None, version: str, dry_run: bool = False) -> dict:
    """Queue the missing write-backs of a project; counts of what was found."""
    from backend.ls_format import FormatError, items_digest, rough_items, writeback_marker
    from backend.service import latest_annotation
    from backend.writeback import writeback_job

    counts = {"tasks": 0, "queued": 0, "waiting": 0, "done": 0, "no_shapes": 0}
    data_keys = {b.data_key for b in config.brushes}
    for task in client.tasks.list(project=project_id, fields="all", resolve_uri=False, page_size=100):
        counts["tasks"] += 1
        annotations = [_plain(a) for a in (task.annotations or [])]
        annotation = latest_annotation({"annotations": annotations})
        try:
            items = rough_items(annotation.get("result")) if annotation else []
        except FormatError:
            items = []
        if not items:
            counts["no_shapes"] += 1
            continue
        marker = writeback_marker(annotation["id"], items_digest(items))
        predictions = [_plain(p) for p in (task.predictions or [])]
        if any(p.get("model_version") == version and
               any(str(r.get("id", "")).startswith(marker) for r in (p.get("result") or []))
               for p in predictions):
            counts["done"] += 1
            continue
        job = writeback_job(project_id, {"id": int(task.id), "data": dict(task.data or {})}, annotation["id"],
                            items, config_key or "", data_keys)
        if dry_run:
            print(f"task {task.id}, annotation {annotation['id']}: would queue {job['id']}", flush=True)
            counts["queued"] += 1
            continue
        status = queue.submit(job)
        counts["queued" if status == "queued" else "waiting"] += 1
    return counts


def _plain(item) -> dict:
    """The SDK gives annotations and predictions as models or dicts, depending on the endpoint."""
    if hasattr(item, "model_dump"):
        return item.model_dump()
    return item if isinstance(item, dict) else {}
