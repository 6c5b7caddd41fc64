"""The service's and trainer's tokenizer (tokenizers + Jinja, no transformers) equals
transformers' on the real Qwen3, Llama 3 and Gemma 3 tokenizers, token for token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.core.prompt_format import Message, PromptFormat
from agent.errors import BundleError
from agent.io.bundle_tokenizer import BundleTokenizer, load_bundle_tokenizer
from agent.services.inference.detokenize import token_bytes

CONVERSATIONS: list[tuple[Message, ...]] = [
    (("user", "Hello"),),
    (("system", "Be brief."), ("user", "Hi ✓ — ça va?"), ("assistant", "Yes."),
     ("user", "again\n  with  spaces ")),
    (("developer", "Answer in French."), ("user", "Good morning")),
    (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")),
]
TEXTS = ["", "Hello world", " leading space", "héllo ✓ 😀\nnew  line", "<s> inside </s>"]


@pytest.fixture(scope="module")
def light(real_tokenizer_path: Path) -> BundleTokenizer:
    return load_bundle_tokenizer(real_tokenizer_path)


def _render(fmt: PromptFormat, conv: tuple[Message, ...]) -> str:
    try:
        return fmt.chat_text(conv)
    except ValueError as exc:  # a template that refuses must refuse in both
        return f"refused: {type(exc).__name__}"


def test_prompts_equal_transformers(real_tokenizer: Any, light: BundleTokenizer) -> None:
    hf, ours = PromptFormat(real_tokenizer), PromptFormat(light)
    assert ours.stop_ids == hf.stop_ids and ours.end_of_turn_id == hf.end_of_turn_id
    for conv in CONVERSATIONS:
        assert _render(ours, conv) == _render(hf, conv)
        if not _render(hf, conv).startswith("refused"):
            assert ours.chat_ids(conv) == hf.chat_ids(conv)
    for text in TEXTS:
        assert ours.completion_ids(text) == hf.completion_ids(text)
        assert ours.response_ids(text) == hf.response_ids(text)


def test_codes_equal_transformers(real_tokenizer: Any, light: BundleTokenizer) -> None:
    assert (light.bos_token_id, light.eos_token_id) == (real_tokenizer.bos_token_id,
                                                        real_tokenizer.eos_token_id)
    for text in TEXTS:
        for special in (True, False):
            ids = real_tokenizer.encode(text, add_special_tokens=special)
            assert light.encode(text, add_special_tokens=special) == ids
            for skip in (True, False):
                assert light.decode(ids, skip_special_tokens=skip) == real_tokenizer.decode(
                    ids, skip_special_tokens=skip)
    ids = [*range(300), *range(len(real_tokenizer) - 300, len(real_tokenizer))]
    assert [token_bytes(light, i) for i in ids] == [token_bytes(real_tokenizer, i) for i in ids]


TEMPLATE = (
    "{% set ns = namespace(n=0) %}\n"
    "{% for m in messages %}\n"
    "  {% set ns.n = ns.n + 1 %}\n"
    "{{ m | tojson }}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\n"
    "{% endfor %}\n"
    "{{ ns.n }}|{{ strftime_now('%Y')|length }}|{{ bos_token }}|{{ eos_token }}"
    "{% generation %}G{% endgeneration %}{% if add_generation_prompt %}>{% endif %}")


def test_template_semantics(tmp_path: Path, real_tokenizer: Any,
                            real_tokenizer_path: Path) -> None:
    """namespace, tojson, strftime_now, raise_exception, {% generation %}, the special tokens
    and trim/lstrip_blocks render as transformers renders them."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((real_tokenizer_path / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text(TEMPLATE)
    tok = load_bundle_tokenizer(tmp_path)
    conv = [{"role": "user", "content": "é<b>"}, {"role": "assistant", "content": "x"}]
    for gen in (True, False):
        assert tok.apply_chat_template(conv, add_generation_prompt=gen) == \
            real_tokenizer.apply_chat_template(conv, chat_template=TEMPLATE, tokenize=False,
                                               add_generation_prompt=gen)
    with pytest.raises(Exception, match="no tools"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        load_bundle_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(BundleError, match="cannot read .*tokenizer.json"):
        load_bundle_tokenizer(tmp_path)


def test_the_service_codec_imports_no_transformers(real_tokenizer_path: Path) -> None:
    """In a fresh process: the service's codec and its whole package load without transformers."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "import agent.services.inference.service\n"
        "from agent.services.inference.generation import TextCodec\n"
        f"c = TextCodec.from_dir(Path({str(real_tokenizer_path)!r}))\n"
        "c.encode_chat([{'role': 'user', 'content': 'hi'}])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
