"""Which board profile fits this machine? From the device-tree model or DMI, then the arch.

Evidence, strongest first: ``/proc/device-tree/model`` (ARM boards: "Raspberry Pi 5 Model B
Rev 1.0", "NVIDIA Jetson Orin Nano Developer Kit"), then DMI strings under
``/sys/class/dmi/id`` (PCs), then the machine architecture. Profiles declare what they match
in their ``[profile]`` table, so adding a board is adding a file.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from agent.config.profiles import Profile, list_profiles, load_profile

DMI_FIELDS = ("sys_vendor", "product_name", "product_family", "board_vendor", "board_name")


@dataclass(frozen=True)
class BoardFacts:
    """What the machine says about itself."""

    model: str = ""
    dmi: tuple[tuple[str, str], ...] = ()
    arch: str = ""


@dataclass(frozen=True)
class Suggestion:
    """A suggested profile and why."""

    profile: str
    evidence: str


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def read_board_facts(root: Path = Path("/"), arch: str | None = None) -> BoardFacts:
    """Read the model and DMI strings under ``root`` (a fake tree in tests).

    Args:
        root: filesystem root containing ``proc/`` and ``sys/``.
        arch: machine architecture; default ``platform.machine()``.
    """
    root = Path(root)
    model = _read(root / "proc/device-tree/model") or _read(
        root / "sys/firmware/devicetree/base/model"
    )
    dmi = tuple(
        (name, value) for name in DMI_FIELDS
        if (value := _read(root / "sys/class/dmi/id" / name))
    )
    return BoardFacts(model=model, dmi=dmi, arch=platform.machine() if arch is None else arch)


def suggest_profile(facts: BoardFacts, profiles: list[Profile]) -> Suggestion | None:
    """The best matching profile, or None.

    Levels: device-tree model match, then DMI match, then architecture; within a level the
    highest ``priority`` wins, then the longest matching pattern (the most specific).
    """
    levels: list[tuple[str, str, list[tuple[int, int, Profile, str]]]] = [
        ("model", facts.model, []), ("dmi", " ".join(v for _, v in facts.dmi), []),
        ("arch", facts.arch, []),
    ]
    for profile in profiles:
        patterns = {
            "model": profile.meta.match_model, "dmi": profile.meta.match_dmi,
            "arch": profile.meta.match_arch,
        }
        for level, text, hits in levels:
            if not text:
                continue
            for pattern in patterns[level]:
                hit = pattern.lower() == text.lower() if level == "arch" else (
                    pattern.lower() in text.lower()
                )
                if hit:
                    hits.append((profile.meta.priority, len(pattern), profile, pattern))
    for level, text, hits in levels:
        if hits:
            _, _, profile, pattern = max(hits, key=lambda h: (h[0], h[1]))
            label = {"model": "device-tree model", "dmi": "DMI", "arch": "architecture"}[level]
            return Suggestion(profile.name, f"{label} {text!r} matches {pattern!r}")
    return None


def detect_board(
    root: Path = Path("/"), profiles_dir: Path | None = None, arch: str | None = None
) -> tuple[BoardFacts, Suggestion | None]:
    """Read the facts under ``root`` and suggest a profile from ``profiles_dir``."""
    facts = read_board_facts(root, arch)
    profiles = [load_profile(name, profiles_dir) for name in list_profiles(profiles_dir)]
    return facts, suggest_profile(facts, profiles)
