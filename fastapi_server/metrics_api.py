"""GET /metrics: Prometheus text, the capture layer's (`app.state.recorder`) and the server's;
in a worker group, the sum over its workers (`group_metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse

from lang_agent.capture.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Calls by model and status, latency and TTFT histograms, tokens, cost, dropped rows; turns
    in flight, turns ended by front end and status, and the event loop's lag."""
    group = getattr(request.app.state, "group_metrics", None)
    body = group.collect() if group is not None else render(request.app)
    return PlainTextResponse(body, media_type=CONTENT_TYPE)


def render(app: FastAPI) -> str:
    """This process's figures."""
    recorder = getattr(app.state, "recorder", None)
    source: Metrics = recorder.metrics if recorder is not None else Metrics()
    service = getattr(app.state, "service", None)
    extra = service.metrics_lines() if service is not None else ()
    return source.render(extra)
