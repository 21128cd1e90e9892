#!/usr/bin/env bash
# Build and deploy the g4seg CVAT interactor with nuctl, next to a CVAT started with its
# serverless compose file (docs/cvat.md).
#
#   cvat/deploy.sh cpu|gpu [more nuctl deploy flags, e.g. --volume /srv/sd21-base:/models/sd21-base]
#   cvat/deploy.sh --stage-only DIR cpu|gpu    # only assemble the folder nuclio builds from
#
# nuclio copies the whole --path folder into the image, so the function is built from a staged
# folder holding only what it needs: main.py, function.yaml and the g4seg sources under g4seg/
# (never the repository itself, with its virtual environment and git history).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

usage() { echo "usage: $0 [--stage-only DIR] cpu|gpu [nuctl deploy flags...]" >&2; exit 2; }

stage_dir=""
if [[ "${1:-}" == "--stage-only" ]]; then
    [[ $# -ge 2 ]] || usage
    stage_dir="$2"
    shift 2
fi
case "${1:-}" in
    cpu) config="$here/function.yaml" ;;
    gpu) config="$here/function-gpu.yaml" ;;
    *) usage ;;
esac
shift

stage() {
    local dest="$1"
    mkdir -p "$dest/g4seg"
    cp "$here/main.py" "$dest/main.py"
    cp "$config" "$dest/function.yaml"
    cp "$root/pyproject.toml" "$root/requirements.txt" "$dest/g4seg/"
    if [[ -f "$root/README.md" ]]; then cp "$root/README.md" "$dest/g4seg/"; fi
    tar -C "$root" --exclude='__pycache__' --exclude='*.pyc' -cf - g4seg_core | tar -C "$dest/g4seg" -xf -
}

if [[ -n "$stage_dir" ]]; then
    stage "$stage_dir"
    exit 0
fi

command -v nuctl >/dev/null || { echo "nuctl not found: install the nuctl that matches CVAT's nuclio (docs/cvat.md)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage "$work"

nuctl get project cvat --platform local >/dev/null 2>&1 || nuctl create project cvat --platform local
nuctl deploy --project-name cvat --path "$work" --file "$work/function.yaml" --platform local \
    --platform-config "{\"attributes\": {\"network\": \"${CVAT_NETWORK:-cvat_cvat}\"}}" \
    "$@"
nuctl get function --platform local
