"""GET /metrics: the capture layer's Prometheus text, read from `app.state.recorder`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from lang_agent.capture.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Calls by model and status, latency and TTFT histograms, tokens, cost, dropped rows."""
    recorder = getattr(request.app.state, "recorder", None)
    source: Metrics = recorder.metrics if recorder is not None else Metrics()
    return PlainTextResponse(source.render(), media_type=CONTENT_TYPE)
