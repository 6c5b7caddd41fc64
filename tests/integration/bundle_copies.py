"""A second bundle for the bundle-switch tests, without a second export (minutes here)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def relabeled_copy(bundle: Path, out: Path, name: str = "second") -> Path:
    """A copy of ``bundle`` whose manifest names another base checkpoint.

    The bundle id hashes the base's sha256 (agent/core/bundle.py), so the copy is another
    bundle to the agent: adapters of one do not fit the other, and the service reports the
    copy's id and model name (``preset:<name>``). Its program is the same, which is all a
    switch test needs; a real second export costs minutes on the test machine.
    """
    shutil.copytree(bundle, out)
    doc = json.loads((out / "manifest.json").read_text())
    doc["base"]["sha256"] = hashlib.sha256(f"{name}:{doc['base']['sha256']}".encode()).hexdigest()
    doc["base"]["source"] = f"preset:{name} seed=0"
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return out
