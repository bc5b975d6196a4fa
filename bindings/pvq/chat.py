"""Chat prompts from the GGUF chat template (tokenizer.chat_template), rendered with jinja2 the way Hugging Face
transformers and llama-cpp-python do: sandboxed, trim_blocks + lstrip_blocks, loop controls, `{% generation %}`
passed through, tojson without ASCII escaping, raise_exception and strftime_now available to the template."""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (training masks in HF templates) renders its body unchanged."""
    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message):
    raise ValueError(message)


class ChatTemplate:
    """A compiled chat template; render(messages) gives the prompt text that ends with the assistant's turn."""

    def __init__(self, source: str, bos_token: str, eos_token: str):
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages, add_generation_prompt=True, **extra) -> str:
        return self.template.render(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                    add_generation_prompt=add_generation_prompt, raise_exception=_raise,
                                    strftime_now=lambda fmt: datetime.now().strftime(fmt), **extra)
