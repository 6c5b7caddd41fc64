"""agent/core/prompt_format.py on the real Qwen3, Llama 3 and Gemma 3 tokenizers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.core.prompt_format import PromptError, PromptFormat, content_text, conversation
from agent.training import data as D

# What each family's template writes after a reply, and its generation prompt (model cards).
END_OF_TURN = {"qwen3": 151645, "llama3": 128009, "gemma3": 106}
GENERATION_PROMPT_END = {"qwen3": "<|im_start|>assistant\n",
                         "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                         "gemma3": "<start_of_turn>model\n"}
BOS = {"qwen3": None, "llama3": 128000, "gemma3": 2}


def test_end_of_turn_is_the_templates_special_token(real_tokenizer: Any,
                                                    real_tokenizer_name: str) -> None:
    fmt = PromptFormat(real_tokenizer)
    assert fmt.has_chat_template
    assert fmt.end_of_turn_id == END_OF_TURN[real_tokenizer_name]
    assert fmt.response_ids("Hi.")[-1] == END_OF_TURN[real_tokenizer_name]
    assert fmt.end_of_turn_id in fmt.stop_ids
    fmt.check()  # what mobizo-export runs before writing a bundle


def test_chat_prompt_is_the_template_with_one_bos(real_tokenizer: Any,
                                                  real_tokenizer_name: str) -> None:
    fmt = PromptFormat(real_tokenizer)
    text = fmt.chat_text((("user", "Hello"),))
    assert text.endswith(GENERATION_PROMPT_END[real_tokenizer_name])
    ids = fmt.chat_ids((("user", "Hello"),))
    bos = BOS[real_tokenizer_name]
    assert ids.count(bos) == (0 if bos is None else 1)  # the template's BOS, never a second
    if bos is not None:
        assert ids[0] == bos


def test_developer_is_rendered_as_system(real_tokenizer: Any) -> None:
    fmt = PromptFormat(real_tokenizer)
    as_dev = fmt.chat_text((("developer", "Answer in French."), ("user", "Hi")))
    as_sys = fmt.chat_text((("system", "Answer in French."), ("user", "Hi")))
    assert as_dev == as_sys and "Answer in French." in as_dev  # Qwen3's would drop it


def test_completion_is_the_raw_prompt(real_tokenizer: Any, real_tokenizer_name: str) -> None:
    fmt = PromptFormat(real_tokenizer)
    ids = fmt.completion_ids("The capital of France is")
    plain = real_tokenizer.encode("The capital of France is", add_special_tokens=False)
    assert ids[-len(plain):] == plain and len(ids) - len(plain) <= 1  # at most a BOS before
    assert fmt.response_ids(" Paris", completion=True)[-1] == real_tokenizer.eos_token_id


def test_a_template_that_refuses_is_a_prompt_error(real_tokenizer: Any,
                                                   real_tokenizer_name: str) -> None:
    fmt = PromptFormat(real_tokenizer)
    two_users = (("user", "a"), ("user", "b"))
    if real_tokenizer_name == "gemma3":  # Gemma 3's template insists on alternating roles
        with pytest.raises(PromptError, match="must alternate"):
            fmt.chat_ids(two_users)
    else:
        assert fmt.chat_ids(two_users)
    # the trainer skips such a line as malformed, as the service answers it with a 400
    stats = D.DataStats()
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "c"}]}
    items = D.read_interactions([json.dumps(row)], stats)
    D.build_dataset(items, real_tokenizer, max_length=64, pad_id=0, heldout_share=0.0,
                    stats=stats)
    assert stats.malformed == (1 if real_tokenizer_name == "gemma3" else 0)


def test_content_parts_and_roles_are_checked() -> None:
    assert content_text("plain") == "plain"
    assert content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    with pytest.raises(PromptError) as err:
        conversation([{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]}])
    assert err.value.field == "messages[0].content[1].type" and "image_url" in str(err.value)
    with pytest.raises(PromptError) as err:
        conversation([{"role": "robot", "content": "x"}])
    assert err.value.field == "messages[0].role"
    with pytest.raises(PromptError) as err:
        conversation([{"role": "user", "content": 3}])
    assert err.value.field == "messages[0].content"
    assert conversation([{"role": r, "content": "x"} for r in
                         ("system", "developer", "user", "assistant", "tool")])
