"""optuna-dashboard served on loopback so that a web page cannot reach it: a request whose
``Host`` is not the address served is refused (DNS rebinding: a page on evil.example that
resolves its own name to 127.0.0.1 would otherwise read and change the studies)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna_dashboard import wsgi

from autoprune._compat import order_dashboard_figures
from autoprune.workflow._study_figures import FIGURES

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` header values a browser sends for this server on loopback."""
    names = set(LOOPBACK) | {host} if host in LOOPBACK else {host}
    out = set()
    for name in names:
        shown = f"[{name}]" if ":" in name else name
        out |= {shown, f"{shown}:{port}"}
    return out


def host_checked(app: Callable, allowed: set[str]) -> Callable:
    """The WSGI ``app``, answering 403 to a request for any other host."""

    def checked(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("HTTP_HOST", "").lower() not in allowed:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"autoprune dashboard: this server answers only to its own address\n"]
        return app(environ, start_response)

    return checked


class _QuietHandler(WSGIRequestHandler):
    def address_string(self) -> str:  # no reverse DNS lookups
        return self.client_address[0]

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def serve_dashboard(storage: Any, *, host: str, port: int, artifact_store: Any = None) -> None:
    """optuna-dashboard on ``host:port`` until Ctrl-C; on loopback, only for requests naming
    that address (off loopback the user has chosen to serve the network: no check)."""

    order_dashboard_figures(FIGURES)  # the summary first, then autoprune's figures as it makes them
    app = wsgi(storage, artifact_store=artifact_store)
    if host in LOOPBACK:
        app = host_checked(app, allowed_hosts(host, port))
    server_class = WSGIServer
    if ":" in host:

        class server_class(WSGIServer):  # type: ignore[no-redef]
            address_family = socket.AF_INET6

    server = make_server(host, port, app, server_class, _QuietHandler)
    try:
        server.serve_forever()
    finally:
        server.server_close()
