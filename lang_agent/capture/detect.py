"""Detectors whose verdicts are stored with each call: truncation, repeat loops, context pre-flight.

The repeat detector judges only recent output. Text is normalised (every run of digits becomes
`0`, whitespace collapses) and cut into 12-character n-grams. An n-gram is "stale" when the
remembered window (4000 n-grams) already holds it twice; the verdict is "repeat" when, among the
last `min_length` n-grams, the share of fresh ones falls below `threshold`. A loop drives that
share to 0 from its third period on, wherever it starts; a near-loop whose numbers change
normalises to a verbatim one; prose that quotes a sentence once or twice (legal boilerplate,
docstrings) stays above 0.6. Code that copy-pastes itself can trip it, as any loop would.
Memory and work per character are constant.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.llm.tokens import MESSAGE_OVERHEAD_TOKENS, estimate_tokens


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a chat request: messages, tool calls and tool schemas."""
    total = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(_content_text(message.get("content")))
        total += estimate_tokens(str(message.get("reasoning_content") or ""))
        for call in message.get("tool_calls") or []:
            total += estimate_tokens(json.dumps(call, ensure_ascii=False))
    if body.get("tools"):
        total += estimate_tokens(json.dumps(body["tools"], ensure_ascii=False))
    return total


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) else None


def preflight(body: dict[str, Any], *, catalog: ModelCatalog) -> dict[str, Any] | None:
    """Before sending: does prompt_tokens + max_tokens fit the window? Picks an auto model."""
    model = body.get("model")
    if not isinstance(model, str) or not catalog.known(model):
        return None
    prompt = estimate_prompt_tokens(body)
    max_tokens = requested_max_tokens(body)
    needed = prompt + (max_tokens or 0)
    resolved = catalog.resolve_auto(model, needed)
    window = catalog.window(resolved)
    return {
        "model": model,
        "resolved_model": resolved,
        "window": window,
        "estimated_prompt_tokens": prompt,
        "max_tokens": max_tokens,
        "fits": needed <= window,
    }


def truncation(
    finish_reason: str | None,
    *,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    catalog: ModelCatalog,
) -> dict[str, Any] | None:
    """finish_reason "length": the verdict with a max_tokens that would have fitted the window."""
    if finish_reason != "length":
        return None
    window = catalog.window(model)
    suggested = window - prompt_tokens if prompt_tokens is not None else None
    return {
        "completion_tokens": completion_tokens,
        "prompt_tokens": prompt_tokens,
        "window": window,
        "suggested_max_tokens": suggested,
    }


def context_overflow(
    *, prompt_tokens: int | None, max_tokens: int | None, window: int
) -> dict[str, Any] | None:
    """After the call: the real prompt_tokens + max_tokens exceeded the window."""
    if prompt_tokens is None or max_tokens is None or prompt_tokens + max_tokens <= window:
        return None
    return {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "window": window}


@dataclass(frozen=True)
class RepeatConfig:
    """Repeat detection: `cut` stops the stream (opt-in); otherwise the verdict is only stored."""

    threshold: float = 0.5
    min_length: int = 200
    window: int = 4000
    gram: int = 12
    repeats: int = 2
    cut: bool = False


class _Track:
    """One output field of one choice, judged over a bounded window.

    No verdict is possible before `min_length` n-grams, so text waits unjudged until the field
    has `gram + min_length - 1` characters (normalising only shortens it): most spoken answers
    are shorter, and the character loop is a turn's costliest per-character work."""

    def __init__(self, config: RepeatConfig) -> None:
        self.config = config
        self.unjudged: list[str] | None = []  # None once the field is long enough to judge
        self.judge_from = config.gram + config.min_length - 1
        self.counts: dict[str, int] = {}
        self.grams: deque[str] = deque()
        self.recent: deque[bool] = deque()
        self.recent_new = 0
        self.tail = ""
        self.chars = 0
        self.tokens = 0
        self.last: str = ""

    def feed(self, text: str) -> float | None:
        """Feed a delta; returns the novelty share when it fell below the threshold."""
        self.chars += len(text)
        self.tokens += estimate_tokens(text)
        if self.unjudged is not None:
            self.unjudged.append(text)
            if self.chars < self.judge_from:
                return None
            text, self.unjudged = "".join(self.unjudged), None
        verdict = None
        for char in text:
            if char.isdigit():
                if self.last == "0":
                    continue
                char = "0"
            elif char.isspace():
                if self.last == " ":
                    continue
                char = " "
            self.last = char
            novelty = self._add(char)
            if novelty is not None and verdict is None:
                verdict = novelty
        return verdict

    def _add(self, char: str) -> float | None:
        config = self.config
        self.tail = (self.tail + char)[-config.gram :]
        if len(self.tail) < config.gram:
            return None
        gram = self.tail
        seen = self.counts.get(gram, 0)
        self.counts[gram] = seen + 1
        self.grams.append(gram)
        if len(self.grams) > config.window:
            old = self.grams.popleft()
            left = self.counts[old] - 1
            if left:
                self.counts[old] = left
            else:
                del self.counts[old]
        fresh = seen < config.repeats
        self.recent.append(fresh)
        self.recent_new += fresh
        if len(self.recent) > config.min_length:
            self.recent_new -= self.recent.popleft()
        if len(self.recent) < config.min_length:
            return None
        novelty = self.recent_new / config.min_length
        return novelty if novelty < config.threshold else None


class RepeatDetector:
    """Watches `content` and `reasoning_content` of every choice; the first verdict is kept."""

    def __init__(self, config: RepeatConfig) -> None:
        self.config = config
        self.tracks: dict[tuple[int, str], _Track] = {}
        self.verdict: dict[str, Any] | None = None

    @property
    def output_tokens(self) -> int:
        """Estimated tokens generated so far, over every field and choice."""
        return sum(track.tokens for track in self.tracks.values())

    def feed(self, index: int, field: str, text: str) -> dict[str, Any] | None:
        """A delta of choice `index`; returns the verdict the first time a loop is seen."""
        if not text or self.verdict is not None:
            return None
        track = self.tracks.get((index, field))
        if track is None:
            track = self.tracks[(index, field)] = _Track(self.config)
        novelty = track.feed(text)
        if novelty is None:
            return None
        self.verdict = {
            "choice": index,
            "field": field,
            "at_chars": track.chars,
            "novelty": round(novelty, 3),
            "threshold": self.config.threshold,
            "cut": self.config.cut,
        }
        return self.verdict
