"""The DashScope API for debugging: each turn runs to completion, then streams in small pieces."""

from fastapi_server.serve import AGENT_APP, run, settings_from_flags

if __name__ == "__main__":
    settings = settings_from_flags(None, description=__doc__, port=8588, open_host="0.0.0.0")
    settings = settings.model_copy(update={"dashscope_fake_stream": True})
    raise SystemExit(run(AGENT_APP, settings=settings, host=settings.host, port=settings.port))
