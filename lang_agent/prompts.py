"""System prompts from configs/route_sys_prompts/*.txt, rendered fresh for every model call."""

from __future__ import annotations

from pathlib import Path

PROMPT_NAMES = ("route_prompt", "chat_prompt", "tool_prompt", "chatty_prompt")


class Prompts:
    """The four route prompts. Placeholders like `{current_time}` are filled per call; other
    braces (JSON examples) are left alone, so the files need no escaping."""

    def __init__(self, texts: dict[str, str]) -> None:
        missing = [name for name in PROMPT_NAMES if name not in texts]
        if missing:
            raise ValueError(f"missing prompt(s): {', '.join(missing)}")
        self.texts = texts

    @classmethod
    def load(cls, directory: Path) -> Prompts:
        texts = {}
        for name in PROMPT_NAMES:
            path = directory / f"{name}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"prompt file {path} is missing")
            texts[name] = path.read_text(encoding="utf-8").strip()
        return cls(texts)

    def render(self, name: str, **values: str) -> str:
        text = self.texts[name]
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        return text
