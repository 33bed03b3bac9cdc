"""One keep-alive HTTP/1.1 connection that POSTs bodies and maps answers to sink errors."""

from __future__ import annotations

import gzip
import http.client
import threading
from urllib.parse import urlsplit

from .sink import ExportError, RetryableError, parse_retry_after

# OTLP/HTTP specification, "Retryable Response Codes"; Zipkin servers answer the same way
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def split_url(url: str, default_port: int) -> tuple[str, str, int, str]:
    """``http://host:port/base`` -> (scheme, host, port, base path without trailing /)."""
    if "://" not in url:
        url = "http://" + url
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{url}: expected http://HOST[:PORT][/PATH] or https://…")
    port = u.port or default_port
    return u.scheme, u.hostname, port, u.path.rstrip("/")


class HttpPoster:
    def __init__(self, url: str, content_type: str, timeout: float = 10.0,
                 headers: dict[str, str] | None = None, compress: bool = False) -> None:
        u = urlsplit(url)
        self.scheme, self.host = u.scheme, u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.url = url
        self.timeout = timeout
        self.compress = compress
        self.headers = {"Content-Type": content_type, "User-Agent": "wirespan",
                        **(headers or {})}
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def post(self, body: bytes) -> bytes:
        """POST ``body``; the response body on 2xx, else RetryableError / ExportError."""
        headers = dict(self.headers)
        if self.compress:
            body = gzip.compress(body, 1)
            headers["Content-Encoding"] = "gzip"
        with self._lock:
            for reuse in (True, False):
                conn = self._connection()
                try:
                    conn.request("POST", self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, retry_after = resp.status, resp.getheader("Retry-After")
                    if resp.getheader("Connection", "").lower() == "close":
                        self.close()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError,
                        ConnectionResetError) as e:
                    self.close()  # a keep-alive connection the server had closed: once more
                    if not reuse:
                        raise RetryableError(f"POST {self.url}: {e}") from None
                except (OSError, http.client.HTTPException) as e:
                    self.close()
                    raise RetryableError(f"POST {self.url}: {e}") from None
        if 200 <= status < 300:
            return data
        msg = f"POST {self.url}: HTTP {status} {data[:200]!r}"
        if status in RETRYABLE_STATUS:
            raise RetryableError(msg, parse_retry_after(retry_after))
        raise ExportError(msg)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
