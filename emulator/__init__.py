"""A local stand-in for the IO Intelligence API: `iobot run --emulator`, `iobot emulator`, the tests and benchmarks.

It lives outside `core` so that the service never depends on it; the product ships it for running with no account.
"""

from emulator.chat import CODE_BLOCK
from emulator.server import Emulator, Fault, RecordedRequest

__all__ = ["CODE_BLOCK", "Emulator", "Fault", "RecordedRequest"]
