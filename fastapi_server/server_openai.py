"""Run the agent API, its OpenAI and DashScope paths, without the viewer on 127.0.0.1:8589
(`--host`, `--port` to change)."""

from fastapi_server.serve import AGENT_APP, run, settings_from_flags

if __name__ == "__main__":
    settings = settings_from_flags(None, description=__doc__, port=8589)
    raise SystemExit(run(AGENT_APP, settings=settings, host=settings.host, port=settings.port))
