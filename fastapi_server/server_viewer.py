"""Run the conversation viewer on 127.0.0.1:8590 (`--host`, `--port` to change)."""

import argparse

import uvicorn

from fastapi_server.serve import (
    STARTUP_FAILURE,
    configure_logging,
    database_or_exit,
    serve_until_stopped,
    server_config,
    settings_or_exit,
    warn_of_short_keys,
)
from fastapi_server.viewer import create_viewer_app

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=None, help="bind address (default: VIEWER_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default: VIEWER_PORT)")
    args = parser.parse_args()
    flags = {"viewer_host": args.host, "viewer_port": args.port}
    settings = settings_or_exit(**{k: v for k, v in flags.items() if v is not None})
    configure_logging(settings)
    warn_of_short_keys(settings)
    database_or_exit(settings)
    config = server_config(
        create_viewer_app(settings),
        settings,
        host=settings.viewer_host,
        port=settings.viewer_port,
    )
    server = uvicorn.Server(config)
    serve_until_stopped([server])
    raise SystemExit(0 if server.started else STARTUP_FAILURE)
