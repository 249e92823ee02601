"""`iobot emulator` in a process of its own, for measurements whose event loop must not also serve the API."""

from __future__ import annotations

import subprocess
import sys


def start_emulator_process() -> tuple[subprocess.Popen[str], str]:
    """Start the emulator on a free loopback port; returns the process and the API's base URL."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from bots.cli import main; main()", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "IO Intelligence emulator at http://127.0.0.1:PORT/api/v1 ..."
    base_url = next(word for word in line.split() if word.startswith("http://"))
    return process, base_url
