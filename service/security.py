"""What a browser may do with the service: headers on every answer, and no cross-site writes.

A keyless service on 127.0.0.1 is reachable by every web page its user opens: a page on
``evil.example`` can POST a form to it (no preflight for a "simple" request), and a name that
resolves to 127.0.0.1 (DNS rebinding) can read its answers. So:

- a request whose ``Host`` is not one the service answers to is refused (400): on a loopback
  bind, ``127.0.0.1``, ``localhost`` and ``[::1]`` (any port), plus ``allowed_hosts``;
- a write (any method but GET, HEAD, OPTIONS) from another origin is refused (403): its
  ``Origin`` must be the service's own or one of ``cors_origins``; browsers that send
  ``Sec-Fetch-Site: cross-site`` without an ``Origin`` are refused as well;
- every answer carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``
  and ``X-Frame-Options: DENY``; an HTML answer also carries a Content-Security-Policy that
  allows script, style and connections from the service alone (no inline script, no
  third-party origin) and no framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``; ``[::1]:80`` -> ``::1``."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


class BrowserGuard:
    """Checks ``Host`` and ``Origin`` of each request, and adds the security headers."""

    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str] | None,
        cors_origins: Iterable[str] = (),
    ) -> None:
        # None: any Host (a non-loopback bind, where the key protects the service)
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    def refusal(self, request: Request) -> JSONResponse | None:
        """The answer to a request this guard refuses, or None to let it through."""
        host_header = request.headers.get("host", "")
        host = _host_name(host_header)
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return JSONResponse(
                {"error": "bad host", "detail": f"this service does not answer to {host!r}"},
                status_code=400,
            )
        if request.method in _SAFE_METHODS:
            return None
        origin = (request.headers.get("origin") or "").rstrip("/").lower()
        if origin and origin != "null":
            own = urlsplit(origin).netloc == host_header.lower()
            if own or origin in self.cors_origins:
                return None
        elif request.headers.get("sec-fetch-site", "") != "cross-site" and not origin:
            return None  # not from a browser page (curl, scripts, the service's own tests)
        return JSONResponse(
            {
                "error": "forbidden",
                "detail": f"cross-origin write from {origin or 'another site'} refused; "
                "start the service with --cors-origin ORIGIN to allow it",
            },
            status_code=403,
        )

    @staticmethod
    def add_headers(h: MutableHeaders) -> None:
        """The security headers on an answer's headers (its start message's)."""
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        if h.get("content-type", "").startswith("text/html"):
            h["Content-Security-Policy"] = CSP

    def install(self, app: FastAPI) -> None:
        """Check every request and decorate every answer of ``app`` (a plain ASGI middleware:
        ``BaseHTTPMiddleware`` costs ~0.3 ms of CPU a request)."""
        app.add_middleware(_BrowserGuardMiddleware, guard=self)


class _BrowserGuardMiddleware:
    def __init__(self, app: ASGIApp, guard: BrowserGuard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                BrowserGuard.add_headers(MutableHeaders(scope=message))
            await send(message)

        refusal = self.guard.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
