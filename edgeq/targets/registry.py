"""Target profile registry: every ``*.toml`` in the profile directories is one target.

The built-in directory is ``edgeq/targets/profiles``; ``EDGEQ_TARGETS_PATH`` (os.pathsep-separated)
or the ``search_path`` argument adds more, so adding a target is adding a file. Later directories
override earlier ones by name. A profile's ``aliases`` are names it also answers to (a renamed target
keeps its old name working); an alias may not be another profile's name or another profile's alias.
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from edgeq.errors import ConfigError, UnknownTargetError
from edgeq.targets.profile import TargetProfile

BUILTIN_DIR = Path(__file__).with_name("profiles")
ENV_PATH = "EDGEQ_TARGETS_PATH"


def _dirs(search_path: list[str | Path] | None) -> list[Path]:
    dirs = [BUILTIN_DIR]
    env = os.environ.get(ENV_PATH, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (search_path or [])]
    return dirs


def load_profile_file(path: str | Path) -> TargetProfile:
    """Parse and validate one profile TOML; the file name (without .toml) must equal its ``name``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read target profile {path}: {exc.strerror}") from exc
    profile = TargetProfile.from_dict(data, source=str(path))
    if profile.name != path.stem:
        raise ConfigError(f"{path}: profile name {profile.name!r} must match the file name {path.stem!r}")
    return profile


def _files(search_path: list[str | Path] | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _dirs(search_path):
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found[f.stem] = f
    return found


def list_profiles(search_path: list[str | Path] | None = None) -> list[TargetProfile]:
    """All known target profiles, sorted by name (each validated)."""
    return [load_profile_file(p) for _name, p in sorted(_files(search_path).items())]


def profile_names(search_path: list[str | Path] | None = None) -> list[str]:
    return sorted(_files(search_path))


def aliases(search_path: list[str | Path] | None = None) -> dict[str, str]:
    """alias -> profile name, over every profile; ConfigError when two profiles claim one name."""
    profiles = list_profiles(search_path)
    names = {p.name for p in profiles}
    out: dict[str, str] = {}
    for p in profiles:
        for alias in p.aliases:
            if alias in names or alias in out:
                other = alias if alias in names else out[alias]
                raise ConfigError(f"target alias {alias!r} of {p.name} is already the name or an alias of {other}",
                                  hint="remove the alias from one of the two profiles")
            out[alias] = p.name
    return out


def get_profile(name: str, search_path: list[str | Path] | None = None) -> TargetProfile:
    """The profile called ``name`` (or aliased so); UnknownTargetError lists the valid names."""
    files = _files(search_path)
    if name in files:
        return load_profile_file(files[name])
    # only an unknown name pays for reading every profile (aliases live inside the files)
    known_aliases = aliases(search_path)
    canonical = known_aliases.get(name)
    if canonical is None:
        valid = ", ".join(sorted(files)) + (f"; aliases: {', '.join(sorted(known_aliases))}" if known_aliases else "")
        raise UnknownTargetError(f"unknown target {name!r}; valid targets: {valid}", hint="see `edgeq targets`")
    return load_profile_file(files[canonical])


def profile_hash(profile: TargetProfile) -> str:
    """SHA-256 of the profile's canonical JSON: recorded in manifests so a bundle names its exact target.

    Aliases are left out: another name for a target changes nothing an engine is built for."""
    d = profile.to_dict()
    d.pop("aliases", None)
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()
