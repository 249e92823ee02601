"""httpx's interface on aiohttp's connection pool, for the process's downloads (images, files).

httpx's own pool (httpcore) scans every connection for each request and costs several times the
CPU per call; `aiohttp_transport` keeps httpx's interface (limits, redirects decided by httpx,
its error names) over aiohttp's pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from .client import proxy_in_environment


def aiohttp_transport(max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """An httpx transport on aiohttp's connection pool, for every `httpx.AsyncClient` of the process.

    Its aiohttp session is made on first use, inside the running event loop; closing the httpx
    client closes it. Redirects are never followed by the transport (httpx decides).
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return _AiohttpTransport(limits=limits)


class _AiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport, its failures named as httpx's own transport names them.

    httpx-aiohttp 0.2 reports every aiohttp connection failure (refused, reset, hung up) as
    `httpx.ConnectTimeout` and lets an invalid HTTP answer through as aiohttp's own error: a refused
    connection would read "timed out", a stream the server hung up on would look stalled, and
    callers catching `httpx.HTTPError` would miss a server speaking no valid HTTP.
    """

    def get_client(self) -> aiohttp.ClientSession:
        """The session, honouring a proxy set in the environment as httpx does."""
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0, keepalive_timeout=self.limits.keepalive_expiry, ssl=self.ssl_context
        )
        return aiohttp.ClientSession(connector=connector, trust_env=proxy_in_environment())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (httpx.ConnectTimeout, aiohttp.ClientError) as exc:
            renamed = _renamed(exc, request)
            if renamed is exc:
                raise
            raise renamed from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)  # the transport streams aiohttp's body
        response.stream = _RenamedStream(response.stream, request)
        return response


class _RenamedStream(httpx.AsyncByteStream):
    """A response body whose failures are renamed as the transport's are."""

    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except (httpx.ConnectTimeout, aiohttp.ClientError) as exc:
            renamed = _renamed(exc, self._request)
            if renamed is exc:
                raise
            raise renamed from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


def _renamed(exc: Exception, request: httpx.Request) -> Exception:
    """The error httpx's own transport raises for the aiohttp failure behind `exc`, or `exc` when it is right."""
    cause = exc.__cause__ if isinstance(exc, httpx.ConnectTimeout) else exc
    if isinstance(cause, aiohttp.ServerTimeoutError) or not isinstance(cause, aiohttp.ClientError):
        return exc
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause), request=request)
    if isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(str(cause), request=request)
    return httpx.ReadError(str(cause), request=request)
