"""The conversation viewer: a read-only web UI over the conversation log and captured calls."""

from fastapi_server.viewer.app import create_viewer_app

__all__ = ["create_viewer_app"]
