"""The modality and verdict vocabularies in one place: their names and the integer codes batches carry.

Data prep, the record schema, the pipeline, the judge prompts, the trainers and eval all import these, so a code
written into a batch reads back as the same name everywhere. Pure Python (rubric/ imports no JAX).
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("text", "image", "video", "audio")  # one judge prompt each
RECORD_MODALITIES: tuple[str, ...] = MODALITIES + ("mixed",)  # a record with several kinds of media is "mixed"
MODALITY_CODES: dict[str, int] = {m: i for i, m in enumerate(RECORD_MODALITIES)}  # text 0 ... audio 3, mixed 4

VERDICTS: tuple[str, ...] = ("A", "B", "equal")  # the schema's `better` values
VERDICT_CODES: dict[str, int] = {v: i for i, v in enumerate(VERDICTS)}  # A 0, B 1, equal 2 (gold in batches)
