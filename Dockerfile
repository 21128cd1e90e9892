# g4seg Label Studio ML backend, GPU image (CUDA runtime). CPU image: Dockerfile.cpu.
#   docker build -t g4seg-backend:gpu .
#   docker run --gpus all -p 9090:9090 -v g4seg-models:/models \
#     -e LABEL_STUDIO_URL=http://label-studio:8080 -e LABEL_STUDIO_API_KEY=... g4seg-backend:gpu
# Settings: docs/operators.md. Weights load once per worker at start, from G4SEG_MODEL
# (a hub id, cached under /models, or a mounted diffusers folder); safetensors only.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# PyPI's Linux torch wheel is the CUDA build (it brings its own CUDA libraries); pinned as in
# requirements.txt. The NVIDIA container toolkit provides the driver at run time.
RUN pip install torch==2.13.0

WORKDIR /app
COPY requirements.txt pyproject.toml README.md label_config.xml ./
COPY g4seg_core g4seg_core
COPY backend backend
RUN pip install -c requirements.txt ".[backend]" \
 && useradd --create-home --uid 1000 g4seg \
 && mkdir -p /models && chown g4seg /models

USER g4seg
ENV HF_HOME=/models/huggingface \
    G4SEG_DATA_DIR=/models/g4seg \
    G4SEG_ENGINE=auto \
    G4SEG_DEVICE=auto \
    PORT=9090
VOLUME /models
EXPOSE 9090
# Loading SD weights takes a while (and downloads them on first start): /health answers 503 until then.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"
CMD ["g4seg", "serve"]
