"""``POST /tokenize`` and ``POST /detokenize``, as llama.cpp's server answers them.

``{"content", "add_special", "with_pieces"}`` → ``{"tokens": [ids]}`` (or ``[{"id",
"piece"}]``, a piece being text, or its bytes as a list of ints when they are not valid UTF-8
alone); ``{"tokens": [ids]}`` → ``{"content": text}``. Same checks and token as the other
routes (:class:`agent.services.inference.api_handler.ApiHandler`).
"""

from __future__ import annotations

from agent.services.inference.api_handler import ApiHandler
from agent.services.inference.guard import HttpError
from agent.services.inference.protocol import DetokenizeRequest, TokenizeRequest, piece_json


class TokenizeRoutes(ApiHandler):
    """The two routes; :class:`agent.services.inference.server.Handler` dispatches to them."""

    def _tokenize(self) -> None:
        req: TokenizeRequest = self._validated(TokenizeRequest, self._body())
        limit = self.app.config.max_prompt_chars
        if len(req.content) > limit:
            raise HttpError(413, f"content of {len(req.content)} characters is over the limit "
                            f"of {limit}", limit_chars=limit)
        codec = self.app.codec
        ids = codec.tokenize(req.content, req.add_special)
        self._send_json(200, {"tokens": [{"id": i, "piece": piece_json(codec.piece(i))}
                                         for i in ids] if req.with_pieces else ids})

    def _detokenize(self) -> None:
        req: DetokenizeRequest = self._validated(DetokenizeRequest, self._body())
        vocab = self.app.generator.vocab_size
        bad = [(k, t) for k, t in enumerate(req.tokens) if not 0 <= t < vocab]
        if bad:
            k, t = bad[0]
            raise HttpError(400, f"tokens[{k}] is {t}: not a token id of this model (0 to "
                            f"{vocab - 1})", param=f"tokens[{k}]")
        self._send_json(200, {"content": self.app.codec.decode(req.tokens)})
