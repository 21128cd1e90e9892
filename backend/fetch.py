"""Task images, fetched only from the configured Label Studio or its local-files root, with bounded time.

Every URL form a task can hold maps to one request on Label Studio (as label_studio_sdk's
`get_local_path` maps them, whose own download has no timeout): uploads go through the storage
proxy (`/storage-data/uploaded/?filepath=upload/...`, then `/data/upload/...` if Label Studio
refuses that), local files through `/data/local-files/?d=` (or straight from the mounted root),
cloud URIs through the task's presign endpoint. Only LABEL_STUDIO_URL's origin is contacted, on
every redirect hop too. A download gets G4SEG_CONNECT_TIMEOUT to connect, never waits longer than
G4SEG_READ_TIMEOUT for bytes, and ends at G4SEG_DOWNLOAD_TIMEOUT in all: a stalled Label Studio or
storage cannot hold a refinement slot. `DownloadHealth` remembers whether downloads work, for /health.
"""
from __future__ import annotations

import errno
import itertools
import logging
import posixpath
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import numpy as np
import requests
import urllib3
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
    VERIFY_SSL,
    encode_presign_fileuri,
    is_jwt_well_formed,
)

from backend.settings import Settings
from g4seg_core.cache import LRUCache
from g4seg_core.errors import ImageTooLargeError, one_line
from g4seg_core.images import LABELING_FORMATS, ImageError, decode_image

log = logging.getLogger(__name__)

CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
MAX_REDIRECTS = 5


class ImageFetchError(ImageError):
    """The image could not be fetched (see the subclasses for why)."""


class ImageAccessDenied(ImageFetchError):
    """The task names an image outside the configured Label Studio or local-files root."""


class ImageNameError(ImageFetchError):
    """The task's image URL or file name is malformed (empty, too long, a NUL byte)."""


class ImageTooLarge(ImageFetchError, ImageTooLargeError):
    """The image is over the byte or pixel limit."""


class ImageDownloadError(ImageFetchError):
    """Label Studio did not hand the image over (down, 404, no credentials)."""


class ImageDownloadTimeout(ImageDownloadError):
    """Label Studio or its storage did not send the image in time."""


def origin(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    except ValueError:  # a port that is not a number
        port = "?"
    return parsed.scheme.lower(), f"{host}:{port}"


class DownloadHealth:
    """Whether downloads from Label Studio work: the last one's outcome, and any stalled right now."""

    def __init__(self, stall_after: float):
        self.stall_after = stall_after
        self._lock = threading.Lock()
        self._failure: tuple[float, str] | None = None  # (when, why) of the last download, if it failed
        self._running: dict[int, float] = {}  # token -> start time
        self._tokens = itertools.count()

    def started(self) -> int:
        token = next(self._tokens)
        with self._lock:
            self._running[token] = time.monotonic()
        return token

    def finished(self, token: int, failure: str | None) -> None:
        with self._lock:
            self._running.pop(token, None)
            self._failure = (time.time(), failure) if failure else None

    def problem(self) -> str | None:
        """Why downloads look broken, or None."""
        now = time.monotonic()
        with self._lock:
            stalled = sum(1 for t in self._running.values() if now - t > self.stall_after)
            failure = self._failure
        if stalled:
            return f"{stalled} image download(s) from Label Studio waiting for over {self.stall_after:g} s"
        if failure:
            return f"the last image download failed {time.time() - failure[0]:.0f} s ago: {failure[1]}"
        return None


class ImageFetcher:
    """Downloads and decodes task images under the backend's rules; keeps the last few decoded."""

    def __init__(self, settings: Settings, metrics=None):
        self.settings = settings
        self.metrics = metrics
        self.health = DownloadHealth(stall_after=settings.read_timeout)
        self._cache = LRUCache(settings.image_cache_size)

    def fetch(self, url, task_id: int | None = None) -> np.ndarray:
        if not isinstance(url, str) or not url.strip():
            raise ImageAccessDenied("the task has no image URL")
        url = url.strip()
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        image = self.decode(self._load(url, task_id))
        self._cache.put(url, image)
        return image

    def decode(self, data: bytes) -> np.ndarray:
        """As Label Studio's image tag shows it: EXIF orientation applied, a browser's formats only."""
        try:
            return decode_image(data, self.settings.max_image_pixels, formats=LABELING_FORMATS, orient=True)
        except ImageTooLargeError as exc:
            raise ImageTooLarge(str(exc)) from None

    # ------------------------------------------------------------ where the bytes come from

    def _load(self, url: str, task_id: int | None) -> bytes:
        ls_url = self.settings.label_studio_url
        if "\x00" in url:
            raise ImageNameError("the image URL holds a NUL byte")
        if url.startswith(("upload/", "/upload/")):
            url = "/data/" + url.lstrip("/")
        if url.startswith(("http://", "https://")):
            if not ls_url or origin(url) != origin(ls_url):
                raise ImageAccessDenied(
                    f"refusing to fetch {url!r}: images come only from the configured Label Studio "
                    f"({ls_url or 'LABEL_STUDIO_URL is not set'})"
                )
            targets = [url]
        elif url.startswith(CLOUD_PREFIXES):
            if task_id is None:
                raise ImageDownloadError(f"cannot fetch {url!r}: cloud URIs need the task id")
            targets = [f"/tasks/{task_id}/presign/?fileuri={encode_presign_fileuri(url)}"]
        elif url.startswith("/data/local-files"):
            if self.settings.local_files_root is not None:
                return self._read_local(url, self.settings.local_files_root)
            targets = [url]
        elif url.startswith("/data/upload/"):
            # The storage proxy serves uploads whatever Django storage holds them; /data/upload/ is
            # the older route, tried when the proxy refuses (as label_studio_sdk does).
            targets = [f"/storage-data/uploaded/?filepath={url[len('/data/'):]}", url]
        elif url.startswith(("/data/", "/storage-data/")):
            targets = [url]
        else:
            raise ImageAccessDenied(
                f"refusing to fetch {url!r}: not a Label Studio upload, local-files, storage or cloud URL"
            )
        if not ls_url:
            raise ImageDownloadError(f"cannot download {url!r}: LABEL_STUDIO_URL is not set")
        if not self.settings.label_studio_api_key:
            raise ImageDownloadError(f"cannot download {url!r}: LABEL_STUDIO_API_KEY is not set")
        return self._download(url, [t if t.startswith("http") else ls_url + t for t in targets])

    def _download(self, shown: str, targets: list[str]) -> bytes:
        token = self.health.started()
        started = time.monotonic()
        failure, outcome = None, "ok"
        try:
            deadline = started + self.settings.download_timeout
            for index, target in enumerate(targets):
                status, body = self._get(target, deadline)
                if status < 400:
                    return body
                if index + 1 == len(targets):
                    if status >= 500 or status in (401, 403):  # Label Studio broken or our token refused
                        failure = f"Label Studio answered {status}"
                    outcome = "http_error"
                    raise ImageDownloadError(f"Label Studio answered {status} for the image {shown!r}")
            raise AssertionError("unreachable")
        except ImageDownloadTimeout as exc:
            failure, outcome = str(exc), "timeout"
            raise
        except ImageTooLarge:
            outcome = "too_large"
            raise
        except ImageAccessDenied:
            outcome = "refused"
            raise
        except ImageDownloadError as exc:
            if outcome == "ok":
                failure, outcome = str(exc), "unreachable"
            raise
        finally:
            self.health.finished(token, failure)
            if self.metrics is not None:
                self.metrics.downloads.labels(outcome).inc()
                self.metrics.download_seconds.observe(time.monotonic() - started)

    def _get(self, url: str, deadline: float) -> tuple[int, bytes]:
        """(status, body) of a GET on Label Studio, following its redirects within its origin."""
        s = self.settings
        with requests.Session() as session:
            for _ in range(MAX_REDIRECTS + 1):
                if origin(url) != origin(s.label_studio_url):
                    raise ImageAccessDenied(
                        f"refusing to fetch an image from {urlparse(url).netloc or url!r}: images come only "
                        f"from Label Studio at {s.label_studio_url}"
                    )
                remaining = self._remaining(deadline, url)
                try:
                    response = session.get(
                        url, headers=self._headers(), stream=True, allow_redirects=False, verify=VERIFY_SSL,
                        timeout=(min(s.connect_timeout, remaining), min(s.read_timeout, remaining)),
                    )
                except requests.ConnectTimeout:
                    raise ImageDownloadTimeout(f"cannot connect to Label Studio within G4SEG_CONNECT_TIMEOUT="
                                               f"{min(s.connect_timeout, remaining):g} s for the image {url!r}") from None
                except requests.Timeout:
                    raise self._silence(url, remaining) from None
                except requests.RequestException as exc:
                    raise ImageDownloadError(f"cannot download the image {url!r}: {one_line(exc)}") from None
                with response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status_code >= 400:
                        return response.status_code, b""
                    return response.status_code, self._read_body(response, url, deadline)
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects for the image {url!r}")

    def _read_body(self, response, url: str, deadline: float) -> bytes:
        limit = self.settings.max_image_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageTooLarge(f"the image is {int(declared)} bytes, over the limit of {limit}")
        raw = response.raw
        body = bytearray()
        while True:
            remaining = self._remaining(deadline, url)
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:  # each wait for bytes: the read timeout, or what is left of the deadline
                sock.settimeout(min(self.settings.read_timeout, remaining))
            try:
                chunk = raw.read1(1 << 16)
            except (urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError):
                raise self._silence(url, remaining) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ImageDownloadError(f"the download of {url!r} broke off: {one_line(exc)}") from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                raise ImageTooLarge(f"the image is over the limit of {limit} bytes")

    def _silence(self, url: str, remaining: float) -> ImageDownloadTimeout:
        """The error for a wait for bytes that timed out: on its own limit, or on the whole download's."""
        if remaining < self.settings.read_timeout:
            return ImageDownloadTimeout(f"the image {url!r} did not arrive within G4SEG_DOWNLOAD_TIMEOUT="
                                        f"{self.settings.download_timeout:g} s")
        return ImageDownloadTimeout(f"Label Studio sent nothing for G4SEG_READ_TIMEOUT={self.settings.read_timeout:g} s "
                                    f"while sending the image {url!r}")

    def _remaining(self, deadline: float, url: str) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageDownloadTimeout(f"the image {url!r} did not arrive within G4SEG_DOWNLOAD_TIMEOUT="
                                       f"{self.settings.download_timeout:g} s")
        return remaining

    def _headers(self) -> dict:
        key = self.settings.label_studio_api_key
        # Label Studio's legacy tokens go as "Token", its JWT access tokens as "Bearer" (as the SDK sends them).
        scheme = "Bearer" if is_jwt_well_formed(key) else "Token"
        # identity: a compressed answer could inflate past the byte limit inside one read
        return {"Authorization": f"{scheme} {key}", "Accept-Encoding": "identity", "User-Agent": "g4seg-backend"}

    # ------------------------------------------------------------ local files

    def _read_local(self, url: str, root: Path) -> bytes:
        """A /data/local-files/?d=<rel> file read straight from the root, never from outside it."""
        # Parsed as Label Studio's view parses it: decoded once, the last d= wins.
        values = parse_qs(urlparse(url).query, keep_blank_values=True).get("d")
        relative = values[-1] if values else ""
        if not relative:
            raise ImageNameError(f"the local-files URL {url[:200]!r} names no file (?d= is empty)")
        if "\x00" in relative:
            raise ImageNameError("the local file name holds a NUL byte")
        try:
            candidate = (root / posixpath.normpath(relative).lstrip("/")).resolve()
            if candidate != root and root not in candidate.parents:
                raise ImageAccessDenied(f"refusing to read {relative[:200]!r}: it lies outside the local-files root")
            if not candidate.is_file():
                raise ImageDownloadError(f"local file {relative[:200]!r} not found under the local-files root")
            size = candidate.stat().st_size
            if size > self.settings.max_image_bytes:
                raise ImageTooLarge(f"the image is {size} bytes, over the limit of {self.settings.max_image_bytes}")
            return candidate.read_bytes()
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise ImageNameError(f"the local file name is too long ({len(relative)} characters)") from None
            raise ImageDownloadError(f"cannot read the local file {relative[:200]!r}: {exc.strerror}") from None


__all__ = ["ImageFetcher", "ImageFetchError", "ImageAccessDenied", "ImageNameError", "ImageTooLarge",
           "ImageDownloadError", "ImageDownloadTimeout", "DownloadHealth"]
