"""Run the conversation viewer on 127.0.0.1:8590 (`--host`, `--port` to change)."""

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from fastapi_server.serve import STARTUP_FAILURE, configure_logging, serve, uvicorn_config
from fastapi_server.viewer import create_viewer_app
from lang_agent import loop
from lang_agent.settings import Settings

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=None, help="bind address (default: VIEWER_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default: VIEWER_PORT)")
    args = parser.parse_args()
    flags = {"viewer_host": args.host, "viewer_port": args.port}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        sys.stderr.write(f"error: {exc.errors()[0]['msg']}\n")
        raise SystemExit(STARTUP_FAILURE) from exc
    configure_logging(settings)
    config = uvicorn_config(
        create_viewer_app(settings), host=settings.viewer_host, port=settings.viewer_port
    )
    server = uvicorn.Server(config)
    loop.run(serve([server]))
    raise SystemExit(0 if server.started else STARTUP_FAILURE)
