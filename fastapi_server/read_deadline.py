"""uvicorn's HTTP protocol with a deadline on reading each request, head and body.

uvicorn waits for a request for ever once its first byte has come (and for that first byte on a
new connection): a client that sends half a header, or a body a byte now and then (slowloris),
holds its connection as long as it likes, without a key, since no key is read before the head
is whole. A few hundred such connections use up the process's file descriptors, and every
speaker's next request is refused. Here a request must be read whole within
REQUEST_READ_TIMEOUT_S of its first byte (of the connection's opening, for the first); a slower
one is answered 408 and its connection closed. Between requests uvicorn's keep-alive timeout
(5 s) closes an idle connection as before.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MESSAGE = b"the request was not received in time"
TIMED_OUT = b"".join(
    [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(MESSAGE),
        b"connection: close\r\n\r\n",
        MESSAGE,
    ]
)


def read_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=…), with `timeout_s` as the deadline."""

    class ReadDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_read = False  # this request's head: self.cycle is then this request's

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_read = False
            self._arm()  # a later request on a kept-alive connection

        def on_headers_complete(self) -> None:
            self._head_read = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            # An answer already under way (a 401 sent before the body was read) is not
            # followed by a second one.
            if not (self._head_read and self.cycle is not None and self.cycle.response_started):
                self.transport.write(TIMED_OUT)
            self.transport.close()

    return ReadDeadlineProtocol
