"""Pure text for install: units with the prefix filled in, board drop-ins, agent.toml.

agent.toml carries a digest of its own body in its first lines, so a later install can tell a
file it wrote (safe to replace) from one an operator edited (kept; the new one goes to
``agent.toml.new``), without keeping any state elsewhere.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from agent.deploy.board import BoardCaps
from agent.deploy.layout import AGENT_UNIT, DEFAULT_PREFIX, INFERENCE_UNIT, TRAINER_SLICE

_MARKER = "# generated-by: mobizo-agent install; sha256:"
_MARKER_RE = re.compile(r"^# generated-by: mobizo-agent install; sha256:([0-9a-f]{64})\n", re.M)


def render_unit(text: str, prefix: PurePosixPath) -> str:
    """A shipped unit file with the install prefix in place of ``/opt/mobizo-agent``."""
    if prefix == DEFAULT_PREFIX:
        return text
    # Only whole path components: /opt/mobizo-agent-old must not be rewritten.
    return re.sub(re.escape(str(DEFAULT_PREFIX)) + r"(?=/|\s|$)", str(prefix), text)


def _mem(mb: int) -> str:
    return "infinity" if mb == 0 else f"{mb}M"


def render_board_dropins(caps: BoardCaps) -> dict[str, str]:
    """``{unit name: drop-in text}`` with the board's memory caps (0 = no cap)."""
    head = (
        f"# Written by `mobizo-agent install --board {caps.profile}` from the board profile;\n"
        "# rewritten on every install. Local changes go in another drop-in\n"
        "# (`systemctl edit UNIT` writes override.conf, which sorts after this file).\n"
    )
    daemon_mb = caps.agent_memory_mb - caps.trainer_memory_mb if caps.trainer_memory_mb else 0
    return {
        TRAINER_SLICE: head
        + f"# training.memory_max_mb = {caps.trainer_memory_mb}\n"
        + f"[Slice]\nMemoryMax={_mem(caps.trainer_memory_mb)}\n",
        AGENT_UNIT: head
        + f"# daemon ({daemon_mb} MiB) + a forked burst "
        + f"(training.memory_max_mb = {caps.trainer_memory_mb})\n"
        + f"[Service]\nMemoryMax={_mem(caps.agent_memory_mb)}\n",
        INFERENCE_UNIT: head
        + f"# inference.memory_max_mb = {caps.inference_memory_mb}\n"
        + f"[Service]\nMemoryMax={_mem(caps.inference_memory_mb)}\n",
    }


def render_config(profile: str, reason: str) -> str:
    """The agent.toml install writes: it names the board profile; everything else defaults.

    Args:
        profile: board profile name (firmware_configs/<profile>.toml).
        reason: how the profile was chosen (shown in a comment).
    """
    body = (
        "# The agent's configuration. Values come from the board profile named below\n"
        "# (installed under <prefix>/firmware_configs); set a key here to override it.\n"
        "#   mobizo-agent config check   validates this file\n"
        "#   mobizo-agent config show    shows every value and where it came from\n"
        "# MQTT secrets do not belong here: put them in /etc/mobizo-agent/credentials/\n"
        "# (mqtt-password, mqtt-client-key; mode 0600, root), see systemd/README.md.\n"
        f"# Board chosen by: {reason}\n"
        "\n"
        "[device]\n"
        f'profile = "{profile}"\n'
    )
    return f"{_MARKER}{_digest(body)}\n{body}"


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def is_pristine(text: str) -> bool:
    """Whether ``text`` is an agent.toml install wrote and nobody edited since."""
    match = _MARKER_RE.match(text)
    return match is not None and _digest(text[match.end():]) == match.group(1)


ConfigAction = Literal["create", "unchanged", "replace", "keep-write-new", "keep"]


@dataclass(frozen=True)
class ConfigDecision:
    """What to do with agent.toml.

    Attributes:
        action: create (none yet), unchanged (same text), replace (ours, unedited, outdated),
            keep-write-new (edited: keep it, write the new one beside it as agent.toml.new),
            keep (edited, and agent.toml.new already holds the new text).
        reason: one line for the install report.
    """

    action: ConfigAction
    reason: str


def decide_config(existing: str | None, existing_new: str | None, wanted: str) -> ConfigDecision:
    """Decide what install does with agent.toml (never overwrites an edited file).

    Args:
        existing: current agent.toml text, or None.
        existing_new: current agent.toml.new text, or None.
        wanted: the text install would write.
    """
    if existing is None:
        return ConfigDecision("create", "new config from the board profile")
    if existing == wanted:
        return ConfigDecision("unchanged", "config is up to date")
    if is_pristine(existing):
        return ConfigDecision("replace", "config was written by install and not edited since")
    if existing_new == wanted:
        return ConfigDecision("keep", "config was edited; agent.toml.new already holds the new one")
    return ConfigDecision(
        "keep-write-new", "config was edited: kept; the new one is agent.toml.new, merge by hand"
    )
