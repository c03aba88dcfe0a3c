"""lang-agent: a LangGraph voice-agent server for the xiaozhi speaker."""

__version__ = "0.1.0"
