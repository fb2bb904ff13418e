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

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

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
    def add_headers(response: Response) -> None:
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        if response.headers.get("content-type", "").startswith("text/html"):
            h["Content-Security-Policy"] = CSP

    def install(self, app: FastAPI) -> None:
        """Check every request and decorate every answer of ``app`` (an HTTP middleware)."""

        @app.middleware("http")
        async def _browser_guard(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = self.refusal(request) or await call_next(request)
            self.add_headers(response)
            return response
