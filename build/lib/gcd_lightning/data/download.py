"""Helpers for fetching data sets over the network without hanging on an offline machine."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

DEFAULT_DOWNLOAD_TIMEOUT_S = 20.0
"""Socket timeout for data-set downloads: a blackholed network fails after this, not after minutes."""


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Set the default socket timeout (used by ``urllib`` and so by torchvision's downloader) for a block.

    The timeout applies to each connect and read; name resolution is not covered by it, but an
    offline resolver fails immediately. The previous default is restored afterwards.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
