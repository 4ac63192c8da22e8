"""Admission control of the HTTP processes: at most *limit* requests at work, a body read
before a place is taken (a slow sender holds none), large uploads let through."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from mailer.asgi import Admission


def scope(path: str = "/api/v1/sms", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": headers or []}


class Recorder:
    """An app that holds each request for a while and records how many were at work."""

    def __init__(self) -> None:
        self.at_work = 0
        self.most = 0
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.at_work += 1
        self.most = max(self.most, self.at_work)
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await asyncio.sleep(0.01)
        self.at_work -= 1
        await send({"type": "http.response.start", "status": 202, "headers": []})


def receiver(*chunks: bytes, stall: asyncio.Event | None = None) -> Receive:
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        if stall is not None:
            await stall.wait()
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # no disconnect in these tests
        raise AssertionError

    return receive


async def ignore(_message: Message) -> None:
    return None


def test_no_more_than_the_limit_are_at_work_and_every_body_arrives_whole() -> None:
    app = Recorder()
    admission = Admission(app, limit=3)

    async def main() -> None:
        await asyncio.gather(
            *(
                admission(
                    scope(headers=[(b"content-length", b"6")]),
                    receiver(b"ab", b"c", f"{n:03d}".encode()),
                    ignore,
                )
                for n in range(20)
            )
        )

    asyncio.run(main())
    assert app.most == 3
    assert sorted(app.bodies) == sorted(f"abc{n:03d}".encode() for n in range(20))


def test_a_slow_sender_holds_no_place() -> None:
    app = Recorder()
    admission = Admission(app, limit=1)

    async def main() -> None:
        stall = asyncio.Event()
        slow = asyncio.create_task(
            admission(
                scope(headers=[(b"content-length", b"2")]), receiver(b"ok", stall=stall), ignore
            )
        )
        await asyncio.sleep(0)
        # The slow client has not sent its body: another request goes through meanwhile.
        await asyncio.wait_for(admission(scope(), receiver(b""), ignore), timeout=2)
        assert app.bodies == [b""]
        stall.set()
        await slow

    asyncio.run(main())
    assert app.bodies == [b"", b"ok"]


def test_large_uploads_and_static_files_do_not_wait() -> None:
    app = Recorder()
    admission = Admission(app, limit=1)
    large = str(Admission.BODY_LIMIT + 1).encode()

    async def main() -> None:
        await asyncio.gather(
            admission(scope(headers=[(b"content-length", large)]), receiver(b"x"), ignore),
            admission(scope(headers=[(b"transfer-encoding", b"chunked")]), receiver(b"y"), ignore),
            admission(scope("/static/app.css"), receiver(b""), ignore),
            admission(scope(), receiver(b""), ignore),
        )

    asyncio.run(main())
    assert app.most == 4  # none of the first three took the only place
