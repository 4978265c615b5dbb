"""Dev diagnostics (the seed's YAML dev extras): ``/audit`` and ``/events``, on localhost only.

``/audit`` returns the last audit events as JSON; ``/events`` streams new ones
as Server-Sent Events. Both exist only with SECRETGRANTS_DEV_MODE=true and
always bind 127.0.0.1. Audit events carry no values or paths.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from secretgrants.audit import MemorySink

__all__ = ["DiagnosticsServer"]

log = logging.getLogger("secretgrants.diagnostics")
LOCALHOST = "127.0.0.1"
KEEPALIVE_SECONDS = 15.0


class DiagnosticsServer:
    def __init__(self, memory: MemorySink, keepalive_seconds: float = KEEPALIVE_SECONDS) -> None:
        self.memory = memory
        self.keepalive_seconds = keepalive_seconds
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/audit", self._audit)
        app.router.add_get("/events", self._events)
        return app

    async def start(self, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, port).start()
        log.info("dev diagnostics on http://%s:%d/audit and /events", LOCALHOST, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _audit(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 1000))
        except ValueError:
            return web.json_response(
                {"type": "about:blank", "title": "limit must be an integer", "status": 400},
                status=400,
                content_type="application/problem+json",
            )
        events = list(self.memory.events)[-limit:]
        return web.json_response([json.loads(e.to_json()) for e in events])

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue = self.memory.listen()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.keepalive_seconds):  # not wait_for: 3.11
                        event = await queue.get()  # lost a cancellation that came as it ended
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                payload = (
                    f"event: {event.type.value}\nid: {event.event_id}\ndata: {event.to_json()}\n\n"
                )
                await response.write(payload.encode())
        finally:
            self.memory.unlisten(queue)
        return response
