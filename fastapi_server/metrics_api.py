"""GET /metrics: Prometheus text, the capture layer's (`app.state.recorder`) and the server's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from lang_agent.capture.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Calls by model and status, latency and TTFT histograms, tokens, cost, dropped rows; turns
    in flight and the event loop's lag."""
    recorder = getattr(request.app.state, "recorder", None)
    source: Metrics = recorder.metrics if recorder is not None else Metrics()
    service = getattr(request.app.state, "service", None)
    extra = service.metrics_lines() if service is not None else ()
    return PlainTextResponse(source.render(extra), media_type=CONTENT_TYPE)
