"""The trainer scores a reply exactly after the prompt tokens the service generated it from.

For each real tokenizer (Qwen3, Llama 3, Gemma 3) and each request kind (chat, multi-turn chat
with system and developer turns and content parts, raw completion, corrected answer): the
service's codec encodes the request as ``/v1/...`` does, the interaction goes through the real
store as the generation worker records it (rated up, or corrected), the store's training rows
are read by the trainer's data pipeline, and the trainer's example must start with exactly the
service's prompt ids, its loss mask starting right after them and ending at the token that
stops generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.io.store import InteractionStore
from agent.io.store_records import Interaction
from agent.services.inference.generation import TextCodec
from agent.services.inference.protocol import ChatCompletionRequest
from agent.training import data as D

MAX_LENGTH = 256

CHAT = {"messages": [{"role": "user", "content": "Where do I keep my bike?"}]}
MULTI_TURN = {"messages": [
    {"role": "system", "content": "You are my assistant. Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "What is my dog called?"}]},
    {"role": "assistant", "content": "Your dog is called Pixel."},
    {"role": "user", "content": [{"type": "text", "text": "And how old"},
                                 {"type": "text", "text": "is she?"}]},
]}
DEVELOPER = {"messages": [{"role": "developer", "content": "Answer in French."},
                          {"role": "user", "content": "Good morning"}]}
COMPLETION = {"prompt": "My favourite colour is"}
REPLY = "Teal, like the sea at Porto."
CORRECTION = "In the hallway, next to the door."


def _served(codec: TextCodec, kind: str, body: dict[str, Any]) -> tuple[list[int], Interaction]:
    """What the service encodes and what its worker records for one request."""
    if kind == "chat":
        messages = ChatCompletionRequest.model_validate(body).text_messages()
        ids, prompt = codec.encode_chat(messages), None
    else:
        messages, prompt = None, body["prompt"]
        ids = codec.encode_prompt(prompt)
    return ids, Interaction(response=REPLY, kind=kind, messages=messages, prompt=prompt,
                            prompt_tokens=len(ids), completion_tokens=7)


def _trained(tmp_path: Path, tokenizer: Any, item: Interaction,
             correction: str | None) -> D.Example:
    """The interaction through the real store and the trainer's data pipeline."""
    store = InteractionStore.in_state_dir(tmp_path)
    try:
        store.record(item).wait(10)
        store.set_feedback(item.id, "up" if correction is None else "down", correction).wait(10)
        assert store.flush()
        examples, _ = store.examples_since(0, split="all")
    finally:
        store.close()
    lines = [json.dumps(e.to_json()) for e in examples]
    stats = D.DataStats()
    ds = D.build_dataset(D.read_interactions(lines, stats), tokenizer, max_length=MAX_LENGTH,
                         pad_id=0, heldout_share=0.0, stats=stats)
    assert stats.malformed == 0 and len(ds.train) == 1, stats.as_dict()
    return ds.train[0]


@pytest.mark.parametrize("case", ["chat", "multi-turn", "developer", "completion", "corrected"])
def test_response_follows_the_served_prompt(real_tokenizer: Any, tmp_path: Path,
                                            case: str) -> None:
    codec = TextCodec(real_tokenizer)
    kind = "completion" if case == "completion" else "chat"
    body = {"chat": CHAT, "multi-turn": MULTI_TURN, "developer": DEVELOPER,
            "completion": COMPLETION, "corrected": CHAT}[case]
    correction = CORRECTION if case == "corrected" else None
    served_ids, item = _served(codec, kind, body)
    example = _trained(tmp_path, real_tokenizer, item, correction)

    n = len(served_ids)
    assert list(example.tokens[:n]) == served_ids  # the prompt the service used, token for token
    assert example.mask[:n].sum() == 0 and example.mask[n] == 1  # scoring starts right after
    target = list(example.tokens[example.mask > 0])
    assert target[-1] in codec.eos_ids  # the reply ends where generation stops
    text = real_tokenizer.decode(target, skip_special_tokens=True)
    assert text == (correction or REPLY)
