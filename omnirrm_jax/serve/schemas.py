"""Request bodies of the server, as pydantic models that refuse unknown fields (`extra="forbid"`): a typo in a
trainer's request must be a 400 naming the field, not a silently ignored option.

Media items are strings: a `data:` URL (base64) or a path under the server's --media-root (`serve.inputs`).
Lists are capped (MAX_MEDIA items, MAX_FRAMES frames of a video) so no request makes the server decode without
bound; the body itself is capped by --max-body-mb (`serve.app.BodyLimit`)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omnirrm_jax.rubric.vocab import MODALITIES


MAX_FRAMES = 64  # frames of a video sent as images (32 s at the 2 fps they are played at)
MAX_MEDIA = 64  # media items of one list (a pair's images/videos/audios, a message's content parts), and of a chat


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- OpenAI chat completions

class ImageURL(Strict):
    url: str
    detail: str | None = None


class InputAudio(Strict):
    data: str = Field(description="base64 of the audio file")
    format: Literal["wav", "mp3", "flac", "ogg"] = "wav"


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(Strict):
    type: Literal["video"]
    video: str | Annotated[list[str], Field(max_length=MAX_FRAMES)] = Field(
        description=f"a video (data: URL or media-root path), or its frames as images (at most {MAX_FRAMES})")


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[Union[TextPart, ImagePart, VideoPart, AudioPart], Field(discriminator="type")]


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[Part], Field(max_length=MAX_MEDIA)]
    name: str | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class ResponseFormat(BaseModel):  # json_schema etc. carry more fields; any type but "text" is refused by the route
    model_config = ConfigDict(extra="allow")
    type: str


class ChatRequest(Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=256)
    stream: bool = False
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2 ** 32)
    stop: str | list[str] | None = None
    user: str | None = None
    # sent by standard OpenAI clients; accepted at the values the server honours, refused otherwise (`serve.app`)
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """OpenAI's API takes `null` for these and means the default; some clients send it."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (v is None and k in ("stream", "n", "temperature", "top_p"))}
        return data

    @field_validator("messages")
    @classmethod
    def _bounded_media(cls, messages):
        """Media over all messages, capped before anything is decoded (each message's list alone is capped too)."""
        media = sum(1 for m in messages if not isinstance(m.content, str)
                    for p in m.content if not isinstance(p, TextPart))
        if media > MAX_MEDIA:
            raise ValueError(f"{media} media parts over all messages; at most {MAX_MEDIA} per request")
        return messages


# ---------------------------------------------------------------- judge and reward

class Media(Strict):
    images: list[str] = Field([], max_length=MAX_MEDIA)
    videos: list[str] = Field([], max_length=MAX_MEDIA)
    audios: list[str] = Field([], max_length=MAX_MEDIA)


class PairIn(Strict):
    """One answer pair, the fields of a `omnirrm judge --input` row (media grouped under `media`)."""

    question: str | None = None
    answer_a: str
    answer_b: str
    media: Media | None = None
    modality: Literal[MODALITIES] | None = None  # type: ignore[valid-type]
    template: str | None = None
    id: str | int | None = None


class JudgeRequest(PairIn):
    both_orders: bool = False


class RewardRequest(Strict):
    pairs: list[PairIn] = Field(min_length=1, max_length=256)
    both_orders: bool = False
