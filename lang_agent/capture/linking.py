"""Conversations of calls that carry no thread (any client behind the proxy), linked by their
messages: a chat client sends its whole conversation again with every request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import AsyncConnection

# Roles a client may render afresh on every request (a prompt with the time in it): they
# neither split a conversation nor stop a request continuing the one before.
INSTRUCTION_ROLES = frozenset({"system", "developer"})
# The calls sharing a call's first user message, a day either side of it: the 5,000 nearest
# to it by id (a common opening, "你好", can have many more), chosen by id alone first.
GROUP_SQL = """
SELECT id, request_body -> 'messages' AS messages,
       response_body -> 'choices' -> 0 -> 'message' AS answer
FROM llm_calls
WHERE id IN (
    SELECT id FROM llm_calls
    WHERE conversation_key = %(key)s AND thread_id IS NULL
      AND created_at BETWEEN %(at)s - interval '1 day' AND %(at)s + interval '1 day'
    ORDER BY abs(id - %(id)s)
    LIMIT 5000
)
ORDER BY id
"""


def _text(content: Any) -> Any:
    """A message's content as the linking compares it: text parts joined into one string,
    ends stripped (clients send the same words as a string or as parts, and may trim)."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        content = "".join(str(p.get("text", "")) for p in content)
    return content.strip() if isinstance(content, str) else content or ""


def _normal(message: Any) -> Any:
    """What identifies a message, whatever form a client sends it back in: its role, text,
    tool calls (id, name, arguments), the call a tool result answers, and a name."""
    if not isinstance(message, dict):
        return message
    calls = [
        (
            c.get("id"),
            (c.get("function") or {}).get("name"),
            (c.get("function") or {}).get("arguments"),
        )
        for c in message.get("tool_calls") or ()
        if isinstance(c, dict) and isinstance(c.get("function") or {}, dict)
    ]
    return [
        message.get("role"),
        _text(message.get("content")),
        calls,
        message.get("tool_call_id"),
        message.get("name"),
    ]


def _canonical(value: Any) -> bytes:
    # ASCII: a lone surrogate (a cut emoji) has no UTF-8, and a call must never fail for this.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def conversation_key(body: Any) -> str | None:
    """What groups a call with the others of its conversation: a digest of its first user
    message's text, which every later request repeats. None for a body without one (cut when
    stored, or not a chat request)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            text = _canonical(_text(message.get("content")))
            return hashlib.blake2b(text, digest_size=16).hexdigest()
    return None


def _split(messages: Any) -> tuple[list[Any], list[Any]]:
    """(instructions, dialogue): the system and developer messages, and the others."""
    instructions: list[Any] = []
    dialogue: list[Any] = []
    for message in messages if isinstance(messages, list) else ():
        instruction = isinstance(message, dict) and message.get("role") in INSTRUCTION_ROLES
        (instructions if instruction else dialogue).append(message)
    return instructions, dialogue


def _digests(dialogue: list[Any]) -> list[bytes]:
    """For each n, a digest of the first n messages of a dialogue."""
    digest, out = hashlib.blake2b(digest_size=16), []
    for message in dialogue:
        digest.update(_canonical(_normal(message)) + b"\x1e")
        out.append(digest.copy().digest())
    return out


def _reply(message: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """An assistant message as a client sends it back: its text and its tool calls' ids."""
    if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
        return None
    calls = message.get("tool_calls") or ()
    ids = tuple(c.get("id") or "" for c in calls if isinstance(c, dict))
    return _text(message.get("content")), ids


def parents(calls: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Call id → the id of the call it continues, for calls given in id order with their
    `messages` and recorded `answer`.

    A call whose messages (instructions aside) are those of the latest earlier call with
    them, and that call got no answer, is a retry of it. Otherwise it continues an earlier
    call whose messages begin its own: of those, one with the most messages; then one whose
    answer is the message that follows; then one with the same instructions; then the
    latest. Conversations alike in all of these cannot be told apart."""
    by_dialogue: dict[bytes, list[tuple[dict[str, Any], bytes]]] = {}
    found: dict[int, int] = {}
    for call in calls:
        said, dialogue = _split(call["messages"])
        digests = _digests(dialogue)
        instructions = _canonical([_normal(m) for m in said])
        same = by_dialogue.get(digests[-1], []) if digests else []
        if same and not same[-1][0]["answer"]:
            found[call["id"]] = same[-1][0]["id"]
        else:
            for n in range(len(dialogue) - 1, 0, -1):
                earlier = by_dialogue.get(digests[n - 1])
                if earlier:
                    found[call["id"]] = _choose(earlier, _reply(dialogue[n]), instructions)
                    break
        if digests:
            by_dialogue.setdefault(digests[-1], []).append((call, instructions))
    return found


def _choose(
    earlier: list[tuple[dict[str, Any], bytes]],
    following: tuple[Any, tuple[Any, ...]] | None,
    instructions: bytes,
) -> int:
    """Of the calls a call may continue, the id of the one most like its parent."""

    def likeness(candidate: tuple[dict[str, Any], bytes]) -> tuple[bool, bool]:
        answered = following is not None and _reply(candidate[0]["answer"]) == following
        return answered, candidate[1] == instructions

    chosen, _ = max(reversed(earlier), key=likeness)  # max keeps the first of equals: the latest
    return chosen["id"]


def connected(call_id: int, links: dict[int, int]) -> list[int]:
    """The ids of the conversation `call_id` is in, in id order: the calls it continues, back
    to the first, itself, and every call that continues it. Another conversation that shares
    its beginning branches off before it, and is not in it."""
    members = [call_id]
    while members[-1] in links:
        members.append(links[members[-1]])
    children: dict[int, list[int]] = {}
    for child, parent in links.items():
        children.setdefault(parent, []).append(child)
    todo = list(children.get(call_id, ()))
    while todo:
        current = todo.pop()
        members.append(current)
        todo.extend(children.get(current, ()))
    return sorted(members)


async def conversation_calls(conn: AsyncConnection, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls sharing `row`'s first user message near it (GROUP_SQL), in id order."""
    key = row.get("conversation_key")
    if key is None or row.get("thread_id") is not None:
        return []
    cursor = await conn.execute(GROUP_SQL, {"key": key, "at": row["created_at"], "id": row["id"]})
    return list(await cursor.fetchall())


def linked_ids(
    row: dict[str, Any], group: Iterable[dict[str, Any]]
) -> tuple[int | None, list[int]]:
    """The call `row` continues (None for the first of its conversation) and the ids of its
    conversation."""
    links = parents(list(group))
    return links.get(row["id"]), connected(row["id"], links)
