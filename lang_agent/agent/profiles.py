"""Pipeline profiles from configs/profiles.json, chosen per request (the DashScope app_id)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lang_agent.agent.state import Profile
from lang_agent.llm.factory import ModelFactory, ModelSpec
from lang_agent.settings import ROLES, Role, model_name

PROFILE_KEYS = frozenset({"filler", "models"})


def load_profiles(path: Path, *, default: str = "default") -> dict[str, Profile]:
    """Profiles by name; a missing file gives just the default profile. `default`
    (DEFAULT_PROFILE, what unknown app ids get) must be one of them."""
    profiles = _read(path)
    if default not in profiles:
        # Unknown app ids got the built-in default, not the product the operator named.
        raise ValueError(
            f"DEFAULT_PROFILE {default!r} is not a profile of {path}"
            f" (profiles: {', '.join(sorted(profiles))})"
        )
    return profiles


def _read(path: Path) -> dict[str, Profile]:
    profiles = {"default": Profile()}
    if not path.exists():
        return profiles
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except OSError as exc:  # a directory, no permission: not a missing file, not the default
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: profiles must be an object of name: profile")
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        where = f"{path}: profile {name!r}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be an object")
        # A misspelt key or role would be ignored without a word, and "false" read as true.
        unknown = sorted(set(spec) - PROFILE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown {', '.join(unknown)} (known: filler, models)")
        filler = spec.get("filler", True)
        if not isinstance(filler, bool):
            raise ValueError(f"{where}: filler must be true or false, not {filler!r}")
        models = spec.get("models", {})
        if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
            raise ValueError(f"{where}: models must map role to model name")
        roles = sorted(set(models) - set(ROLES))
        if roles:
            raise ValueError(
                f"{where}: unknown role {', '.join(roles)} (roles: {', '.join(ROLES)})"
            )
        for role, model in models.items():
            try:
                model_name(model)
            except ValueError as exc:
                raise ValueError(f"{where}: {role}: {exc}") from None
        profiles[name] = Profile(name=name, filler=filler, models=models)
    return profiles


def profile_models(profiles: dict[str, Profile]) -> list[str]:
    """Every model a profile names, for what must be ready for them (the simulator)."""
    return [model for profile in profiles.values() for model in profile.models.values()]


def profile_specs(
    factory: ModelFactory, profiles: dict[str, Profile]
) -> Iterator[tuple[str, Role, str, ModelSpec]]:
    """Each model a profile gives a role of its own: (profile, role, model name, its spec)."""
    for name, profile in profiles.items():
        for role, model in profile.models.items():
            yield name, role, model, factory.spec(role, model=model)
