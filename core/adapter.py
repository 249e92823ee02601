"""What the composition root needs from a chat platform's adapter, whatever the platform.

An adapter module (adapters/slack.py, adapters/discord.py, ...) holds three things: its settings
class (a `PlatformSettings`), a `build(settings, service, *, state_dir)` function, and the adapter
it builds, which has the shape below. `bots/app.py` loops over the modules: a new platform is one
module plus its settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # for annotations only: the admin commands import this module and need no HTTP server
    from aiohttp import web


class AdapterError(Exception):
    """An adapter could not start or stopped for good (a refused token, say).

    Its message is what the operator reads: it names the setting to fix, and never holds a secret.
    """


class Adapter(Protocol):
    """A chat platform connected to the service.

    The composition root mounts `routes()` on its HTTP server, calls `start()`, waits on `wait()`
    of every adapter until one ends or a signal comes, lets the service drain, then calls `stop()`.
    """

    name: str  # the platform, as in person ids and logs: "slack", "discord", "console"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        """The HTTP routes the adapter serves on the process's server (most serve none)."""
        ...

    async def start(self) -> None:
        """Connect; return once serving. Raises `AdapterError` when the platform refuses the credentials."""
        ...

    async def wait(self) -> None:
        """Return when the adapter has ended: on its own (the end of the console's input, a gateway
        closed for good, raising `AdapterError` or the library's error) or after `stop()`."""
        ...

    async def stop(self) -> None:
        """Take no more work; let the answers being posted go out within a short grace; disconnect.

        Called after `Service.drain`, so no API call is still running. Calling it again does nothing.
        """
        ...
