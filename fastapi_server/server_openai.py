"""Run the OpenAI-compatible agent API on 127.0.0.1:8589 (`--host`, `--port` to change)."""

from fastapi_server.app import create_app
from fastapi_server.serve import run, settings_from_flags

if __name__ == "__main__":
    settings = settings_from_flags(None, description=__doc__, port=8589)
    raise SystemExit(run(create_app, settings=settings, host=settings.host, port=settings.port))
