"""Request parts both front ends accept: a thread's id and a tool call in the client's history."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictStr

MAX_THREAD_ID_CHARS = 200


def thread_key(value: str) -> str:
    """A thread id as stored: trimmed, 1 to 200 characters, no control characters (Postgres
    text cannot hold NUL, and the others have no business in a key)."""
    text = value.strip()
    if not 1 <= len(text) <= MAX_THREAD_ID_CHARS:
        raise ValueError(f"must be 1 to {MAX_THREAD_ID_CHARS} characters")
    if any(char < " " or char == "\x7f" for char in text):
        raise ValueError("must not hold control characters")
    return text


ThreadKey = Annotated[str, AfterValidator(thread_key)]


def session_thread(app_id: str, session_id: str) -> str:
    """The thread of a DashScope app's session, `APP_ID/SESSION_ID`. A session belongs to its
    app, as on DashScope: two products on one server (two app ids) that send one session_id
    (a user's or a device's own id) keep apart memories, and one's barge-in never ends the
    other's turn. A slash cannot be part of an app id in the URL path, so the split is plain."""
    return thread_key(f"{app_id}/{session_id}")


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: StrictStr
    # OpenAI sends the arguments as a JSON string; some clients send the object itself.
    arguments: StrictStr | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    """An assistant message's tool call, as OpenAI and xiaozhi send them back in history."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCall

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
