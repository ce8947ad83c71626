"""A network camera: RTSP (over TCP or UDP), HTTP(S) MJPEG and HLS, read with FFmpeg.

Every read has a timeout: without one a camera that hangs (or a network that drops its
packets) blocks the reader for ever. A stream that ends, fails or times out has dropped, and
the reader opens it again. FFmpeg puts the whole URL in its error messages: the password is
taken out of every text this source gives, and the URL it is known by has none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from aiotedge.contracts.errors import ConfigError
from aiotedge.media.sources.base import CapturedFrame, FrameSource, SourceDroppedError
from aiotedge.media.sources.pyav import Opener, pictures, pyav_open

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
RTSP_TRANSPORTS = ("tcp", "udp")
REDACTED = "***"


class StreamSource(FrameSource):
    live = True

    def __init__(self, url: str, password: str | None = None, transport: str = "tcp",
                 timeout: float = 5.0, opener: Opener | None = None) -> None:
        self._url, self.name, self._secrets = with_credentials(url, password)
        self.timeout = self.stall_after = timeout
        scheme = urlsplit(url).scheme.lower()
        self.options: dict[str, str] = {}
        if scheme.startswith("rtsp"):
            # a probe of a second reads a second of frames that then arrive late in a burst
            self.options = {"rtsp_transport": transport, "analyzeduration": "0",
                            "probesize": "32"}
        elif urlsplit(url).path.endswith(".m3u8"):
            self.options = {"live_start_index": "-1"}  # the newest segment, not 3 s back
        self._open = opener or pyav_open(f"the stream {self.name}")

    def frames(self, stop: threading.Event) -> Iterator[CapturedFrame]:
        with self._open(self._url, options=self.options,
                        timeout=(self.timeout, self.timeout)) as container:
            for picture in pictures(container):
                if stop.is_set():
                    return
                # a stream's own stamps start at 0 on each connection (RTSP, HLS) or are
                # made up (MJPEG): the time it arrived is the capture time
                yield picture.captured(time.time(), self.name)
        raise SourceDroppedError("the stream ended")

    def explain(self, error: BaseException) -> str:
        return self.redact(super().explain(error))

    def redact(self, text: str) -> str:
        text = text.replace(self._url, self.name)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def with_credentials(url: str, password: str | None) -> tuple[str, str, list[str]]:
    """(the URL to open, the URL to show, the texts to hide).

    The user and password go into the URL percent-encoded, whether they were written raw or
    encoded (`p@ss` and `p%40ss` alike); `password` (from a file) replaces the URL's own.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in STREAM_SCHEMES or not parts.hostname:
        raise ConfigError(f"{url!r} is not a stream URL ({', '.join(STREAM_SCHEMES)})")
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, written = userinfo.partition(":")
    secret = password if password is not None else (unquote(written) if colon else None)
    if not at:
        if password is not None:
            raise ConfigError(f"a password is given for {url}, which names no user: "
                              "write it as scheme://USER@host/...")
        return url, url, []
    credentials = quote(unquote(user), safe="")
    shown = credentials
    hidden: list[str] = []
    if secret is not None:
        encoded = quote(secret, safe="")
        credentials += f":{encoded}"
        shown += f":{REDACTED}"
        hidden = sorted({secret, encoded, written} - {""}, key=len, reverse=True)
    full = urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))
    return full, urlunsplit(parts._replace(netloc=f"{shown}@{host}")), hidden
