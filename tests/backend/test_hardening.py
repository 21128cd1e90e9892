"""Bounded parsing and bounded I/O: the brush RLE decoder, image decoding as a browser shows it,
the label-config cache, refinement slots under bursts, and image downloads from a storage that
stalls or drips (real sockets)."""
from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
from PIL import Image

from backend.fetch import ImageDownloadTimeout, ImageFetcher
from backend.ls_format import FormatError, RleTooLarge, decode_brush_rle, parse_label_config
from backend.settings import Settings
from g4seg_core.cache import LRUCache
from g4seg_core.errors import ImageError, ImageTooLargeError
from g4seg_core.images import LABELING_FORMATS, decode_image


# ---------------------------------------------------------------- brush RLE


@pytest.mark.parametrize("seed", range(6))
def test_the_rle_decoder_reads_what_label_studio_writes_as_the_sdk_does(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 120)), int(rng.integers(5, 160))
    mask = rng.random((height, width)) < rng.uniform(0.01, 0.6)
    mask[height // 4: height // 2, width // 3: width // 2] = True
    for rle in (mask2rle(np.where(mask, 255, 0).astype(np.uint8)),  # runs (what the SDK writes)
                encode_rle(np.dstack([rng.integers(0, 256, (height, width, 3)),  # literals: RGB differs
                                      np.where(mask, 255, 0)]).astype(np.uint8).ravel())):
        expected = decode_rle(rle).reshape(height, width, 4)[:, :, 3] > 0
        assert np.array_equal(decode_brush_rle(rle, height, width), expected)
        assert np.array_equal(expected, mask)


def test_a_hostile_rle_is_stopped_by_its_run_count_not_decoded():
    side = 768
    bits = format(side * side * 4, "032b") + "00000" + "0000" * 4 + "000111" * (side * side * 2)
    bits += "0" * (-len(bits) % 8)
    rle = np.packbits(np.frombuffer(bits.encode(), np.uint8) - 48).tolist()
    with pytest.raises(RleTooLarge, match="more than 1000000 runs"):
        decode_brush_rle(rle, side, side)


@pytest.mark.parametrize("rle, reason", [
    ([0, 0, 0x30, 0] + [0x38, 0, 0] + [255] * 3, "corrupt"),  # runs of at most 2 values, far too few bits
    ([0, 0, 0x30, 0, 0xF8, 0xFF, 0xFF, 1, 2], "corrupt"),  # 32-bit words that end early
    ([0, 0, 0x30, 0, 0x38], "corrupt"),  # shorter than the header
    ([0, 0, 0x30, 0, 1.5, 0, 0], "0..255"),
    ([0, 0, 0x30, 0, True, 0, 0] * 1, "pixels but the region says|0..255"),
    ([2**70] * 8, "0..255"),
    ([0, 0, 0, 9, 0, 0, 0], "pixels but the region says"),
])
def test_malformed_rles_are_refused_with_a_reason(rle, reason):
    with pytest.raises(FormatError, match=reason):
        decode_brush_rle(rle, 48, 64)  # 0x3000 / 4 = 3072 = 48 x 64 pixels


# ---------------------------------------------------------------- images as a browser shows them


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("orientation, transpose", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                    (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_is_applied_as_a_browser_applies_it(orientation, transpose):
    shown = np.zeros((40, 60, 3), np.uint8)
    shown[5:15, 10:50] = 255  # a bar near the top, as shown
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(shown).transpose(transpose)  # what the camera stored
    data = encoded(stored, "PNG", exif=exif)
    decoded = decode_image(data, formats=LABELING_FORMATS, orient=True)
    assert decoded.shape == shown.shape
    assert np.abs(decoded.astype(int) - shown).max() == 0
    assert decode_image(data).shape[:2] == stored.size[::-1]  # without orient: the stored pixels


def test_16_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 20000, 40000, 65535]], np.uint16).repeat(8, 0).repeat(2, 1)
    decoded = decode_image(encoded(Image.fromarray(values), "PNG"), formats=LABELING_FORMATS)
    assert decoded[0, ::2, 0].tolist() == [0, 78, 156, 255]


def test_palette_cmyk_and_alpha_images_convert_as_a_viewer_shows_them():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert decode_image(encoded(palette, "PNG"))[0, 0].tolist() == [200, 10, 10]
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    assert decode_image(encoded(cmyk, "JPEG", quality=100), formats=LABELING_FORMATS)[0, 0, 0] > 240
    half = Image.new("LA", (8, 8), (0, 128))  # black at half opacity over white: mid grey
    assert 120 <= decode_image(encoded(half, "PNG"))[0, 0, 0] <= 135
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # what is hidden under transparency is not shown
    assert decode_image(encoded(clear, "PNG"))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("data", [b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
                                  b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
                                  encoded(Image.new("RGB", (8, 8)), "TIFF")])
def test_only_formats_a_browser_shows_are_decoded(data):
    with pytest.raises(ImageError, match="formats a labeling tool shows"):
        decode_image(data, formats=LABELING_FORMATS)


def test_a_pixel_bomb_is_too_large_not_undecodable():
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(encoded(Image.new("1", (3000, 3000)), "PNG"), max_pixels=4_000_000, formats=LABELING_FORMATS)


# ---------------------------------------------------------------- caches


def test_the_lru_cache_is_bounded_by_weight_too():
    cache = LRUCache(100, max_weight=10)
    for key in range(5):
        cache.put(key, "v", weight=4)
    assert len(cache) == 2 and cache.weight == 8 and 4 in cache and 3 in cache
    cache.put("huge", "v", weight=11)
    assert "huge" not in cache


def test_the_label_config_cache_keeps_digests_not_texts_and_stays_within_its_bytes(monkeypatch):
    from backend import ls_format

    assert ls_format._CONFIGS.max_weight == 16 * 1024 * 1024  # what operators/docs rely on; smaller here
    monkeypatch.setattr(ls_format, "_CONFIGS", LRUCache(64, max_weight=200_000))
    base = '<View><Image name="image" value="$image"/><BrushLabels name="m" toName="image">{}</BrushLabels></View>'
    for index in range(12):  # 12 distinct configs of ~50 kB: three times the bound
        labels = "".join(f'<Label value="L{index}-{n}"/>' for n in range(2_000))
        assert parse_label_config(base.format(labels)).brushes[0].labels[0] == f"L{index}-0"
    assert ls_format._CONFIGS.weight <= ls_format._CONFIGS.max_weight
    assert all(isinstance(key, bytes) and len(key) == 32 for key in ls_format._CONFIGS._items)


# ---------------------------------------------------------------- bursts


def test_a_burst_of_clicks_waits_for_slots_instead_of_503(tmp_path):
    from backend.app import create_app
    from g4seg_core.engines.base import Engine
    from g4seg_core.engines.factory import EngineStatus

    class Slow(Engine):
        name, version = "slow", "slow"

        def refine_probability(self, image, prior, label):
            time.sleep(0.2)
            return prior

    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "cat.png")
    settings = Settings(local_files_root=tmp_path, queue_size=1, slot_wait=20)
    app = create_app(settings, engine_loader=lambda: EngineStatus("slow", Slow()), load_in_background=False)
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="m" toName="image">'
              '<Label value="Cat"/></BrushLabels></View>')
    click = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=cat.png"}}], "label_config": config,
             "params": {"context": {"result": [{"type": "rectanglelabels", "to_name": "image", "value": {
                 "x": 20, "y": 20, "width": 50, "height": 50, "rectanglelabels": ["Cat"]}}]}}}
    statuses = []

    def send():
        statuses.append(app.test_client().post("/predict", json=click).status_code)

    burst = [threading.Thread(target=send) for _ in range(6)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(60)
    assert statuses == [200] * 6  # one slot, six clicks: each waited its turn
    app.extensions["g4seg"].writeback.stop()


# ---------------------------------------------------------------- downloads from a storage that stalls


class Storage:
    """A real socket standing in for Label Studio's file serving: it stalls, drips, or answers."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            conn.recv(65536)
            if self.mode == "stall":
                self.done.wait(30)
            elif self.mode == "drip":  # headers, then a byte each 0.2 s: no single wait is long
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not self.done.wait(0.2):
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        return
            else:
                png = encoded(Image.new("RGB", (16, 16), (10, 200, 10)), "PNG")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(png), png))

    def close(self):
        self.done.set()
        self.sock.close()


@pytest.mark.parametrize("mode, reason", [("stall", "G4SEG_READ_TIMEOUT"), ("drip", "G4SEG_DOWNLOAD_TIMEOUT")])
def test_a_stalled_or_dripping_download_ends_at_its_deadline_and_health_says_so(mode, reason):
    storage = Storage(mode)
    fetcher = ImageFetcher(Settings(label_studio_url=storage.url, label_studio_api_key="t", read_timeout=0.5,
                                    download_timeout=1.5, connect_timeout=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(ImageDownloadTimeout, match=reason):
            fetcher.fetch("/data/upload/1/cat.png")
        assert time.monotonic() - started < 4  # the deadline (1.5 s) plus scheduling, not the drip's 20000 s
        assert reason in fetcher.health.problem()
    finally:
        storage.close()
    good = Storage("ok")
    try:
        fetcher.settings = Settings(label_studio_url=good.url, label_studio_api_key="t")
        assert fetcher.fetch("/data/upload/1/ok.png").shape == (16, 16, 3)
        assert fetcher.health.problem() is None  # recovered
    finally:
        good.close()


def test_credentials_are_compared_in_constant_time_on_every_route_but_health(tmp_path, monkeypatch):
    import hmac

    from backend import app as app_module
    from backend.app import create_app
    from g4seg_core.engines.factory import create_engine

    compared, original = [], hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", recording)
    app = create_app(Settings(basic_auth_user="ls", basic_auth_pass="s3cret"), load_in_background=False,
                     engine_loader=lambda: create_engine("identity"))
    client = app.test_client()
    assert client.get("/health").status_code == 200 and compared == []
    for route in ("/metrics", "/versions", "/admin"):
        assert client.get(route, auth=("ls", "guess")).status_code == 401
    assert client.post("/predict", auth=("ls", "guess"), data=b"{}").status_code == 401
    assert client.post("/webhook", data=b"{}").status_code == 401  # no credentials at all
    assert (b"ls", b"ls") in compared and (b"guess", b"s3cret") in compared
    assert client.get("/metrics", auth=("ls", "s3cret")).status_code == 200
    app.extensions["g4seg"].writeback.stop()
