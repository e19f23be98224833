"""Tokenizers, the Qwen2.5-Omni chat template and placeholder expansion: chat messages -> thinker input ids.

Why this exists: the thinker scatters tower outputs into the rows whose id is `<|IMAGE|>` / `<|AUDIO|>` /
`<|VIDEO|>` (counts must match exactly) and `get_rope_index` reads the bos/eos wrappers around them, so the prompt
ids must be exactly what `Qwen2_5OmniProcessor` makes. We get there in three steps that each match one HF piece:
`render_chat` (the stock jinja chat template, in Python), `encode_chat` (special tokens are single ids), and
`expand_placeholders` (the processor's replace_{image,audio,video}_token). Expanding ids instead of strings is
equivalent because special tokens are split off before any merge, in both HF and SentencePiece tokenizers.

Control tokens come only from the template: `render_chat_parts` marks the special tokens the template itself writes
(`<|im_start|>`, `<|im_end|>`, the media placeholders), and `encode_chat` encodes every other piece (roles, message
text: questions, answers, judgements) with `Tokenizer.encode_text`, which never makes a special token. So text that
spells `<|im_end|>\n<|im_start|>assistant` cannot close the user turn, and `<|IMAGE|>` in an answer is not a
placeholder. For text without such strings the ids are those of encoding the rendered string whole (the same
splits at the same specials).

Audio-in-video takes its layout from `models.rope.audio_in_video_layout`, the same chunk scan the position ids use,
so tokens and positions cannot disagree. No JAX here: this runs in data-prep workers.
"""
from __future__ import annotations

import abc
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from omnirrm_jax.errors import MissingPathError, UserError
from omnirrm_jax.models.config import ThinkerConfig
from omnirrm_jax.models.rope import audio_in_video_layout, audio_token_count  # numpy-only (models.audio imports JAX)

# Names -> token strings of the Qwen2.5-Omni added tokens the pipeline uses (ids in models/config.py).
SPECIAL_TOKENS = {
    "pad": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>",
    "audio": "<|AUDIO|>", "audio_bos": "<|audio_bos|>", "audio_eos": "<|audio_eos|>",
    "vision_bos": "<|vision_bos|>", "vision_eos": "<|vision_eos|>", "vision_pad": "<|vision_pad|>",
    "image": "<|IMAGE|>", "video": "<|VIDEO|>",
}
DEFAULT_SYSTEM = "You are a helpful assistant."
_TEMPLATE_FILE = Path(__file__).with_name("templates") / "qwen2_5_omni_chat_template.jinja"
_PLACEHOLDER = {"image": ("<|vision_bos|>", "<|IMAGE|>", "<|vision_eos|>"),
                "audio": ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"),
                "video": ("<|vision_bos|>", "<|VIDEO|>", "<|vision_eos|>")}
_NAME_OF = {tok: name for name, tok in SPECIAL_TOKENS.items()}
_ID_PREFIX = {"image": "Picture", "audio": "Audio", "video": "Video"}


def stock_chat_template() -> str:
    """The stock Qwen2.5-Omni jinja chat template (verbatim; provenance in templates/README.md)."""
    return _TEMPLATE_FILE.read_text(encoding="utf-8")


class Tokenizer(abc.ABC):
    """What the data pipeline needs from a tokenizer. `special_ids` maps the names of SPECIAL_TOKENS to ids;
    `<|im_end|>` is the stop token, `<|endoftext|>` the pad."""

    special_ids: dict[str, int]
    vocab_size: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special token strings inside it become their single ids; no bos/eos is added. Only for
        text we write (a template string); text from data goes through `encode_text` (or `encode_chat`)."""

    @abc.abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Ids of data text (a question, an answer, a judgement): a special token string inside it is encoded as
        plain text, never as the special id. Equals `encode` for text without special token strings."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; with skip_special_tokens the SPECIAL_TOKENS (and other specials) are dropped."""

    def _check_specials(self) -> None:
        """Every special string must be one id and survive encode, and must be plain text to encode_text: a
        tokenizer that splits one would silently turn a placeholder into text and break the embedding scatter much
        later; one that keeps it whole in data text would let an answer forge a turn or a placeholder."""
        specials = set(self.special_ids.values())
        for name, tok in SPECIAL_TOKENS.items():
            got = self.encode(tok)
            if got != [self.special_ids[name]]:
                raise ValueError(f"special token {tok} encodes to {got}, expected the single id "
                                 f"{self.special_ids[name]}")
            if specials.intersection(self.encode_text(tok)):
                raise ValueError(f"special token {tok} is still a special id when encoded as data text; is it "
                                 "registered as a non-special added token?")


def thinker_token_ids(tok: Tokenizer) -> dict[str, int]:
    """The token-id fields of ThinkerConfig for `tok`: `dataclasses.replace(cfg, **thinker_token_ids(tok))` builds
    a config that matches a SentencePiece demo vocabulary (for the real tokenizer these equal the config defaults)."""
    s = tok.special_ids
    return dict(audio_token_id=s["audio"], image_token_id=s["image"], video_token_id=s["video"],
                audio_start_token_id=s["audio_bos"], audio_end_token_id=s["audio_eos"],
                vision_start_token_id=s["vision_bos"], vision_end_token_id=s["vision_eos"])


class HFTokenizer(Tokenizer):
    """A transformers tokenizer (the checkpoint's byte-level BPE). The checkpoint's own chat template is kept when
    it has one (`hf.chat_template`); otherwise the stock one is attached so `hf.apply_chat_template` works."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        if not getattr(hf_tokenizer, "chat_template", None):
            hf_tokenizer.chat_template = stock_chat_template()
        unk = getattr(hf_tokenizer, "unk_token_id", None)
        self.special_ids = {}
        for name, tok in SPECIAL_TOKENS.items():
            i = hf_tokenizer.convert_tokens_to_ids(tok)
            if i is None or i == unk:
                raise UserError(f"tokenizer has no token {tok}; not a Qwen2.5-Omni tokenizer?")
            self.special_ids[name] = int(i)
        self.vocab_size = len(hf_tokenizer)
        self._check_specials()

    @classmethod
    def from_dir(cls, path: str | Path) -> "HFTokenizer":
        """Loads the tokenizer files of a checkpoint directory; never downloads."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.hf.encode(text, add_special_tokens=False)]

    def encode_text(self, text: str) -> list[int]:
        """split_special_tokens: the tokenizer's special tokens are not matched in `text` (transformers' own switch)."""
        return [int(i) for i in self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model for small demo thinkers. The SPECIAL_TOKENS (and "\\n") are user-defined symbols, so
    they are single ids wherever they occur; their ids come from the model, read back by piece. The serialised
    model proto (`.model` file) is the whole state: no pickle, nothing on the side."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = int(self.sp.get_piece_size())
        self.special_ids = {}
        for name, tok in SPECIAL_TOKENS.items():
            i = int(self.sp.piece_to_id(tok))
            if self.sp.id_to_piece(i) != tok:  # unknown pieces map to <unk>
                raise UserError(f"SentencePiece model has no piece {tok}; train it with train_sentencepiece")
            self.special_ids[name] = i
        self._skip = set(self.special_ids.values())
        self._controls = re.compile("(?=" + "|".join(map(re.escape, SPECIAL_TOKENS.values())) + ")")
        self._check_specials()

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceTokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.sp.encode(text)]

    def encode_text(self, text: str) -> list[int]:
        """SentencePiece matches user-defined symbols anywhere and has no switch to stop it, so `text` is encoded
        in fragments cut one character into every special token string: no fragment holds one whole."""
        cuts = [m.start() + 1 for m in self._controls.finditer(text)]  # lookahead: overlapping starts too
        bounds = [0, *cuts, len(text)]
        return [int(i) for a, b in zip(bounds, bounds[1:]) if a < b for i in self.sp.encode(text[a:b])]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._skip]
        return self.sp.decode(ids)


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The one tokenizer loader: a SentencePiece `.model` file or an HF checkpoint / tokenizer directory."""
    what = "a SentencePiece .model file or an HF checkpoint / tokenizer folder"
    if path is None:
        raise UserError(f"a tokenizer is required (data.tokenizer, or --tokenizer): {what}")
    if not os.path.exists(path):
        raise MissingPathError(f"tokenizer {path} does not exist ({what})")
    try:
        if str(path).endswith(".model"):
            return SentencePieceTokenizer.from_file(path)
        return HFTokenizer.from_dir(path)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as e:  # what sentencepiece / transformers raise
        raise UserError(f"cannot load a tokenizer from {path} ({type(e).__name__}: {e}); give {what}") from e


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_prefix: str | Path | None = None, *,
                        model_type: str = "bpe", split_digits: bool = False) -> SentencePieceTokenizer:
    """Trains a demo tokenizer on `texts` and writes `{model_prefix}.model` when a prefix is given.

    Settings chosen for exact round trips of chat text: identity normalisation, no dummy prefix, whitespace kept,
    byte fallback (any character encodes, so vocab_size must exceed 256 + 13), "\\n" and the specials as
    user-defined symbols. vocab_size is an upper bound on tiny corpora (hard_vocab_limit off); read `.vocab_size`.
    split_digits makes every digit its own piece, as Qwen's tokenizer does: "2" is then one token whether it
    stands alone or before "?" or "," (without it a tiny model must learn "2", "2?" and "2," separately).
    """
    import sentencepiece as spm

    lines = [line for t in texts for line in t.split("\n") if line]  # the trainer reads one sentence per line
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=int(vocab_size), model_type=model_type,
        user_defined_symbols=list(SPECIAL_TOKENS.values()) + ["\n"], normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False, split_digits=split_digits, minloglevel=2)
    tok = SentencePieceTokenizer(buf.getvalue())
    if model_prefix is not None:
        tok.save(f"{model_prefix}.model")
    return tok


def item_kind(item: dict) -> str | None:
    """The branch the stock template takes for one content item (its tests, in its order)."""
    t = item.get("type")
    if t == "image" or "image" in item or "image_url" in item:
        return "image"
    if t == "audio" or "audio" in item or "audio_url" in item:
        return "audio"
    if t == "video" or "video" in item:
        return "video"
    return "text" if "text" in item else None


def render_chat_parts(messages: Sequence[dict], add_generation_prompt: bool = True, *, add_vision_id: bool = False,
                      add_audio_id: bool = False) -> list[tuple[str, bool]]:
    """`render_chat` as (piece, is_control) pieces, so the template's own special tokens stay apart from text.

    is_control marks exactly the special tokens the template writes (`<|im_start|>`, `<|im_end|>`, the media
    placeholders of media items); roles, the default system prompt, "Picture k: " and every message text are text
    pieces, which `encode_chat` encodes with `Tokenizer.encode_text`.
    """
    out: list[tuple[str, bool]] = []

    def turn(role: str) -> None:
        out.extend([(SPECIAL_TOKENS["im_start"], True), (f"{role}\n", False)])

    def end() -> None:
        out.extend([(SPECIAL_TOKENS["im_end"], True), ("\n", False)])

    count = {"image": 0, "audio": 0, "video": 0}
    for i, msg in enumerate(messages):
        if i == 0 and msg["role"] != "system":
            turn("system")
            out.append((DEFAULT_SYSTEM, False))
            end()
        turn(msg["role"])
        content = msg["content"]
        if isinstance(content, str):
            out.append((content, False))
            end()
            continue
        for item in content:
            kind = item_kind(item)
            if kind == "text":
                out.append((str(item["text"]), False))
            elif kind is not None:
                count[kind] += 1
                if add_audio_id if kind == "audio" else add_vision_id:
                    out.append((f"{_ID_PREFIX[kind]} {count[kind]}: ", False))
                out.extend((t, True) for t in _PLACEHOLDER[kind])
        end()
    if add_generation_prompt:
        turn("assistant")
    return out


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True, *, add_vision_id: bool = False,
                add_audio_id: bool = False) -> str:
    """The stock Qwen2.5-Omni chat template, character for character (HF form: role + string or item list).

    A first message that is not "system" gets `You are a helpful assistant.` before it. Media items render as
    wrapped single placeholders (`<|vision_bos|><|IMAGE|><|vision_eos|>` ...) for `expand_placeholders`; items
    the template does not know render as nothing, as in jinja. The optional "Picture k: " / "Audio k: " /
    "Video k: " prefixes count across the whole conversation, as the template's namespaces do. To tokenize, use
    `encode_chat(tok, render_chat_parts(...))`: encoding this string would read special tokens inside the text.
    """
    return "".join(p for p, _ in render_chat_parts(messages, add_generation_prompt, add_vision_id=add_vision_id,
                                                   add_audio_id=add_audio_id))


def encode_chat(tok: Tokenizer, parts: Sequence[tuple[str, bool]]) -> list[int]:
    """Ids of `render_chat_parts` pieces: each control piece its special id, each run of text pieces joined and
    encoded by `tok.encode_text` (joined, so the text between two specials is encoded in one piece, as when the
    whole string is encoded)."""
    ids: list[int] = []
    run: list[str] = []
    for piece, control in parts:
        if not control:
            run.append(piece)
            continue
        if run:
            ids += tok.encode_text("".join(run))
            run = []
        ids.append(tok.special_ids[_NAME_OF[piece]])
    if run:
        ids += tok.encode_text("".join(run))
    return ids


def _grids(x, name: str) -> np.ndarray:
    g = np.zeros((0, 3), np.int64) if x is None else np.asarray(x, np.int64).reshape(-1, 3)
    if (g <= 0).any():
        raise ValueError(f"{name} has non-positive entries: {g.tolist()}")
    return g


def _need(n_found: int, n_given: int, what: str, arg: str) -> None:
    if n_found != n_given:
        raise ValueError(f"found {what} in the ids but {arg} gives {n_given}")


def expand_placeholders(ids, *, image_grid_thw=None, video_grid_thw=None, audio_lengths=None,
                        video_second_per_grid=None, use_audio_in_video: bool = False,
                        cfg: ThinkerConfig) -> np.ndarray:
    """Each single `<|IMAGE|>` / `<|AUDIO|>` / `<|VIDEO|>` id -> the run Qwen2_5OmniProcessor puts there (int64).

    image / video: t*h*w / merge^2 copies; audio: `audio_token_count(mel frames)` copies (zero for <= 2 frames, as
    in HF). With use_audio_in_video every video carries its own audio: `<|VIDEO|>` becomes `<|audio_bos|>` + the
    interleaved video/audio runs + `<|audio_eos|>` (the template's vision bos/eos stay around it) and needs
    video_second_per_grid (the processor's temporal_patch_size / fps). Grids and lengths are consumed in order of
    appearance; audio_lengths then counts standalone audios and videos together in that order, the order
    `get_rope_index` reads `audio_seqlens`. Ids come from `cfg`, so a remapped demo vocabulary works.
    Known HF split: when a frame lands exactly on a 2 s boundary with a fractional second_per_grid (e.g. fps 20.5),
    the processor (float64) cuts a frame later than HF's get_rope_index (float32); we follow the latter, so ids
    and positions agree. At fps 2 (second_per_grid 1, the media pipeline's default) the two agree anyway.
    """
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 1:
        raise ValueError(f"expand_placeholders takes one unpadded sequence, got shape {ids.shape}")
    images, videos = _grids(image_grid_thw, "image_grid_thw"), _grids(video_grid_thw, "video_grid_thw")
    audios = np.zeros(0, np.int64) if audio_lengths is None else np.asarray(audio_lengths, np.int64).reshape(-1)
    tid = {"image": cfg.image_token_id, "audio": cfg.audio_token_id, "video": cfg.video_token_id}
    where = {k: np.flatnonzero(ids == v) for k, v in tid.items()}
    n_img, n_aud, n_vid = len(where["image"]), len(where["audio"]), len(where["video"])
    _need(n_img, len(images), f"{n_img} <|IMAGE|> placeholder(s)", "image_grid_thw")
    _need(n_vid, len(videos), f"{n_vid} <|VIDEO|> placeholder(s)", "video_grid_thw")
    if use_audio_in_video:
        _need(n_aud + n_vid, len(audios), f"{n_aud} <|AUDIO|> placeholder(s) + {n_vid} <|VIDEO|> placeholder(s) "
              "with use_audio_in_video (one audio each)", "audio_lengths")
        if n_vid:
            if video_second_per_grid is None:
                raise ValueError("use_audio_in_video needs video_second_per_grid (temporal_patch_size / fps) "
                                 "for the <|VIDEO|> placeholder(s)")
            spg = np.asarray(video_second_per_grid, np.float64).reshape(-1)
            _need(n_vid, len(spg), f"{n_vid} <|VIDEO|> placeholder(s)", "video_second_per_grid")
    else:
        _need(n_aud, len(audios), f"{n_aud} <|AUDIO|> placeholder(s)", "audio_lengths")
    if (audios < 0).any():
        raise ValueError(f"audio_lengths must be >= 0 mel frames, got {audios.tolist()}")
    m = cfg.vision.spatial_merge_size
    for name, g in (("<|IMAGE|>", images), ("<|VIDEO|>", videos)):
        for j, thw in enumerate(g):
            if thw[1] % m or thw[2] % m:
                raise ValueError(f"{name} #{j}: grid {thw.tolist()} h and w must be multiples of the merge size {m}")

    kind_at = {int(p): k for k, ps in where.items() for p in ps}
    nxt = {"image": 0, "audio": 0, "video": 0}
    pieces, last = [], 0
    for p in sorted(kind_at):
        kind = kind_at[p]
        pieces.append(ids[last:p])
        last = p + 1
        if kind == "video" and use_audio_in_video:
            j, a = nxt["video"], nxt["audio"]
            runs = audio_in_video_layout(videos[j], float(spg[j]), int(audio_token_count(audios[a])), cfg)
            pieces.append(np.array([cfg.audio_start_token_id], np.int64))
            pieces += [np.full(n, tid[k], np.int64) for k, n in runs]
            pieces.append(np.array([cfg.audio_end_token_id], np.int64))
            nxt["audio"] += 1
        elif kind == "audio":
            pieces.append(np.full(int(audio_token_count(audios[nxt["audio"]])), tid["audio"], np.int64))
        else:
            thw = (images if kind == "image" else videos)[nxt[kind]]
            pieces.append(np.full(int(np.prod(thw)) // (m * m), tid[kind], np.int64))
        nxt[kind] += 1
    pieces.append(ids[last:])
    return np.concatenate(pieces)


def build_prompt_ids(tok: Tokenizer, messages: Sequence[dict], *, cfg: ThinkerConfig, image_grid_thw=None,
                     video_grid_thw=None, audio_lengths=None, video_second_per_grid=None,
                     use_audio_in_video: bool = False, add_generation_prompt: bool = True) -> np.ndarray:
    """render_chat_parts -> encode_chat -> expand_placeholders: the processor's `input_ids` for one conversation
    (message text is never read for special tokens). Refuses a tokenizer whose special ids differ from `cfg` (the
    placeholders would never be found)."""
    want = {k: getattr(cfg, k) for k in thinker_token_ids(tok)}
    if thinker_token_ids(tok) != want:
        raise ValueError(f"tokenizer special ids {thinker_token_ids(tok)} differ from the config's {want}; "
                         "build the config with dataclasses.replace(cfg, **thinker_token_ids(tok))")
    ids = encode_chat(tok, render_chat_parts(messages, add_generation_prompt))
    return expand_placeholders(ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                               audio_lengths=audio_lengths, video_second_per_grid=video_second_per_grid,
                               use_audio_in_video=use_audio_in_video, cfg=cfg)
