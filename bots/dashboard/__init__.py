"""The operator's dashboard and usage API, on the service's HTTP server beside /healthz.

`GET /dashboard` shows today's (or a chosen UTC day's) use: tokens per day and model, the biggest
users against their budgets, each model's quota left, refusals by reason and answer latency, each
chart beside a table of the same numbers. `GET /api/usage` gives `iobot usage --json`'s rows for a
span of days. Both exist only when `IOBOT_ADMIN_TOKEN` is set (bots/http.py mounts them then; every
path here is a 404 otherwise), and both want that token: the page through a session cookie that
`POST /dashboard/login` sets, the API as a bearer token (see access.py).

A login form can only be posted from the dashboard's own origin (the `Origin` and `Sec-Fetch-Site`
headers a browser sends with every POST are checked), and the cookie is SameSite=Strict, so no other
site can sign an operator in or act with their session.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from math import ceil
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import SecretStr

from core.ledger import Ledger, Store
from core.quotas import QuotaTable

from .access import SESSION_COOKIE, SESSION_SECONDS, AdminAccess
from .data import read_dashboard
from .page import dashboard_page, login_page

MAX_API_DAYS = 31
STATIC_TYPES = {"dashboard.css": "text/css", "icon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Everything the page uses comes from iobot itself; no script at all, no inline style, no framing.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make a browser send `Origin: null` with our own forms
    "Cache-Control": "no-store",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Dashboard:
    """The dashboard's routes over the ledger and store the service uses."""

    def __init__(
        self,
        token: SecretStr,
        ledger: Ledger,
        store: Store,
        quotas: QuotaTable,
        *,
        user_daily_tokens: int,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.access = AdminAccess(token, clock=lambda: clock().timestamp())
        self.ledger = ledger
        self.store = store
        self.quotas = quotas
        self.user_daily_tokens = user_daily_tokens  # the budget of a person with no override, for /api/usage
        self._clock = clock
        self._static = {name: resources.files(__package__).joinpath("static", name).read_bytes() for name in STATIC_TYPES}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dashboard", self.page),
            web.post("/dashboard/login", self.login),
            web.post("/dashboard/logout", self.logout),
            web.get("/dashboard/static/{name}", self.static),
            web.get("/api/usage", self.usage),
        ]

    async def page(self, request: web.Request) -> web.Response:
        if not self.access.is_session(request.cookies.get(SESSION_COOKIE)):
            return _html(login_page())
        now = self._clock()
        today = now.date()
        day = _day(request.query.get("day"), today)
        if day > today:
            raise web.HTTPBadRequest(text="That day has not begun yet (days are UTC days).")
        data = await read_dashboard(self.ledger, self.store, self.quotas, day)
        return _html(dashboard_page(data, today=today, now=now))

    async def login(self, request: web.Request) -> web.Response:
        _refuse_other_sites(request)
        address = request.remote or "unknown"
        wait = self.access.wait_needed(address)
        if wait > 0:
            page = login_page(problem=f"Too many wrong tokens. Try again in {ceil(wait)} s.")
            return _html(page, status=429, headers={"Retry-After": str(ceil(wait))})
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not self.access.is_token(given):
            self.access.failed(address)
            return _html(login_page(problem="That is not the admin token."), status=401)
        response = web.HTTPSeeOther("/dashboard", headers=SECURITY_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            self.access.new_session(),
            max_age=SESSION_SECONDS,
            path="/dashboard",
            httponly=True,
            samesite="Strict",
            secure=_is_https(request),
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        _refuse_other_sites(request)
        response = web.HTTPSeeOther("/dashboard", headers=SECURITY_HEADERS)
        response.del_cookie(SESSION_COOKIE, path="/dashboard")
        raise response

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"}
        return web.Response(body=self._static[name], content_type=STATIC_TYPES[name], headers=headers)

    async def usage(self, request: web.Request) -> web.Response:
        """`iobot usage --json`'s rows for `days` UTC days (1 by default) ending with `day` (today by default)."""
        address = request.remote or "unknown"
        wait = self.access.wait_needed(address)
        if wait > 0:
            raise web.HTTPTooManyRequests(text="Too many wrong tokens.", headers={"Retry-After": str(ceil(wait))})
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.access.is_token(given.strip()):
            self.access.failed(address)
            raise web.HTTPUnauthorized(
                text="Send Authorization: Bearer <IOBOT_ADMIN_TOKEN>.", headers={"WWW-Authenticate": "Bearer"}
            )
        last = _day(request.query.get("day"), self._clock().date())
        try:
            days = int(request.query.get("days", "1"))
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_API_DAYS:
            raise web.HTTPBadRequest(text=f"days must be a whole number from 1 to {MAX_API_DAYS}.")
        limits = await self.ledger.user_limits()
        rows: list[dict[str, Any]] = []
        for back in range(days - 1, -1, -1):
            for row in await self.ledger.usage(day=last - timedelta(days=back)):
                rows.append({**row.as_json(), "user_limit": limits.get(row.user, self.user_daily_tokens)})
        return web.json_response(rows, headers={"Cache-Control": "no-store"})


def _day(text: str | None, today: date) -> date:
    if not text:
        return today
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(text="day must be a date, YYYY-MM-DD.") from None


def _refuse_other_sites(request: web.Request) -> None:
    """403 for a form posted from another site: what a browser says of where the request comes from must be us."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise web.HTTPForbidden(text="The dashboard accepts forms from its own pages only.")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="The dashboard accepts forms from its own pages only.")


def _is_https(request: web.Request) -> bool:
    """Served over TLS here or at a proxy in front: the cookie is then Secure (trusting the header only ever adds it)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _html(body: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers={**SECURITY_HEADERS, **(headers or {})})
