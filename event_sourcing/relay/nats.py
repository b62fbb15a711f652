"""The NATS JetStream sink: subject `<prefix>.<event_type>`, the event id as `Nats-Msg-Id`.

nats-py is asynchronous; the sink owns a private event loop so the relay stays synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
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


@dataclass
class _PendingBatch:
    """The acks of the batch in flight: one slot per message, an Ack or the broker's error."""

    batch: int
    size: int
    done: asyncio.Future[None]
    received: int = 0
    answers: list[Ack | str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.answers = [None] * self.size


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
        self._inbox: str | None = None
        self._batch = 0
        self._pending: _PendingBatch | None = None
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
                skip_subject_validation=True,  # subjects are built from checked tokens
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

    def last_position(self) -> int | None:
        """The `Mlevents-Position` of the stream's last message under `<prefix>.>`."""
        return self._run(self._last_position())

    async def _last_position(self) -> int | None:
        js = self._js
        if js is None:
            raise RelayError(f"the sink {self.description} is closed")
        try:
            message = await js.get_last_msg(self.stream, f"{self.prefix}.>")
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise RelayError(
                f"cannot read the last message of stream {self.stream!r} on "
                f"{redact_url(self.url)}: {_first_line(exc)}"
            ) from None
        value = (message.headers or {}).get("Mlevents-Position")
        return int(value) if value and value.isdigit() else None

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
        """Pipelined: every message goes out with a reply subject of its own (batch number and
        index), then the acks are awaited together. Leaner than nats-py's publish_async, which
        costs a future, a semaphore and a dataclass per message."""
        nc = self._nc
        if nc is None:
            raise RelayError(f"the sink {self.description} is closed")
        if self._inbox is None:
            self._inbox = f"{nc.new_inbox()}."
            await nc.subscribe(f"{self._inbox}*.*", cb=self._on_ack)
        self._batch += 1
        count = len(events)
        pending = self._pending = _PendingBatch(self._batch, count, self._loop.create_future())
        reply = f"{self._inbox}{self._batch}."
        subject = self.subject
        publish = nc.publish
        try:
            for index, event in enumerate(events):
                await publish(
                    subject(event.event_type),
                    encode_event(event),
                    reply=f"{reply}{index}",
                    headers={"Nats-Msg-Id": event.id, "Mlevents-Position": str(event.position)},
                )
            await asyncio.wait_for(asyncio.shield(pending.done), self.ack_timeout)
        except (TimeoutError, nats.errors.Error) as exc:
            raise RelayError(
                f"NATS at {redact_url(self.url)} did not acknowledge {count - pending.received} "
                f"of {count} message(s) from position {events[0].position} within "
                f"{self.ack_timeout:g} s ({_first_line(exc)}); they will be published again"
            ) from None
        finally:
            self._pending = None
        acks: list[Ack] = []
        for event, answer in zip(events, pending.answers, strict=True):
            if isinstance(answer, Ack):
                acks.append(answer)
                continue
            raise RelayError(
                f"NATS at {redact_url(self.url)} refused event {event.id} (position "
                f"{event.position}) on {self.subject(event.event_type)!r}: {answer}"
            )
        return acks

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending
        batch, _, index = msg.subject[len(self._inbox or ""):].partition(".")
        if pending is None or int(batch) != pending.batch:
            return  # the answer to a batch given up on (timed out): it is published again
        answer: Ack | str
        if msg.headers and msg.headers.get("Status") == "503":
            answer = "no JetStream stream takes this subject"
        else:
            reply = orjson.loads(msg.data)
            error = reply.get("error")
            if error is None:
                answer = Ack(int(reply["seq"]), bool(reply.get("duplicate")))
            else:
                answer = str(error.get("description") or error)
        slot = int(index)
        if pending.answers[slot] is None:
            pending.answers[slot] = answer
            pending.received += 1
            if pending.received == len(pending.answers) and not pending.done.done():
                pending.done.set_result(None)

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
