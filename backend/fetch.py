"""Task images, fetched only from the configured Label Studio or its local-files root.

label_studio_sdk's `get_local_path` knows every URL form a task can hold (uploads, the storage
proxy, local files, cloud URIs through Label Studio's presign endpoint) and takes two hooks that
constrain it: an HTTP session (ours refuses any host but LABEL_STUDIO_URL's, redirects included,
and caps the download size) and a local-files resolver (ours keeps paths inside the configured
root, symbolic links resolved).
"""
from __future__ import annotations

import io
import logging
import posixpath
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
    get_local_path,
    http_session,
    local_files_resolver,
)
from PIL import Image

from backend.settings import Settings
from g4seg_core.cache import LRUCache
from g4seg_core.images import ImageError, decode_image

log = logging.getLogger(__name__)

CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
# Every image request gives up: (seconds to connect, seconds to wait for each piece of the answer),
# and a whole download within DOWNLOAD_DEADLINE seconds. label_studio_sdk's downloader passes no
# timeout of its own, so the session sets these.
DOWNLOAD_TIMEOUT = (10.0, 60.0)
DOWNLOAD_DEADLINE = 300.0


class ImageFetchError(ImageError):
    """The image could not be fetched (see the subclasses for why)."""


class ImageAccessDenied(ImageFetchError):
    """The task names an image outside the configured Label Studio or local-files root."""


class ImageTooLarge(ImageFetchError):
    """The image is over the byte or pixel limit."""


class ImageDownloadError(ImageFetchError):
    """Label Studio did not hand the image over (down, 404, no credentials)."""


def origin(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme.lower(), f"{host}:{port}"


class _LabelStudioOnlySession(requests.Session):
    """Sends requests to one origin only (every redirect hop is checked) and caps body size."""

    def __init__(self, allowed_url: str, max_bytes: int, timeout=DOWNLOAD_TIMEOUT, deadline=DOWNLOAD_DEADLINE):
        super().__init__()
        self.timeout, self.deadline = timeout, deadline
        self.allowed = origin(allowed_url)
        self.allowed_url = allowed_url
        self.max_bytes = max_bytes
        self.max_redirects = 5
        self.refusal: ImageFetchError | None = None

    def send(self, request, **kwargs):
        try:
            return self._checked_send(request, **kwargs)
        except ImageFetchError as exc:
            # The SDK's upload fallback swallows errors from its second try; keep ours to re-raise.
            self.refusal = exc
            raise

    def _checked_send(self, request, **kwargs):
        if origin(request.url) != self.allowed:
            raise ImageAccessDenied(
                f"refusing to fetch an image from {urlparse(request.url).netloc or request.url!r}: "
                f"images come only from Label Studio at {self.allowed_url}"
            )
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        started = time.monotonic()
        response = super().send(request, **kwargs)
        if response.is_redirect:
            return response
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise ImageTooLarge(f"the image is {int(declared)} bytes, over the limit of {self.max_bytes}")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body += chunk
            if time.monotonic() - started > self.deadline:
                response.close()
                raise ImageDownloadError(f"the image took over {self.deadline:g} s to download")
            if len(body) > self.max_bytes:
                response.close()
                raise ImageTooLarge(f"the image is over the limit of {self.max_bytes} bytes")
        response._content = bytes(body)  # read under the cap; requests then serves .content from here
        return response


class ImageFetcher:
    """Downloads and decodes task images under the backend's rules; keeps the last few decoded."""

    def __init__(self, settings: Settings, timeout: tuple[float, float] = DOWNLOAD_TIMEOUT,
                 deadline: float = DOWNLOAD_DEADLINE):
        self.settings = settings
        self.timeout, self.deadline = timeout, deadline
        self._cache = LRUCache(settings.image_cache_size)

    def fetch(self, url, task_id: int | None = None) -> np.ndarray:
        if not isinstance(url, str) or not url.strip():
            raise ImageAccessDenied("the task has no image URL")
        url = url.strip()
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        data = self._download(url, task_id)
        image = self.decode(data)
        self._cache.put(url, image)
        return image

    def decode(self, data: bytes) -> np.ndarray:
        limit = self.settings.max_image_pixels
        try:
            with Image.open(io.BytesIO(data)) as probe:  # the header alone: refuse before decoding
                width, height = probe.size
        except Exception:
            width = height = 0  # decode_image below gives the reason
        if width * height > limit:
            raise ImageTooLarge(f"the image is {width}x{height}, over the limit of {limit} pixels")
        return decode_image(data, limit)

    def _download(self, url: str, task_id: int | None) -> bytes:
        ls_url = self.settings.label_studio_url
        root = self.settings.local_files_root
        is_local_files = url.startswith("/data/local-files")
        if url.startswith(("http://", "https://")):
            if not ls_url or origin(url) != origin(ls_url):
                raise ImageAccessDenied(
                    f"refusing to fetch {url!r}: images come only from the configured Label Studio "
                    f"({ls_url or 'LABEL_STUDIO_URL is not set'})"
                )
        elif not (url.startswith(("/data/", "/storage-data/", "upload/", "/upload/")) or url.startswith(CLOUD_PREFIXES)):
            raise ImageAccessDenied(
                f"refusing to fetch {url!r}: not a Label Studio upload, local-files, storage or cloud URL"
            )
        if is_local_files and root is not None:
            return self._read_local(url, root)
        if not ls_url:
            raise ImageDownloadError(f"cannot download {url!r}: LABEL_STUDIO_URL is not set")
        if not self.settings.label_studio_api_key:
            raise ImageDownloadError(f"cannot download {url!r}: LABEL_STUDIO_API_KEY is not set")
        if is_local_files:  # no local root here: Label Studio serves the file over HTTP
            url = ls_url + url
        if url.startswith(CLOUD_PREFIXES) and task_id is None:
            raise ImageDownloadError(f"cannot fetch {url!r}: cloud URIs need the task id")
        session = _LabelStudioOnlySession(ls_url, self.settings.max_image_bytes, self.timeout, self.deadline)
        with tempfile.TemporaryDirectory(prefix="g4seg-img-") as tmp, http_session(session), \
                local_files_resolver(None):
            try:
                path = get_local_path(url, cache_dir=tmp, image_dir=tmp, hostname=ls_url,
                                      access_token=self.settings.label_studio_api_key, task_id=task_id)
            except ImageFetchError:
                raise
            except Exception as exc:
                if session.refusal is not None:
                    raise session.refusal from None
                if not isinstance(exc, (requests.RequestException, OSError)):
                    raise
                if not isinstance(exc, requests.HTTPError):
                    raise ImageDownloadError(f"cannot download the image {url!r}: {_one_line(exc)}") from None
                status = exc.response.status_code if exc.response is not None else "?"
                raise ImageDownloadError(f"Label Studio answered {status} for the image {url!r}") from None
            finally:
                session.close()
            return Path(path).read_bytes()

    def _read_local(self, url: str, root: Path) -> bytes:
        """A /data/local-files/?d=<rel> file read straight from the root, never from outside it."""
        found: list[Path] = []

        def resolve(relative: str) -> str | None:
            candidate = (root / posixpath.normpath(relative).lstrip("/")).resolve()
            if candidate != root and root not in candidate.parents:
                raise ImageAccessDenied(f"refusing to read {relative!r}: it lies outside the local-files root")
            if not candidate.is_file():
                raise ImageDownloadError(f"local file {relative!r} not found under the local-files root")
            size = candidate.stat().st_size
            if size > self.settings.max_image_bytes:
                raise ImageTooLarge(f"the image is {size} bytes, over the limit of {self.settings.max_image_bytes}")
            found.append(candidate)
            return str(candidate)

        with local_files_resolver(resolve):
            try:
                # download_resources=False: only resolve the path, never copy or download.
                get_local_path(url, download_resources=False, hostname=self.settings.label_studio_url or "",
                               access_token=self.settings.label_studio_api_key or "")
            except ImageFetchError:
                raise
            except FileNotFoundError as exc:
                raise ImageDownloadError(str(exc)) from None
        if not found:
            raise ImageDownloadError(f"cannot resolve the local file {url!r}")
        return found[0].read_bytes()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


__all__ = ["ImageFetcher", "ImageFetchError", "ImageAccessDenied", "ImageTooLarge", "ImageDownloadError"]
