"""`g4seg preannotate --url URL --api-key KEY --project ID [--method iseg] [--refine] [--ray auto|ADDRESS] ...`.

One pipeline (backend/preannotation.py): in this process by default, or on Ray Data with `--ray`
(an actor per GPU). Exit status: 0 when every task has its prediction (done now or skipped as
done before); 1 when some task failed (its image could not be read, ...) or the run stopped early
(Label Studio refused the uploads): the summary names them and a second run retries only those;
2 for bad arguments or a project that cannot be used; 130 when interrupted.
"""
from __future__ import annotations

import os

from g4seg_core.errors import UserError, one_line

HELP = "pre-annotate a Label Studio project from class names: text-only masks (optionally refined by G4Seg) uploaded as predictions"


def add_arguments(parser) -> None:
    ls = parser.add_argument_group("Label Studio")
    ls.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL"),
                    help="Label Studio address, e.g. http://localhost:8080 (default $LABEL_STUDIO_URL)")
    ls.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                    help="API token (default $LABEL_STUDIO_API_KEY; the variable keeps it out of shell history)")
    ls.add_argument("--project", type=int, required=True, help="project id")
    ls.add_argument("--from-name", help="the BrushLabels tag to fill (default: the config's first one on an image)")
    what = parser.add_argument_group("what to predict")
    what.add_argument("--method", default="iseg", choices=("iseg", "diffsegmenter"), help="text-only method (default iseg)")
    what.add_argument("--refine", action="store_true", help="refine each text-only mask with G4Seg (same loaded model)")
    what.add_argument("--labels", help="comma-separated labels to look for (default: all labels of the brush tag)")
    what.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                      help="a text-only setting, e.g. gamma=1.6 or working_size=512 (repeatable)")
    what.add_argument("--refine-setting", action="append", default=[], metavar="KEY=VALUE",
                      help="a G4Seg refiner setting with --refine, e.g. iterations=3 (repeatable)")
    run_group = parser.add_argument_group("the run")
    run_group.add_argument("--batch-size", type=int, default=4,
                           help="images per model call, per worker (default 4; more fills a large GPU better)")
    run_group.add_argument("--upload-batch", type=int, default=16, help="predictions per upload request (default 16)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="redo tasks that already hold a prediction of this model version (the old one is replaced)")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("Ray (pip install 'g4seg[ray]'): several GPUs or machines")
    ray.add_argument("--ray", metavar="auto|ADDRESS",
                     help="run the pipeline on Ray Data: auto = the Ray cluster this machine belongs to ($RAY_ADDRESS "
                          "or `ray start` here), else a Ray started for this run; or a cluster's address "
                          "(e.g. 10.0.0.5:6379). Default: in this process, no Ray")
    ray.add_argument("--actors", type=int, help="model workers (default: one per GPU in the cluster; 1 without GPUs)")
    ray.add_argument("--gpus-per-actor", type=float,
                     help="GPUs each actor reserves (default 1 when the cluster has GPUs, else 0; 0.5 puts two on a GPU)")
    ray.add_argument("--cpus-per-actor", type=float,
                     help="CPUs each actor reserves (default 1 with a GPU; without, the cluster's CPUs shared out)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="hub id or local diffusers folder (default: $G4SEG_MODEL or stabilityai/stable-diffusion-2-1-base); "
                                       "with --ray, every node must find it")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto; with --ray: auto, cpu or cuda)")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")


def run(args) -> int:
    from dataclasses import replace
    from urllib.parse import urlparse

    from backend.ls_format import FormatError, parse_label_config
    from backend.settings import Settings
    from g4seg_core.cli.common import parse_labels, parse_settings
    from g4seg_core.method.config import RefinerConfig
    from g4seg_core.method.textseg import config_for

    # Everything the user typed is checked before the model loads.
    if not args.url:
        raise UserError("give --url (or set LABEL_STUDIO_URL)")
    parsed = urlparse(args.url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"--url must start with http:// or https:// and name a host, got {args.url!r}")
    if not args.api_key:
        raise UserError("give --api-key (or set LABEL_STUDIO_API_KEY)")
    for option, value in (("--batch-size", args.batch_size), ("--upload-batch", args.upload_batch),
                          ("--actors", args.actors)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")
    for option, value in (("--gpus-per-actor", args.gpus_per_actor), ("--cpus-per-actor", args.cpus_per_actor)):
        if value is not None and value < 0:
            raise UserError(f"{option} must be 0 or more, got {value:g}")
    executor = None
    if args.ray:
        from backend.preannotation_ray import OnRay

        executor = OnRay(args.ray, args.actors, args.gpus_per_actor, args.cpus_per_actor)
        executor.check(args.device)
    else:
        given = [o for o, v in (("--actors", args.actors), ("--gpus-per-actor", args.gpus_per_actor),
                                ("--cpus-per-actor", args.cpus_per_actor)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} need --ray (without it the run is one worker in this process)")
    text_config = config_for(args.method, parse_settings(args.setting, "--setting"))
    refine_settings = parse_settings(args.refine_setting, "--refine-setting")
    if refine_settings and not args.refine:
        raise UserError("--refine-setting needs --refine")
    refiner_config = RefinerConfig.from_strings(refine_settings) if args.refine else None
    labels = parse_labels(args.labels) if args.labels else None

    url = args.url.rstrip("/")
    from backend.ls_api import is_label_studio_error, ls_client, read_project
    from backend.preannotation import InProcess, Plan, load_preannotator, preannotate_project

    client = ls_client(url, args.api_key)
    project = read_project(client, args.project)
    try:
        config = parse_label_config(project.label_config or "")
        output = _output(config, args.from_name)
        for label in labels or []:
            output.check_label(label)
    except FormatError as exc:
        raise UserError(f"project {args.project}: {exc}") from None

    # Images come only from this Label Studio (or its local-files root, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).
    fetch_settings = Settings.from_env(label_studio_url=url, label_studio_api_key=args.api_key, image_cache_size=0)
    plan = Plan(url=url, api_key=args.api_key, project=args.project, output=output,
                labels=tuple(labels or output.labels), fetch_settings=fetch_settings, text_config=text_config,
                refiner_config=refiner_config, model=args.model, device=args.device, dtype=args.dtype,
                batch_size=args.batch_size, upload_batch=args.upload_batch, overwrite=args.overwrite)
    try:
        if executor is None:
            executor = InProcess(load_preannotator(plan))
        else:
            plan = executor.connect(plan)
        plan = replace(plan, model_version=executor.model_version(plan))
        print(f"project {args.project}, labels {', '.join(plan.labels)}; model version: {plan.model_version}; "
              f"{executor.description}", flush=True)
        summary = preannotate_project(client, plan, executor, progress=not args.quiet)
    except Exception as exc:
        if is_label_studio_error(exc):
            raise UserError(f"Label Studio at {args.url}: {one_line(exc)} (uploads made so far stay)") from None
        raise
    finally:
        if executor is not None:
            executor.close()
    for line in summary.lines():
        print(line, flush=True)
    if summary.interrupted:
        return 130
    return 1 if summary.failed or summary.stopped or summary.left else 0


def _output(config, from_name: str | None):
    from backend.ls_format import FormatError

    if from_name is None:
        return config.brushes[0]
    for brush in config.brushes:
        if brush.from_name == from_name:
            return brush
    names = ", ".join(b.from_name for b in config.brushes)
    raise FormatError(f"no BrushLabels tag named {from_name!r} on an image (there is {names})")
