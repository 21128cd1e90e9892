"""Slow clients cannot stop the server: gunicorn's threaded worker, reading request heads first.

gunicorn's `gthread` worker hands a connection to a request thread as soon as any byte arrives,
and the thread then blocks until the whole request line and headers are in: a handful of
connections that send half a header (slowloris, no credentials needed) hold every thread, and
every route stops. `HeadFirstWorker` reads the request line and headers in the worker's event
loop instead (non-blocking, any number of connections at once), closes a connection whose head
is not complete within G4SEG_HEADER_TIMEOUT (408), and gives a thread only requests whose head
has arrived. Health checks and /metrics (GET, no body) go to two threads of their own, so they
answer even while every request thread waits on a refinement. The body is read by the request
thread through `read_body`: bounded in bytes (413, chunked bodies too) and in time
(G4SEG_BODY_TIMEOUT in all, 408), after authentication has been checked.
"""
from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from collections import deque
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

from backend.service import BackendError

_HEAD_END = re.compile(rb"\r?\n\r?\n")
# Routes that only read state: served by the worker's own small pool, never behind refinements.
_QUICK = re.compile(rb"^(GET|HEAD) (/|/health|/metrics|/versions)(\?[^ ]*)? HTTP/1\.[01]\r?$")
_BODY_HEADER = re.compile(rb"^(content-length|transfer-encoding)\s*:", re.IGNORECASE | re.MULTILINE)


class HeadFirstWorker(ThreadWorker):
    """gthread, with request heads read in the event loop under a deadline (see the module doc)."""

    header_timeout = 10.0  # set by `g4seg serve` from G4SEG_HEADER_TIMEOUT before the workers fork
    quick_threads = 2

    def init_process(self):
        self.quick_pool = futures.ThreadPoolExecutor(max_workers=self.quick_threads,
                                                     thread_name_prefix="g4seg-quick")
        self.heads: deque = deque()  # connections whose head is being read, in deadline order
        # The most a valid head can hold under gunicorn's limits: past it, the parser refuses it.
        self.head_limit = (self.cfg.limit_request_line or 8190) + 4 + \
            (self.cfg.limit_request_fields or 100) * ((self.cfg.limit_request_field_size or 8190) + 2)
        super().init_process()

    # ------------------------------------------------------------ the event loop's side

    def enqueue_req(self, conn):
        if self.cfg.is_ssl or getattr(conn, "g4seg_head", None) is not None:
            return self._submit(conn)  # TLS: gunicorn's own path (this backend leaves TLS to a proxy)
        prefix = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.g4seg_buf = bytearray(prefix)  # a kept-alive client may have sent its next request already
        if self._head_in(conn):
            return self._dispatch(conn)
        conn.g4seg_deadline = time.monotonic() + self.header_timeout
        conn.sock.setblocking(False)
        self.heads.append(conn)  # deadlines grow with the time of arrival: the deque stays sorted
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn, _sock):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            conn.g4seg_buf += data
            if not self._head_in(conn):
                return
        self.poller.unregister(conn.sock)
        self.heads.remove(conn)
        if data:
            self._dispatch(conn)
        else:  # the client went away
            self.nr_conns -= 1
            conn.close()

    def _head_in(self, conn) -> bool:
        """The request line and headers are in (or are already too long to be valid)."""
        return _HEAD_END.search(conn.g4seg_buf) is not None or len(conn.g4seg_buf) > self.head_limit

    def _dispatch(self, conn):
        head, conn.g4seg_buf = bytes(conn.g4seg_buf), None
        conn.g4seg_head = head
        conn.data_ready = True  # gthread's own wait for a first byte is over
        end = _HEAD_END.search(head)
        lines = head[:end.start()] if end else b""
        quick = bool(end and _QUICK.match(lines.split(b"\n", 1)[0]) and not _BODY_HEADER.search(lines))
        self._submit(conn, self.quick_pool if quick else self.tpool)

    def _submit(self, conn, pool=None):
        future = (pool or self.tpool).submit(self.handle, conn)
        future.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        while self.heads and self.heads[0].g4seg_deadline <= now:
            conn = self.heads.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            if conn.g4seg_buf:  # a partial head: say why it is closed
                reason = (b'{"error": "the request line and headers did not arrive within '
                          + f"{self.header_timeout:g}".encode() + b' s"}')
                try:
                    conn.sock.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(reason), reason))
                except OSError:
                    pass
            self.nr_conns -= 1
            conn.close()

    # ------------------------------------------------------------ the request thread's side

    def handle(self, conn):
        head, conn.g4seg_head = getattr(conn, "g4seg_head", None), None
        if head is not None:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def run(self):
        try:
            super().run()
        finally:
            self.quick_pool.shutdown(wait=False)


def read_body(environ: dict, limit: int, timeout: float) -> bytes:
    """The request body: at most `limit` bytes (413 past it, also without Content-Length) within
    `timeout` seconds in all (408); under gunicorn, a timer shuts the socket's read side at the
    deadline, which ends a read however slowly the client drips its bytes."""
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise BackendError(413, f"the request body is {int(declared)} bytes, over the limit of {limit} "
                                "(G4SEG_MAX_REQUEST_BYTES)")
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    expired = threading.Event()
    timer = None
    if isinstance(sock, socket.socket):
        timer = threading.Timer(timeout, _stop_reading, (sock, expired))
        timer.daemon = True
        timer.start()
    body = bytearray()
    try:
        while True:
            chunk = stream.read(min(1 << 16, limit + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise BackendError(413, f"the request body is over the limit of {limit} bytes "
                                        "(G4SEG_MAX_REQUEST_BYTES)")
    except BackendError:
        raise
    except Exception as exc:  # gunicorn's parser errors (a broken chunk, no more data) and socket errors
        if expired.is_set():
            raise _timed_out(timeout) from None
        raise BackendError(400, f"the request body broke off: {' '.join(str(exc).split())[:200] or type(exc).__name__}") \
            from None
    finally:
        if timer is not None:
            timer.cancel()
    if expired.is_set() and (not declared.isdigit() or len(body) < int(declared)):
        raise _timed_out(timeout)
    return bytes(body)


def _stop_reading(sock: socket.socket, expired: threading.Event) -> None:
    expired.set()
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def _timed_out(timeout: float) -> BackendError:
    return BackendError(408, f"the request body did not arrive within {timeout:g} s (G4SEG_BODY_TIMEOUT)")
