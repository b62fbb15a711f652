"""The NATS JetStream sink: subject `<prefix>.<event_type>`, the event id as `Nats-Msg-Id`.

nats-py is asynchronous; the sink owns a private event loop so the relay stays synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from event_sourcing.events import RecordedEvent
from event_sourcing.relay.sink import DEFAULT_PREFIX, Ack, RelayError, encode_event
from event_sourcing.stores.recorder import redact_url

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_NATS_URL",
    "DEFAULT_PREFIX",
    "JetStreamSink",
    "default_stream_name",
    "subject_token",
]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a message id (its own default). A relay that crashes
re-publishes at most its last unacknowledged page; that page is dropped as duplicates only if
the relay is back within this window. Longer windows cost the broker memory per message id."""

T = TypeVar("T")
log = logging.getLogger("event_sourcing.relay")
_BAD_TOKEN = re.compile(r"[\s.*>]")
_PREFIX = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")


def subject_token(event_type: str) -> str:
    """An event type as one NATS subject token (`.`, `*`, `>` and whitespace become `_`)."""
    return _BAD_TOKEN.sub("_", event_type) or "_"


def default_stream_name(prefix: str) -> str:
    """The stream the sink creates for `prefix` when none is named: `mlevents` -> `MLEVENTS`."""
    return prefix.replace(".", "_").upper()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class JetStreamSink:
    """Publishes events to a JetStream stream; creates the stream (subjects `<prefix>.>`) if it
    does not exist yet. Every message carries `Nats-Msg-Id: <event id>` and
    `Mlevents-Position: <global position>`; its body is the event as JSON."""

    def __init__(
        self,
        url: str = DEFAULT_NATS_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream: str | None = None,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        create_stream: bool = True,
        ack_timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise RelayError(
                f"subject prefix {prefix!r} must be dot-separated tokens of letters, digits, "
                "'_' or '-' (e.g. mlevents or prod.mlevents)"
            )
        self.stream = stream or default_stream_name(prefix)
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,255}", self.stream):
            raise RelayError(
                f"stream name {self.stream!r} must be letters, digits, '_' or '-' (no dots)"
            )
        if not duplicate_window > 0:
            raise RelayError(f"duplicate_window must be > 0 seconds, got {duplicate_window!r}")
        self.url = url
        self.prefix = prefix
        self.duplicate_window = duplicate_window
        self.ack_timeout = ack_timeout
        self.description = f"{redact_url(url)} stream {self.stream} subjects {prefix}.>"
        self._subjects: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        try:
            self._run(self._connect(connect_timeout, create_stream))
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _on_error(exc: Exception) -> None:
        log.debug("NATS connection error: %s", exc)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    async def _connect(self, timeout: float, create_stream: bool) -> None:
        where = redact_url(self.url)
        try:
            self._nc = await nats.connect(
                self.url,
                connect_timeout=max(1, int(timeout)),
                max_reconnect_attempts=2,
                reconnect_time_wait=1,
                error_cb=self._on_error,  # nats-py's default prints tracebacks to stderr
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise RelayError(
                f"cannot connect to NATS at {where}: {_first_line(exc)}. Check that nats-server "
                "is running there (with JetStream: nats-server -js) and the URL is right."
            ) from None
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        try:
            await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            if not create_stream:
                raise RelayError(
                    f"JetStream stream {self.stream!r} does not exist on {where}; create it "
                    f"with subjects {self.prefix}.> or let the relay create it"
                ) from None
            try:
                await self._js.add_stream(
                    StreamConfig(
                        name=self.stream,
                        subjects=[f"{self.prefix}.>"],
                        duplicate_window=self.duplicate_window,
                    )
                )
            except nats.js.errors.APIError as exc:
                raise RelayError(
                    f"cannot create JetStream stream {self.stream!r} on {where}: "
                    f"{exc.description or _first_line(exc)}"
                ) from None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise RelayError(
                f"NATS at {where} has no JetStream; start nats-server with -js"
            ) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise RelayError(f"cannot look up stream {self.stream!r} on {where}: "
                             f"{_first_line(exc)}") from None

    def subject(self, event_type: str) -> str:
        """The subject an event of `event_type` is published on."""
        subject = self._subjects.get(event_type)
        if subject is None:
            subject = self._subjects[event_type] = f"{self.prefix}.{subject_token(event_type)}"
        return subject

    def publish(self, events: Sequence[RecordedEvent]) -> list[Ack]:
        if not events:
            return []
        return self._run(self._publish(events))

    async def _publish(self, events: Sequence[RecordedEvent]) -> list[Ack]:
        js = self._js
        if js is None:
            raise RelayError(f"the sink {self.description} is closed")
        futures: list[asyncio.Future[Any]] = []
        try:
            for event in events:
                futures.append(
                    await js.publish_async(
                        self.subject(event.event_type),
                        encode_event(event),
                        headers={
                            "Nats-Msg-Id": event.id,
                            "Mlevents-Position": str(event.position),
                        },
                    )
                )
            done = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.ack_timeout
            )
        except (TimeoutError, nats.errors.Error) as exc:
            for future in futures:
                future.cancel()
            raise RelayError(
                f"NATS at {redact_url(self.url)} did not acknowledge {len(events)} message(s) "
                f"from position {events[0].position} within {self.ack_timeout:g} s "
                f"({_first_line(exc)}); they will be published again"
            ) from None
        acks: list[Ack] = []
        for event, ack in zip(events, done, strict=True):
            if isinstance(ack, BaseException):
                if isinstance(ack, nats.js.errors.NoStreamResponseError):
                    reason = (
                        f"no JetStream stream takes subject {self.subject(event.event_type)!r}"
                    )
                elif isinstance(ack, nats.js.errors.APIError):
                    reason = ack.description or _first_line(ack)
                else:
                    reason = _first_line(ack)
                raise RelayError(
                    f"NATS at {redact_url(self.url)} refused event {event.id} (position "
                    f"{event.position}): {reason}"
                )
            acks.append(Ack(int(ack.seq), bool(ack.duplicate)))
        return acks

    def close(self) -> None:
        if self._loop.is_closed():
            return
        nc, self._nc, self._js = self._nc, None, None
        try:
            if nc is not None and not nc.is_closed:
                self._run(nc.close())
        except (TimeoutError, nats.errors.Error, OSError):
            pass  # closing a broken connection: nothing left to flush
        finally:
            self._loop.close()

    def __enter__(self) -> JetStreamSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
