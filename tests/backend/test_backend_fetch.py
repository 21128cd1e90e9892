"""Task images come only from the configured Label Studio or its local-files root (backend/images.py).

A small HTTP server on loopback stands in for Label Studio's file routes (it serves bytes; the
protocol under test is the fetcher's: which hosts, which paths, how much).
"""
from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from backend.fetch import (
    ImageAccessDenied,
    ImageDownloadError,
    ImageFetcher,
    ImageTooLarge,
)
from backend.settings import Settings
from g4seg_core.images import ImageError


def png(height=12, width=16, value=200) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class FileServer:
    """Serves `routes` (path -> (status, headers, body)); records every request it gets."""

    def __init__(self, routes=None):
        self.routes = routes or {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Authorization")))
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                chunked = headers.pop("chunked", False) if isinstance(headers, dict) else False
                for key, value in headers.items():
                    self.send_header(key, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(body), 4096):
                        piece = body[start:start + 4096]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def label_studio():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def elsewhere():
    server = FileServer({"/a.png": (200, {"Content-Type": "image/png"}, png())})
    yield server
    server.close()


def fetcher(ls_url, **extra) -> ImageFetcher:
    return ImageFetcher(Settings(label_studio_url=ls_url, label_studio_api_key="token-123", **extra))


def test_uploads_are_downloaded_from_label_studio_with_the_token(label_studio):
    label_studio.routes["/data/upload/3/cat.png"] = (200, {"Content-Type": "image/png"}, png())
    image = fetcher(label_studio.url).fetch("/data/upload/3/cat.png", task_id=1)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert ("/data/upload/3/cat.png", "Token token-123") in label_studio.requests


def test_local_files_come_over_http_when_no_root_is_mounted(label_studio):
    label_studio.routes["/data/local-files/?d=imgs/cat.png"] = (200, {}, png(value=90))
    image = fetcher(label_studio.url).fetch("/data/local-files/?d=imgs/cat.png")
    assert image[0, 0, 0] == 90


def test_absolute_urls_on_the_label_studio_host_are_fine(label_studio):
    label_studio.routes["/media/x.png"] = (200, {}, png())
    assert fetcher(label_studio.url).fetch(label_studio.url + "/media/x.png").shape == (12, 16, 3)


def test_other_hosts_are_never_contacted(label_studio, elsewhere):
    with pytest.raises(ImageAccessDenied, match="configured Label Studio"):
        fetcher(label_studio.url).fetch(elsewhere.url + "/a.png")
    assert elsewhere.requests == []


def test_a_redirect_off_the_label_studio_host_is_refused(label_studio, elsewhere):
    label_studio.routes["/data/upload/3/away.png"] = (302, {"Location": elsewhere.url + "/a.png"}, b"")
    label_studio.routes["/storage-data/uploaded/?filepath=upload/3/away.png"] = (
        302, {"Location": elsewhere.url + "/a.png"}, b"")
    with pytest.raises(ImageAccessDenied, match="refusing"):
        fetcher(label_studio.url).fetch("/data/upload/3/away.png")
    assert elsewhere.requests == []


@pytest.mark.parametrize("chunked", [False, True])
def test_downloads_over_the_byte_limit_are_cut_off(label_studio, chunked):
    body = png(300, 300) + b"\0" * 200_000
    headers = {"chunked": True} if chunked else {}
    label_studio.routes["/data/upload/3/big.png"] = (200, headers, body)
    with pytest.raises(ImageTooLarge, match="over the limit"):
        fetcher(label_studio.url, max_image_bytes=50_000).fetch("/data/upload/3/big.png")


def test_images_over_the_pixel_limit_are_refused_before_decoding(label_studio):
    label_studio.routes["/data/upload/3/wide.png"] = (200, {}, png(100, 400))
    with pytest.raises(ImageTooLarge, match="400x100"):
        fetcher(label_studio.url, max_image_pixels=10_000).fetch("/data/upload/3/wide.png")


def test_label_studio_errors_and_outages_are_download_errors(label_studio):
    with pytest.raises(ImageDownloadError, match="404"):
        fetcher(label_studio.url).fetch("/data/upload/3/missing.png")
    with pytest.raises(ImageDownloadError, match="cannot download"):
        fetcher("http://127.0.0.1:9").fetch("/data/upload/3/cat.png")


def test_undecodable_bytes_are_an_image_error(label_studio):
    label_studio.routes["/data/upload/3/text.png"] = (200, {}, b"hello")
    with pytest.raises(ImageError, match="cannot decode"):
        fetcher(label_studio.url).fetch("/data/upload/3/text.png")


@pytest.mark.parametrize("url", ["/etc/passwd", "file:///etc/passwd", "cat.png", "ftp://127.0.0.1/a.png", ""])
def test_anything_but_label_studio_urls_is_refused(label_studio, url):
    with pytest.raises(ImageAccessDenied):
        fetcher(label_studio.url).fetch(url)
    assert label_studio.requests == []


def test_without_label_studio_settings_nothing_is_downloaded():
    with pytest.raises(ImageDownloadError, match="LABEL_STUDIO_URL is not set"):
        ImageFetcher(Settings()).fetch("/data/upload/3/cat.png")
    with pytest.raises(ImageDownloadError, match="LABEL_STUDIO_API_KEY"):
        ImageFetcher(Settings(label_studio_url="http://127.0.0.1:9")).fetch("/data/upload/3/cat.png")


def test_local_files_root_is_read_directly_and_never_left(tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "cat.png").write_bytes(png(value=50))
    (tmp_path / "secret.png").write_bytes(png(value=7))
    (root / "imgs" / "link.png").symlink_to(tmp_path / "secret.png")
    images = ImageFetcher(Settings(local_files_root=root))
    assert images.fetch("/data/local-files/?d=imgs/cat.png")[0, 0, 0] == 50
    for escape in ("../secret.png", "imgs/../../secret.png", "imgs/link.png"):
        with pytest.raises(ImageAccessDenied, match="outside"):
            images.fetch(f"/data/local-files/?d={escape}")
    # An absolute ?d= is relative to the root, as in Label Studio itself.
    with pytest.raises(ImageDownloadError, match="not found"):
        images.fetch(f"/data/local-files/?d={tmp_path / 'secret.png'}")


def test_local_files_over_the_byte_limit_are_refused(tmp_path):
    (tmp_path / "cat.png").write_bytes(png(200, 200) + b"\0" * 10_000)
    with pytest.raises(ImageTooLarge):
        ImageFetcher(Settings(local_files_root=tmp_path, max_image_bytes=1000)).fetch("/data/local-files/?d=cat.png")
