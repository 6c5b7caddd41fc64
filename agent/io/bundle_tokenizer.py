"""A bundle's tokenizer without transformers: ``tokenizer.json`` + the chat template in Jinja.

The service and the trainer need four things of a Hugging Face tokenizer: encode, decode, the
special tokens, and the chat template. ``tokenizers`` (the Rust library transformers' fast
tokenizers wrap) reads ``tokenizer.json`` and ``jinja2`` renders the template: about 9 MB of
imports instead of transformers' ~50 MB (docs/architecture.md, "Memory on the board").

What transformers 5 does on top of the two libraries, and this module copies:

- the chat template comes from ``chat_template.jinja`` next to the tokenizer (the layout
  transformers 5 writes), else ``tokenizer_config.json``'s ``chat_template`` (a string, or a
  list of ``{"name", "template"}`` whose ``default`` entry is used);
- it renders in an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and
  ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}`` block that renders
  its body, a ``tojson`` filter that does not escape HTML, and the globals ``raise_exception``,
  ``strftime_now``, ``dict`` and ``namespace``; its variables are ``messages``, ``tools``,
  ``documents``, ``add_generation_prompt`` and every special token by name (``bos_token``,
  ``eos_token``, ...: ``special_tokens_map``) — transformers'
  ``utils/chat_template_utils.py``;
- padding and truncation set in ``tokenizer.json`` are switched off (transformers sets them
  per call); ``clean_up_tokenization_spaces`` applies to WordPiece vocabularies only
  (transformers 5 ignores it for BPE, where it would corrupt text).

tests/prompt/test_light_tokenizer.py checks the result token for token against transformers on
the real Qwen3, Llama 3 and Gemma 3 tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from agent.errors import BundleError

TOKENIZER_FILE: Final = "tokenizer.json"
CONFIG_FILE: Final = "tokenizer_config.json"
TEMPLATE_FILE: Final = "chat_template.jinja"
# The special-token attributes transformers exposes to a chat template by name.
SPECIAL_NAMES: Final = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")
# What clean_up_tokenization_spaces undoes (transformers' clean_up_tokenization).
_CLEANUPS: Final = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                    (" 're", "'re"))


class BundleTokenizer:
    """A Hugging Face tokenizer read from its files (the :class:`agent.core.prompt_format.
    Tokenizer` surface, plus decode and vocabulary look-ups).

    Args:
        backend: the ``tokenizers.Tokenizer`` of ``tokenizer.json``.
        config: ``tokenizer_config.json`` as a mapping.
        chat_template: the Jinja chat template, or None.
    """

    def __init__(self, backend: Any, config: Mapping[str, Any], chat_template: str | None
                 ) -> None:
        self._backend = backend
        backend.no_truncation()
        backend.no_padding()
        self.chat_template = chat_template
        self.special_tokens_map = _special_tokens(config)
        self.bos_token_id = self._id_of(self.special_tokens_map.get("bos_token"))
        self.eos_token_id = self._id_of(self.special_tokens_map.get("eos_token"))
        self.added_tokens_decoder: dict[int, Any] = dict(backend.get_added_tokens_decoder())
        self.all_special_ids = sorted(i for i, t in self.added_tokens_decoder.items()
                                      if getattr(t, "special", False))
        model = json.loads(backend.to_str()).get("model", {}) if config.get(
            "clean_up_tokenization_spaces") else {}
        self._clean_up = model.get("type") == "WordPiece"
        self._template: Any = None  # compiled on first use

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (transformers' name; llguidance reads its JSON)."""
        return self._backend

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        found = self._backend.token_to_id(token)
        return None if found is None else int(found)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens``: the post-processor's BOS/EOS."""
        return [int(i) for i in self._backend.encode(text, add_special_tokens=add_special_tokens)
                .ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; ``skip_special_tokens`` leaves control tokens out."""
        text = str(self._backend.decode([int(i) for i in ids],
                                        skip_special_tokens=skip_special_tokens))
        if self._clean_up:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def convert_ids_to_tokens(self, token: int) -> str | None:
        """The vocabulary string of ``token`` (None outside the vocabulary)."""
        found = self._backend.id_to_token(int(token))
        return None if found is None else str(found)

    def apply_chat_template(self, conversation: Sequence[Mapping[str, Any]], *,
                            tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs: Any) -> str:
        """The conversation rendered with the chat template (text; ``tokenize`` must be False).

        Raises:
            ValueError: no chat template, or ``tokenize=True`` (encode the text instead).
            jinja2.TemplateError: the template refused the conversation.
        """
        if tokenize:
            raise ValueError("BundleTokenizer renders text only; encode the text it returns")
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        if self._template is None:
            self._template = compile_chat_template(self.chat_template)
        variables = {**self.special_tokens_map, **kwargs}
        return str(self._template.render(
            messages=[dict(m) for m in conversation], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **variables))


def load_bundle_tokenizer(path: Path) -> BundleTokenizer:
    """The tokenizer in directory ``path`` (``tokenizer.json`` + ``tokenizer_config.json``).

    Raises:
        BundleError: a file is missing or unreadable; the message names it.
    """
    path = Path(path)
    tokenizer_file, config_file = path / TOKENIZER_FILE, path / CONFIG_FILE
    for needed in (tokenizer_file, config_file):
        if not needed.is_file():
            raise BundleError(f"{needed} is missing: the bundle's tokenizer is incomplete; "
                              "re-export the bundle with mobizo-export")
    from tokenizers import Tokenizer  # the Rust tokenizer; small next to transformers

    try:
        backend = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a plain Exception for a bad file
        raise BundleError(f"cannot read {tokenizer_file}: {exc}; re-export the bundle") from exc
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {config_file}: {exc}; re-export the bundle") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{config_file} is not a JSON object; re-export the bundle")
    return BundleTokenizer(backend, config, _chat_template(path, config))


def _chat_template(path: Path, config: Mapping[str, Any]) -> str | None:
    """The template transformers 5 would use: the ``.jinja`` file, else the config's."""
    jinja_file = path / TEMPLATE_FILE
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one serves chats
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    """``special_tokens_map``: each named special token of the config, as its text."""
    out: dict[str, str] = {}
    extra = config.get("extra_special_tokens")
    names = [*SPECIAL_NAMES, *(extra if isinstance(extra, dict) else {})]
    for name in names:
        value = config.get(name, extra.get(name) if isinstance(extra, dict) else None)
        if isinstance(value, dict):  # the AddedToken form {"content": ..., ...}
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def compile_chat_template(source: str) -> Any:
    """``source`` compiled the way transformers compiles chat templates (module docstring).

    Raises:
        jinja2.TemplateSyntaxError: the template does not parse.
    """
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: renders its body (transformers tracks
        the assistant's spans with it; a prompt needs only the text)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       dict=_TemplateDict(), namespace=_namespace_class())
    return env.from_string(source)


class _TemplateDict:
    """``dict(...)`` in a template, without the type's attributes (a sandbox escape route)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _namespace_class() -> type:
    """jinja2's Namespace refusing underscore names, as transformers' TemplateNamespace."""
    import jinja2.exceptions
    import jinja2.utils

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"but got {name!r}. Please rename the attribute.")

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's own trick)
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    return TemplateNamespace
