"""Model facts from configs/models.json: context windows, prices, and `*-auto` model resolution."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 32768
PRICE_UNIT_TOKENS = 1000


@dataclass(frozen=True)
class ModelInfo:
    """One model: its window in tokens and prices per 1K tokens (None: unknown)."""

    window: int | None = None
    input: float | None = None
    output: float | None = None
    cached: float | None = None
    auto: tuple[str, ...] = ()


class ModelCatalog:
    """Windows and prices per model name; unknown models get `default_window` and no cost."""

    def __init__(
        self,
        models: dict[str, ModelInfo],
        *,
        currency: str = "CNY",
        default_window: int = DEFAULT_WINDOW,
    ) -> None:
        self.models = models
        self.currency = currency
        self.default_window = default_window

    @classmethod
    def load(cls, path: Path | str | None) -> ModelCatalog:
        """Read the catalog; a missing or broken file gives an empty one (and a warning): the
        server still runs, with default windows and no costs."""
        if path is None:
            return cls({})
        try:
            return cls.read(path)
        except (OSError, ValueError) as exc:
            logger.warning("model catalog %s not loaded (%s): windows default, no costs", path, exc)
            return cls({})

    @classmethod
    def read(cls, path: Path | str) -> ModelCatalog:
        """Read the catalog, or raise OSError / ValueError saying why not (`lang-agent doctor`)."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("the models file must hold a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelCatalog:
        models: dict[str, ModelInfo] = {}
        for name, entry in (raw.get("models") or {}).items():
            if not isinstance(entry, dict):
                continue
            models[name] = ModelInfo(
                window=_int_or_none(entry.get("window")),
                input=_float_or_none(entry.get("input")),
                output=_float_or_none(entry.get("output")),
                cached=_float_or_none(entry.get("cached")),
                auto=tuple(entry.get("auto") or ()),
            )
        return cls(
            models,
            currency=str(raw.get("currency") or "CNY"),
            default_window=int(raw.get("default_window") or DEFAULT_WINDOW),
        )

    def get(self, model: str | None) -> ModelInfo | None:
        """The entry for `model`, also for a dated or suffixed variant (`qwen-plus-2025-07-28`)."""
        if not model:
            return None
        name = model.rpartition(":")[2] if ":" in model else model
        if name in self.models:
            return self.models[name]
        prefixes = [key for key in self.models if name.startswith(key + "-")]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def known(self, model: str | None) -> bool:
        return self.get(model) is not None

    def window(self, model: str | None) -> int:
        """The context window in tokens; an auto model reports its largest candidate."""
        info = self.get(model)
        if info is None:
            return self.default_window
        if info.auto:
            windows = [self.window(name) for name in info.auto]
            return max(windows) if windows else self.default_window
        return info.window or self.default_window

    def resolve_auto(self, model: str, needed_tokens: int) -> str:
        """For an auto model, the smallest candidate whose window holds `needed_tokens`."""
        info = self.get(model)
        if info is None or not info.auto:
            return model
        candidates = sorted(info.auto, key=self.window)
        for name in candidates:
            if needed_tokens <= self.window(name):
                return name
        return candidates[-1]

    def cost(
        self, model: str | None, prompt: int | None, completion: int | None, cached: int | None = 0
    ) -> float | None:
        """Price of one call in `currency`; None when the model or its prices are unknown."""
        info = self.get(model)
        if info is not None and info.auto:
            info = self.get(self.resolve_auto(model or "", (prompt or 0) + (completion or 0)))
        if info is None or info.input is None or info.output is None:
            return None
        prompt, completion, cached = prompt or 0, completion or 0, min(cached or 0, prompt or 0)
        cached_price = info.input if info.cached is None else info.cached
        total = (prompt - cached) * info.input + cached * cached_price + completion * info.output
        return round(total / PRICE_UNIT_TOKENS, 8)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
