"""Pipeline profiles from configs/profiles.json, chosen per request (the DashScope app_id)."""

from __future__ import annotations

import json
from pathlib import Path

from lang_agent.agent.state import Profile


def load_profiles(path: Path) -> dict[str, Profile]:
    """Profiles by name; a missing file gives just the default profile."""
    profiles = {"default": Profile()}
    if not path.is_file():
        return profiles
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: profiles must be an object of name: profile")
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: profile {name!r} must be an object")
        models = spec.get("models", {})
        if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
            raise ValueError(f"{path}: profile {name!r}: models must map role to model name")
        profiles[name] = Profile(name=name, filler=bool(spec.get("filler", True)), models=models)
    return profiles
