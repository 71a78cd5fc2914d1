"""A gunicorn ``gthread`` worker that gives a request a thread only once the whole request has arrived.

Why: gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first
bytes arrive; the thread then blocks reading headers and body for as long as the client
takes. Forty stalled uploads on the default 2 x 16 threads left ``/healthz`` unanswered
for 60 % of probes (``python -m benchmarks.slow_clients``). waitress does not have the
problem because its event loop buffers each request before a thread sees it; this
worker does the same inside gunicorn:

* a thread reads only what the socket already holds (non-blocking) into the connection's
  buffer; while the request's head, or the body its ``Content-Length`` or chunked
  framing announces, is incomplete, the connection goes back to gunicorn's poller (no
  thread held) until more bytes arrive;
* a request must be complete within ``ZIMG_WEB_BODY_TIMEOUT`` seconds of its first byte,
  else it is answered ``408`` and closed; this holds for every request of a kept-alive
  connection too (``ZIMG_WEB_KEEPALIVE``);
* once complete (or the client closed its side, or the buffer passed the size limit,
  which the app answers with 413), the bytes are handed to gunicorn's own parser through
  its unreader, and the request is served exactly as before.

Also: an unknown ``Transfer-Encoding`` is a client error here (400, as gunicorn already
answers for ``gzip`` alone), not gunicorn's 501. TLS connections are served by the stock
path (the handshake needs a blocking socket); put TLS in the reverse proxy.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding  # type: ignore[import-untyped]
from gunicorn.workers import gthread  # type: ignore[import-untyped]

FIRST_BYTES_WAIT_S = 0.1
#: Head bytes allowed before giving the request to gunicorn (which enforces its own header limits).
MAX_HEAD = 64 * 1024
_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)
_EXPECT = re.compile(rb"^expect[ \t]*:[ \t]*100-continue", re.IGNORECASE | re.MULTILINE)
TIMEOUT_BODY = b'{"error":"request_timeout","message":"the request did not arrive in time"}'
TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n\r\n" + TIMEOUT_BODY
)


def _chunked_complete(buf: bytes, pos: int) -> bool:
    """Whether a chunked body starting at ``pos`` has all its chunks and the trailer section."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return True  # malformed: let gunicorn's parser answer 400
        if size == 0:
            return buf.startswith(b"\r\n", eol + 2) or buf.find(b"\r\n\r\n", eol) >= 0
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return False


def request_complete(buf: bytes, max_body: int) -> bool:
    """Whether ``buf`` holds a whole HTTP/1.x request (or enough to let gunicorn refuse it)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return len(buf) > MAX_HEAD
    head, body_start = buf[:end], end + 4
    if _CHUNKED.search(head):
        return len(buf) - body_start > max_body or _chunked_complete(buf, body_start)
    match = _LENGTH.search(head)
    if match is None:
        return True  # no body
    length = int(match.group(1))
    return length > max_body or len(buf) - body_start >= length


class BufferingThreadWorker(gthread.ThreadWorker):
    """``gthread`` with whole-request buffering before a thread is committed (see the module docstring)."""

    #: Set by ``zimg_queue.web.serve`` from Settings before gunicorn forks its workers.
    body_timeout: float = 10.0
    max_body: int = 64 * 1024
    max_conn_requests: int = 20

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl or conn.is_http2 or (conn.initialized and conn.parser.unreader.buf.getvalue()):
            return super().handle(conn)  # TLS, HTTP/2, or a pipelined request already read ahead
        state = conn.__dict__.setdefault("zimg", {"buf": bytearray(), "deadline": None, "continued": False})
        buf: bytearray = state["buf"]
        if not buf and not conn.initialized and not conn.data_ready:
            # A fresh connection's request is usually a moment behind its accept: wait briefly here rather
            # than go round the poller (the stock worker waits up to 5 s; a silent client costs 0.1 s at most).
            conn.wait_for_data(FIRST_BYTES_WAIT_S)
        eof = complete = False
        try:
            conn.sock.setblocking(False)
            while not complete and len(buf) <= MAX_HEAD + self.max_body:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    eof = True
                    break
                buf += chunk
                complete = request_complete(bytes(buf), self.max_body)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            conn.close()
            return False
        if buf and state["deadline"] is None:
            state["deadline"] = time.monotonic() + self.body_timeout
        data = bytes(buf)
        if not (eof or complete or request_complete(data, self.max_body)):
            if state["deadline"] is not None and time.monotonic() > state["deadline"]:
                _answer_timeout(conn)
                return False
            if not state["continued"] and _EXPECT.search(data[: data.find(b"\r\n\r\n") + 1 or None]):
                state["continued"] = True  # the client waits for this before it sends the body
                _send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            return gthread._DEFER
        if not data:
            conn.close()
            return False
        conn.sock.setblocking(True)
        conn.init()  # a no-op for a kept-alive connection
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        del conn.__dict__["zimg"]  # the next request on a kept-alive connection gets its own deadline
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """gunicorn's, closing a kept-alive connection after ``max_conn_requests`` requests (nginx's
        ``keepalive_requests``): its client reconnects, and the new connection goes to whichever process
        accepts first, so persistent clients spread over the processes instead of staying where they landed."""
        served = conn.__dict__.get("zimg_served", 0) + 1
        conn.__dict__["zimg_served"] = served
        if served >= self.max_conn_requests:
            req.must_close = True
        return bool(super().handle_request(req, conn))

    def finish_request(self, conn: Any, fs: Any) -> None:
        super().finish_request(conn, fs)
        state = conn.__dict__.get("zimg")
        if state and conn in self.pending_conns:
            # gunicorn gives a pending connection the keep-alive timeout (0 by default); a partial
            # request waits for its deadline instead (or the data timeout before its first byte).
            conn.timeout = state["deadline"] or time.monotonic() + gthread.DEFAULT_WORKER_DATA_TIMEOUT

    def murder_pending(self) -> None:
        """Close pending connections past their own timeout (not only a sorted prefix: timeouts differ here)."""
        now = time.monotonic()
        keep: deque = deque()
        pending: deque = self.pending_conns  # type: ignore[has-type]
        for conn in pending:
            if conn.timeout > now:
                keep.append(conn)
                continue
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
            self.nr_conns -= 1
            if conn.__dict__.get("zimg", {}).get("buf"):
                _send_quietly(conn, TIMEOUT_ANSWER)
            conn.close()
        self.pending_conns = keep

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, UnsupportedTransferCoding):  # a client's mistake: 400, not gunicorn's 501
            exc = InvalidHeader("TRANSFER-ENCODING")
        super().handle_error(req, client, addr, exc)


def _send_quietly(conn: Any, data: bytes) -> None:
    try:
        conn.sock.send(data)
    except OSError:
        pass


def _answer_timeout(conn: Any) -> None:
    _send_quietly(conn, TIMEOUT_ANSWER)
    conn.close()
