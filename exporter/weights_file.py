"""A bundle's one data file: the frozen weights of all its programs, each stored once.

Each program is lowered with its weights in a data file of its own (exporter/lower.py,
``weights_tag``). Their entries are keyed by content (XNNPACK's delegated constants: the
sha256 of their bytes) or by parameter name (the embedding table the lookup reads), and a
train method, the inference methods and a tied LM head all hold the same bytes. Merging the
files through ExecuTorch's ``NamedDataStore`` keeps every key and stores equal bytes once, so
``weights.ptd`` is about the size of the weights however many programs read it. Both programs
are loaded with ``data_path=weights.ptd`` (agent/io/runtime.py), which the runtime mmaps.

The manifest records the file's size and sha256 (:class:`agent.core.bundle.WeightsFileSpec`):
a loader checks both before loading anything, so a missing, truncated or foreign file is
refused by name, never half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from agent.core.bundle import WeightsFileSpec
from agent.io.bundle_files import file_sha256

# Each entry starts on its own page: the runtime frees a weight's file pages once XNNPACK has
# packed it, which only works for whole pages. Costs < 4 KiB per entry.
SEGMENT_ALIGNMENT = 4096
ENTRY_ALIGNMENT = 64  # what XNNPACK asks of constant data (deserialization forgets it)


def merge_data_files(parts: Sequence[Path], out: Path) -> WeightsFileSpec:
    """Merge the programs' data files ``parts`` into ``out``; return its manifest entry.

    Raises:
        ValueError: two parts hold different bytes under one key (programs lowered from
            different weights: a bug in the exporter, never a user's input).
    """
    from executorch.exir._serialize._named_data_store import NamedDataStore
    from executorch.exir._serialize.data_serializer import DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import (
        FlatTensorConfig,
        FlatTensorSerializer,
    )

    store = NamedDataStore()
    reader = FlatTensorSerializer()
    for part in parts:
        output = reader.deserialize_to_named_data_store_output(part.read_bytes(), out.stem)
        store.merge_named_data_store(output)
    merged = store.get_named_data_store_output()
    entries = {key: dataclasses.replace(entry, alignment=ENTRY_ALIGNMENT)
               for key, entry in merged.external_data.get(out.stem, {}).items()}
    writer = FlatTensorSerializer(FlatTensorConfig(segment_alignment=SEGMENT_ALIGNMENT))
    blob = writer.serialize(DataPayload(buffers=merged.buffers, named_data=entries))
    with out.open("wb") as f:
        blob.write_to_file(f)
    return describe(out)


def describe(path: Path) -> WeightsFileSpec:
    """The manifest's record of the data file at ``path``: name, size, sha256."""
    return WeightsFileSpec(file=path.name, size=path.stat().st_size, sha256=file_sha256(path))
