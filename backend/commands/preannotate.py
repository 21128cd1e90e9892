"""`g4seg preannotate --url URL --api-key KEY --project ID [--method iseg] [--refine] [--shard i/n] ...`.

Exit status: 0 when every task of the shard has its prediction (done now or skipped as done
before); 1 when some task failed (its image could not be read, ...) or the run stopped early
(Label Studio refused the uploads): the summary names them and a second run retries only those;
2 for bad arguments or a project that cannot be used; 130 when interrupted.
"""
from __future__ import annotations

import os

from g4seg_core.errors import UserError

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
    run_group.add_argument("--batch-size", type=int, default=16, help="predictions per upload (default 16)")
    run_group.add_argument("--shard", default="0/1", metavar="i/n",
                           help="do only the tasks whose id %% n == i, so n processes or machines share a project "
                                "(default 0/1: all)")
    run_group.add_argument("--overwrite", action="store_true",
                           help="redo tasks that already hold a prediction of this model version (the old one is replaced)")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="hub id or local diffusers folder (default: $G4SEG_MODEL or stabilityai/stable-diffusion-2-1-base)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto)")


def run(args) -> int:
    from urllib.parse import urlparse

    from backend.ls_format import FormatError, parse_label_config
    from backend.preannotation import Shard
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
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    shard = Shard.parse(args.shard)
    text_config = config_for(args.method, parse_settings(args.setting, "--setting"))
    refine_settings = parse_settings(args.refine_setting, "--refine-setting")
    if refine_settings and not args.refine:
        raise UserError("--refine-setting needs --refine")
    refiner_config = RefinerConfig.from_strings(refine_settings) if args.refine else None
    labels = parse_labels(args.labels) if args.labels else None

    client = _client(args.url.rstrip("/"), args.api_key)
    project = _project(client, args.project)
    try:
        config = parse_label_config(project.label_config or "")
        output = _output(config, args.from_name)
        for label in labels or []:
            output.check_label(label)
    except FormatError as exc:
        raise UserError(f"project {args.project}: {exc}") from None

    from backend.fetch import ImageFetcher
    from backend.preannotation import Preannotator, preannotate_project
    from backend.settings import Settings
    from g4seg_core.method.model import SDModel
    from g4seg_core.method.textseg import TextSegmenter

    model = SDModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    refiner = None
    if args.refine:
        from g4seg_core.method.refiner import G4SegRefiner

        refiner = G4SegRefiner(model, refiner_config)  # one loaded model serves both
    preannotator = Preannotator(TextSegmenter(model, text_config), refiner)
    # Images come only from this Label Studio (or its local-files root, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).
    settings = Settings.from_env(label_studio_url=args.url.rstrip("/"), label_studio_api_key=args.api_key,
                                 image_cache_size=0)
    fetcher = ImageFetcher(settings)
    print(f"project {args.project}, shard {shard}, labels {', '.join(labels or output.labels)}; "
          f"model version: {preannotator.model_version}", flush=True)
    try:
        summary = preannotate_project(client, args.project, preannotator, fetcher.fetch, output, labels=labels,
                                      batch_size=args.batch_size, shard=shard, overwrite=args.overwrite,
                                      progress=not args.quiet)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status is not None or _is_connection_error(exc):
            raise UserError(f"Label Studio at {args.url}: {_one_line(exc)} (uploads made so far stay)") from None
        raise
    for line in summary.lines():
        print(line, flush=True)
    if summary.interrupted:
        return 130
    return 1 if summary.failed or summary.stopped or summary.not_uploaded else 0


def _client(url: str, api_key: str):
    from label_studio_sdk import LabelStudio

    # The uploader spaces its own retries; the client's would stack on top of them.
    return LabelStudio(base_url=url, api_key=api_key, timeout=120, max_retries=0)


def _project(client, project_id: int):

    try:
        return client.projects.get(project_id)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            raise UserError(f"Label Studio refused the API key ({status})") from None
        if status == 404:
            raise UserError(f"project {project_id} not found") from None
        if status is not None or _is_connection_error(exc):
            raise UserError(f"cannot read project {project_id}: {_one_line(exc)}") from None
        raise


def _output(config, from_name: str | None):
    from backend.ls_format import FormatError

    if from_name is None:
        return config.brushes[0]
    for brush in config.brushes:
        if brush.from_name == from_name:
            return brush
    names = ", ".join(b.from_name for b in config.brushes)
    raise FormatError(f"no BrushLabels tag named {from_name!r} on an image (there is {names})")


def _is_connection_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def _one_line(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    text = f"HTTP {status}: {getattr(exc, 'body', '')}" if status is not None else str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
