"""A tokenizer-free estimate of tokens, for fitting the context window and capture's checks."""

from __future__ import annotations

import re

# Runs, not single characters: a match per character built a string per character, four
# times the cost, and this runs on every prompt and on every streamed piece of an answer.
_CJK_RUN = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+")
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, per chat message


def estimate_tokens(text: str) -> int:
    """One token per CJK character, one per ~4 other characters."""
    cjk = sum(map(len, _CJK_RUN.findall(text)))
    return cjk + (len(text) - cjk + 3) // 4
