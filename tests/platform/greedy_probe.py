"""Greedy decoding on a bundle's inference program, printed as JSON (run on both platforms).

    python greedy_probe.py BUNDLE_DIR [NEW_TOKENS]

Runs on the host and, unchanged, on the emulated Arm board, so the two token lists can be
compared id for id (the HTTP API only returns text, and a random-weights byte model's text
loses information when bytes are not UTF-8). The adapter row is a fixed pseudo-random lora_b
(numpy's PCG64 gives the same numbers on every platform), so the LoRA path is exercised too.
Only the runtime's public program class is imported; nothing else of the agent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# "Hello from the board" as the starter byte tokenizer's ids (a byte is its own id).
PROMPT_IDS = list(b"Hello from the board")


def _program_class() -> type:
    # The one import of agent internals; where it lives is the restructure's business.
    try:
        from agent.io.runtime import InferProgram
    except ImportError:  # pragma: no cover - a later layout
        from agent.io.runtime.programs import InferProgram  # type: ignore[no-redef]
    return InferProgram


def greedy(bundle: Path, new_tokens: int) -> dict[str, object]:
    """Greedy ids after :data:`PROMPT_IDS`, the first logits, and the seconds each part took."""
    t0 = time.perf_counter()
    program = _program_class()(bundle, threads=1)
    t1 = time.perf_counter()
    lora_b = 0.05 * np.random.default_rng(0).standard_normal(program.num_params).astype(
        np.float32)
    logits = program.forward(PROMPT_IDS, 0, lora_b)
    first = [float(x) for x in np.asarray(logits, dtype=np.float32)]
    tokens: list[int] = []
    margins: list[float] = []  # top-1 minus top-2 logit at each pick: how near a tie it was
    pos = len(PROMPT_IDS)
    while len(tokens) < new_tokens and pos < program.max_context:
        row = np.asarray(logits, dtype=np.float32)
        token = int(np.argmax(row))
        top2 = np.partition(row, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        tokens.append(token)
        logits = program.forward([token], pos, lora_b)
        pos += 1
    return {"tokens": tokens, "margins": margins, "first_logits": first, "load_s": t1 - t0,
            "generate_s": time.perf_counter() - t1}


def main(argv: list[str]) -> int:
    """Print :func:`greedy`'s result for ``argv = [BUNDLE_DIR, NEW_TOKENS?]`` as one JSON line."""
    n = int(argv[1]) if len(argv) > 1 else 16
    print(json.dumps(greedy(Path(argv[0]), n)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
