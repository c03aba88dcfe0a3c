"""`calls replay` sends each recorded header once, and a Date even when none was recorded."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import httpx2

from lang_agent.capture.replay import ReplayCase, ReplayServer

RECORDED_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


async def answer(case: ReplayCase) -> httpx2.Response:
    server = ReplayServer(case)
    url = await server.start()
    try:
        async with httpx2.AsyncClient() as http:
            return await http.post(f"{url}/chat/completions", json={"model": "m"})
    finally:
        await server.stop()


async def test_recorded_date_and_server_are_sent_once():
    headers = {"date": RECORDED_DATE, "server": "upstream/1", "content-type": "application/json"}
    response = await answer(ReplayCase(status_code=200, headers=headers, body=b"{}"))
    assert response.status_code == 200 and response.json() == {}
    assert response.headers.get_list("date") == [RECORDED_DATE]
    assert response.headers.get_list("server") == ["upstream/1"]


async def test_a_recording_without_headers_still_gets_a_date():
    response = await answer(ReplayCase(status_code=None, error="ConnectError: refused"))
    assert response.status_code == 502
    (date,) = response.headers.get_list("date")
    assert parsedate_to_datetime(date).tzinfo is not None
    assert "server" not in response.headers
