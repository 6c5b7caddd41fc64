"""llama.cpp's side of ``mobizo-bench serve --vs-llamacpp``, through llama-cpp-python.

One :class:`LlamaCppEngine` is one llama.cpp context on a GGUF file, optionally with a GGUF
LoRA adapter applied at load (``llama_adapter_lora_init`` + ``llama_set_adapter_lora``, scale
1: alpha / r like PEFT). It is fed token ids, exactly the ids our service feeds its program,
and the next token is the argmax of the logits on the host, as our service does: both
engines run the same greedy loop, only the forward differs.

The prompt cache: llama.cpp's server keeps the tokens it evaluated (prompt and generated) and
re-reads only what follows the longest common prefix (``cache_prompt``, on by default);
:meth:`LlamaCppEngine.feed` does the same on this context (the KV cells after the prefix are
dropped, as llama-cpp-python's own ``generate`` does).

llama-cpp-python has no wheel for these machines: it builds llama.cpp from source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import MobizoError

INSTALL_LLAMA_CPP = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    ".venv/bin/python -m pip install -e '.[llamacpp]'  (builds llama.cpp from source, "
    "about 5 minutes on 2 cores; on aarch64 drop the x86 flags from CMAKE_ARGS)")


def llama_cpp_module() -> Any:
    """``llama_cpp``, or an error that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MobizoError(f"--vs-llamacpp needs llama-cpp-python; install it: "
                          f"{INSTALL_LLAMA_CPP}") from exc
    return llama_cpp


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaCppEngine:
    """A llama.cpp context on ``model`` (and ``lora``), fed token ids.

    Args:
        model: GGUF model file.
        threads: threads for prompt and decode (llama.cpp's ``-t`` and ``-tb``).
        n_ctx: context length (KV cells).
        lora: GGUF LoRA adapter, applied with scale 1; None: the base alone.
    """

    def __init__(self, model: Path, *, threads: int, n_ctx: int,
                 lora: Path | None = None) -> None:
        llama_cpp = llama_cpp_module()
        self.model, self.lora = Path(model), lora
        self.llm = llama_cpp.Llama(
            model_path=str(model), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
            n_threads=threads, n_threads_batch=threads, lora_path=str(lora) if lora else None,
            seed=0, logits_all=False, verbose=False)
        self.version = str(getattr(llama_cpp, "__version__", "?"))
        self.n_vocab = int(self.llm.n_vocab())
        self._lc = llama_cpp

    @property
    def resident(self) -> list[int]:
        """The token ids whose keys and values are in the context."""
        return [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]

    def forward(self, ids: Sequence[int], start_pos: int) -> np.ndarray:
        """Feed ``ids`` at ``start_pos..`` (dropping what followed), return the last logits."""
        if not ids:
            raise ValueError("forward() needs at least one token")
        self.llm.n_tokens = start_pos  # eval() removes the KV cells from here on
        self.llm.eval(list(ids))
        # eval() keeps no logits without logits_all: read the last output's row directly
        row = self._lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def feed(self, prompt_ids: Sequence[int], reuse: bool = True) -> tuple[np.ndarray, int]:
        """Prefill ``prompt_ids``, skipping the prefix already resident when ``reuse``
        (at least the last token is fed: its logits start generation); returns the logits
        and how many prompt tokens were reused."""
        reused = 0
        if reuse:
            reused = min(common_prefix_len(self.resident, prompt_ids), len(prompt_ids) - 1)
        return self.forward(prompt_ids[reused:], reused), reused


@dataclass(frozen=True)
class GreedyRun:
    """One greedy generation: the new token ids and where the time went."""

    tokens: list[int]
    prefill_s: float
    decode_s: float
    reused: int = 0


def greedy(engine: LlamaCppEngine, prompt_ids: Sequence[int], n: int,
           reuse: bool = False) -> GreedyRun:
    """Greedy generation of ``n`` tokens (no stop at EOS), timed like our service's
    ``timings``: prefill up to the first logits, then ``n - 1`` single-token decodes
    (the last token is picked, not fed)."""
    t0 = time.perf_counter()
    logits, reused = engine.feed(prompt_ids, reuse)
    t1 = time.perf_counter()
    out: list[int] = []
    pos = len(prompt_ids)
    while True:
        token = int(np.argmax(logits))
        out.append(token)
        if len(out) >= n:
            break
        logits = engine.forward([token], pos)
        pos += 1
    t2 = time.perf_counter()
    return GreedyRun(out, t1 - t0, t2 - t1, reused)


def speed(engine: LlamaCppEngine, prompt_ids: Sequence[int], gen_tokens: int,
          repeats: int) -> dict[str, float]:
    """Median prompt and decode tokens/s over ``repeats`` cold runs (after one warm-up)."""
    greedy(engine, prompt_ids, min(gen_tokens, 4))  # warm-up: page faults, graph build
    runs = [greedy(engine, prompt_ids, gen_tokens) for _ in range(repeats)]
    prefill = float(np.median([r.prefill_s for r in runs]))
    decode = float(np.median([r.decode_s for r in runs]))
    return {"prompt_tok_s": len(prompt_ids) / prefill,
            "gen_tok_s": (gen_tokens - 1) / decode if gen_tokens > 1 else float("nan"),
            "prefill_s": prefill, "decode_s": decode}


def time_to_first_token(engine: LlamaCppEngine, other_ids: Sequence[int],
                        history_ids: Sequence[int],
                        follow_up: Callable[[list[int]], Sequence[int]],
                        reply_tokens: int, repeats: int) -> dict[str, float]:
    """Cold vs follow-up time to the first token of a follow-up turn.

    The previous turn is ``history_ids`` answered with ``reply_tokens`` greedy tokens;
    ``follow_up(reply)`` gives the next turn's prompt ids (the reply as text in the chat
    template, as a client sends it back, then a new user message). Cold: another
    conversation (``other_ids``) is resident, as after another user's request. Follow-up:
    the previous turn (prompt and reply) is resident and the prompt cache re-reads only
    what follows the longest common prefix. Medians over ``repeats``.
    """
    conversation_ids = list(follow_up(greedy(engine, history_ids, reply_tokens).tokens))
    cold, follow, reused = [], [], 0
    for _ in range(repeats):
        greedy(engine, other_ids, 1, reuse=False)
        cold.append(greedy(engine, conversation_ids, 1, reuse=True).prefill_s)
        greedy(engine, history_ids, reply_tokens, reuse=False)  # the previous turn
        run = greedy(engine, conversation_ids, 1, reuse=True)
        follow.append(run.prefill_s)
        reused = run.reused
    return {"cold_s": float(np.median(cold)), "follow_up_s": float(np.median(follow)),
            "reused_tokens": reused, "prompt_tokens": len(conversation_ids)}
