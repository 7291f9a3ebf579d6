"""edgeq.targets: target hardware profiles, as data (``profiles/*.toml``), validated by ``profile``."""

from edgeq.targets.profile import KNOWN_TASKS, ShapeRange, TargetProfile, TaskShapes
from edgeq.targets.registry import aliases, get_profile, list_profiles, load_profile_file, profile_hash, profile_names

__all__ = [
    "KNOWN_TASKS", "ShapeRange", "TargetProfile", "TaskShapes",
    "aliases", "get_profile", "list_profiles", "load_profile_file", "profile_hash", "profile_names",
]
