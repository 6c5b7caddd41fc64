"""The local inference service: OpenAI-style HTTP API over the ExecuTorch generation program.

Modules: ``sampling`` (pure token choice and stop strings), ``protocol`` (wire models),
``generation`` (KV-cache generation loop over an :class:`InferProgram`), ``adapters``
(the hot-swappable adapter slot, its watcher and the post-switch hook), ``worker`` (bounded
FIFO queue + one generation thread), ``http`` (the HTTP handlers) and ``service`` (the
composition root used by ``mobizo-agent serve``).
"""
