"""The request bodies of /v1/completions and /v1/chat/completions as pydantic models: OpenAI's fields with
OpenAI's ranges, strict types (a string is not a number), and llama-cpp-python's sampling extras (top_k,
min_p, repeat_penalty). Fields nobody defined are ignored, as OpenAI's newer or vendor fields are by
llama-cpp-python's server; fields pvq cannot honour are refused in `unsupported`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOPS = 4  # OpenAI's limit
MAX_LOGPROBS = 20
U64 = 2 ** 64


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, body):
        """A field sent as null takes its default, as in OpenAI's API."""
        return {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=2 ** 31 - 1)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    stop: Union[str, Annotated[list[str], Field(max_length=MAX_STOPS)], None] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    # any 64-bit integer, signed or not: the sampler takes it modulo 2**64
    seed: Optional[int] = Field(default=None, ge=-(2 ** 63), lt=U64)
    n: int = Field(default=1, ge=1, le=128)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None

    def unsupported(self) -> Optional[str]:
        """The first field set to something pvq does not do, or None."""
        checks = {"n": self.n != 1, "logit_bias": bool(self.logit_bias),
                  "frequency_penalty": self.frequency_penalty != 0.0,
                  "presence_penalty": self.presence_penalty != 0.0,
                  "stream_options": bool((self.stream_options or {}).get("include_usage"))}
        return next((name for name, bad in checks.items() if bad), None)

    def sampling(self) -> dict:
        """Keyword arguments of Llama.create_completion / create_chat_completion shared by both endpoints."""
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    min_p=self.min_p, repeat_penalty=self.repeat_penalty, stop=self.stop,
                    seed=None if self.seed is None else self.seed % U64)


class CompletionRequest(_Request):
    prompt: Union[str, list[int]]
    max_tokens: Optional[int] = Field(default=16, ge=1)
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: Optional[str] = None

    def unsupported(self) -> Optional[str]:
        return "suffix" if self.suffix else super().unsupported()


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    # extra fields (name, tool_calls, tool_call_id) reach the chat template as they came
    model_config = ConfigDict(strict=True, extra="allow")
    role: str = Field(min_length=1, max_length=64)
    content: Union[str, list[TextPart], None] = None

    def for_template(self) -> dict:
        """The message as a chat template reads it: text parts joined into one string."""
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            message["content"] = "".join(part.text for part in self.content)
        return message


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Union[str, dict[str, Any], None] = None
    response_format: Optional[dict[str, Any]] = None

    def unsupported(self) -> Optional[str]:
        if self.response_format and self.response_format.get("type") != "text":
            return "response_format"
        if isinstance(self.tool_choice, dict) or isinstance(self.function_call, dict):
            return "tool_choice" if isinstance(self.tool_choice, dict) else "function_call"
        return super().unsupported()
