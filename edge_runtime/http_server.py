"""The daemon's HTTP side: ``/metrics`` plus ``/healthz`` and ``/readyz`` on one port, served from a thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from .errors import ConfigError

Readiness = Callable[[], tuple[bool, str]]


def _plain(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def make_app(registry: CollectorRegistry, readiness: Readiness) -> Callable[..., Iterator[bytes] | list[bytes]]:
    """A WSGI app: ``/metrics`` from prometheus_client, ``/healthz`` and ``/readyz`` beside it.

    Why WSGI and not ``start_http_server``: that server answers every path with the metrics, so
    health checks could not share the port. prometheus_client's own ``make_wsgi_app`` keeps its
    content negotiation (OpenMetrics, gzip); this dispatcher only routes by path, and it is served
    by the standard library's wsgiref (HttpServer below), so no web framework is needed.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _plain(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            ready, why = readiness()
            return _plain(start_response, "200 OK" if ready else "503 Service Unavailable", why + "\n")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        return _plain(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper cannot hold up a health check."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood the journal; requests are not state changes."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpServer:
    """Serves a WSGI app (make_app) on ``host:port`` from a background thread."""

    def __init__(self, app: Callable[..., Any], host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("_Server", (_Server,), {"address_family": family})
            self._server: WSGIServer = make_server(
                host, port, app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="edge-http", daemon=True)

    @property
    def url(self) -> str:
        address, port = self._server.server_address[:2]
        host = str(address)  # an IP address (socket addresses are str for AF_INET and AF_INET6)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the serving loop (if it was started), wait for it, release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
