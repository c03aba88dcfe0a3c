"""Run the agent API for xiaozhi's AliBL provider on port 8588: the DashScope Application API
paths, and the OpenAI ones too, without the viewer.

Binds 0.0.0.0 once FAST_AUTH_KEYS is set, loopback until then. `route PROFILE` picks the
default pipeline profile, e.g. `python fastapi_server/server_dashscope.py route chatty_tool_node`.
"""

from fastapi_server.serve import AGENT_APP, run, settings_from_flags

if __name__ == "__main__":
    settings = settings_from_flags(None, description=__doc__, port=8588, open_host="0.0.0.0")
    raise SystemExit(run(AGENT_APP, settings=settings, host=settings.host, port=settings.port))
