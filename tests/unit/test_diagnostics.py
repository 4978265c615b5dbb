"""Dev diagnostics: /audit and /events over a real localhost port (secretgrants.diagnostics)."""

from __future__ import annotations

import asyncio
import json

import httpx

from secretgrants.audit import Auditor, Effect, EventType, MemorySink
from secretgrants.devenv import free_port
from secretgrants.diagnostics import DiagnosticsServer


async def test_audit_and_event_stream() -> None:
    memory = MemorySink()
    auditor = Auditor([memory])
    server = DiagnosticsServer(memory, keepalive_seconds=0.2)
    port = free_port()
    await server.start(port)
    base = f"http://127.0.0.1:{port}"
    try:
        await auditor.record(type=EventType.DECISION, effect=Effect.PERMIT, reason="first")
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            listed = (await client.get("/audit")).json()
            assert [e["reason"] for e in listed] == ["first"]
            bad = await client.get("/audit", params={"limit": "x"})
            assert bad.status_code == 400 and bad.json()["status"] == 400
            async with client.stream("GET", "/events") as stream:
                await asyncio.sleep(0.1)  # the server registers the listener
                await auditor.record(type=EventType.EXPIRED, effect=Effect.DENY, reason="later")
                lines = stream.aiter_lines()
                got: list[str] = []
                while not any(line.startswith("data:") for line in got):
                    got.append(await asyncio.wait_for(anext(lines), 5))
        assert "event: expired" in got
        data = json.loads(next(line for line in got if line.startswith("data:"))[5:])
        assert data["reason"] == "later"
    finally:
        await server.stop()
