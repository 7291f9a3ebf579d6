"""Device tokenizer: the ``tokenizers`` library plus the model's chat template rendered with jinja2.

No transformers on the device. Reads ``tokenizer.json``, ``tokenizer_config.json`` (special tokens,
``chat_template``) and ``chat_template.jinja`` (newer transformers write the template there) from
bytes the store has verified. The template is rendered in jinja2's immutable sandbox with the same
whitespace settings transformers uses, so prompts match what the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from edgeq.errors import BundleError, ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
Message = Mapping[str, Any]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # transformers' AddedToken serialisation
        return value.get("content")
    return value


class DeviceTokenizer:
    """Encode/decode and chat formatting for one model. Thread-safe for encode/decode."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        from tokenizers import Tokenizer

        if "tokenizer.json" not in files:
            raise BundleError("bundle has no tokenizer.json", hint="rebuild the bundle from an edgeq export")
        self._json = files["tokenizer.json"].decode("utf-8", errors="replace")
        try:
            self._tok = Tokenizer.from_str(self._json)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise BundleError(f"tokenizer.json is unreadable: {exc}") from exc
        # Saved tokenizers may carry fixed padding/truncation (MiniLM: pad to 128); transformers ignores
        # them unless asked, and so do we: batches are padded by the runtime, truncation is explicit.
        self._tok.no_padding()
        self._tok.no_truncation()
        self._truncating: dict[int, Any] = {}
        cfg: dict[str, Any] = {}
        if "tokenizer_config.json" in files:
            try:
                cfg = json.loads(files["tokenizer_config.json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BundleError(f"tokenizer_config.json is not valid JSON: {exc}") from exc
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.pad_token = _token_text(cfg.get("pad_token"))
        template = files.get("chat_template.jinja")
        self.chat_template: str | None = template.decode("utf-8") if template else cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default")
        self._compiled: Any = None
        self.eos_token_id = self.token_to_id(self.eos_token)
        pad = self.token_to_id(self.pad_token)
        self.pad_token_id = pad if pad is not None else (self.eos_token_id if self.eos_token_id is not None else 0)

    # -- ids -------------------------------------------------------------------------------------
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode_pair_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[Any]:
        """Encodings (ids, type ids, mask) for encoder models, truncated to ``max_length``."""
        tok = self._tok
        if max_length:
            tok = self._truncating.get(max_length)
            if tok is None:  # a separate instance per length: enabling truncation mutates a tokenizer
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(self._json)
                tok.no_padding()
                tok.enable_truncation(max_length)
                self._truncating[max_length] = tok
        return tok.encode_batch(list(texts), add_special_tokens=True)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- chat ------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) into the model's prompt text."""
        if not self.chat_template:
            raise ConfigError(
                "this model has no chat template", hint="pass a plain prompt string instead of chat messages"
            )
        if self._compiled is None:
            self._compiled = _compile(self.chat_template)
        return self._compiled.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        # The template already places BOS and role tokens; adding specials again would double BOS.
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


def _compile(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ConfigError(f"chat template refused the messages: {message}")

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # trim_blocks/lstrip_blocks as in transformers, so whitespace matches the trained prompt format.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise BundleError(f"chat template does not compile: {exc}") from exc
