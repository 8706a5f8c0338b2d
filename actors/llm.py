"""The LLM prompt stage: a causal LM rewrites each row's prompt, before the encode stage.

Every row keeps the prompt as read in ``source_prompt``; an ok row's ``prompt`` becomes the
LM's text. A text is drawn with the row's LLM seed (``pipelines.fanout``: the variation's seed,
so the images of one variation share one text). An output that is empty, longer than the image
model's text window (``models.llm.TextWindow``) or not a full match of ``llm.constraint`` is
drawn again with the next seed (``pipelines.rows.llm_retry_seed``, passed in as ``seed_of``),
``llm.retries`` times; then the row is an error record of stage ``llm`` saying why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.base import Batch, Stage
from actors.loading import local_model_path, stage_device
from pipelines import schema
from pipelines.schema import LLM_SEED_COLUMN, VARIATION_COLUMN
from pipelines.spec import LlmSpec, ModelSpec, StageSpec

__all__ = ["LlmStage"]

# What compute returns per row: the text (None when every draw failed) and the last draw's problem.
Drawn = tuple[str | None, str | None]


class LlmStage(Stage):
    """Callable class for ``map_batches``: writes the LLM's text into ``prompt`` (see the module docstring).

    Args:
        llm: the job's ``llm`` section (model, instruction, sampling, constraint, retries).
        stage: device, dtype and ``micro_batch_size`` of the LLM pool (``stages.llm``).
        image_model: the job's image model, whose tokenizer sets the longest text allowed.
        storage_options: fsspec options for models in object storage.
        seed_of: ``(llm seed, draw) -> seed`` of each draw (``pipelines.rows.llm_retry_seed``).
    """

    contract = schema.LLM

    def __init__(
        self, *, llm: LlmSpec, stage: StageSpec, image_model: ModelSpec,
        storage_options: dict[str, Any] | None = None, seed_of: Callable[[int, int], int],
    ) -> None:
        from models.llm import PromptWriter, TextWindow

        self.writer = PromptWriter(local_model_path(llm.model, storage_options), device=stage_device(stage),
                                   dtype=stage.dtype)
        self.window = TextWindow(local_model_path(image_model, storage_options))
        self.llm, self.seed_of, self.micro_batch = llm, seed_of, stage.micro_batch_size
        self.constraint = re.compile(llm.constraint) if llm.constraint is not None else None
        # The settings each text is drawn with: the spec's, the model's generation_config for the rest.
        self.settings = self.writer.sampling(**llm.sampling())
        recorded = {"instruction": llm.instruction, "constraint": llm.constraint, "retries": llm.retries}
        self.sampling = json.dumps({**self.settings, **recorded}, sort_keys=True)
        self.drawn_texts = 0  # distinct (prompt, seed) draws, retries included: fewer than rows with fan-out

    def compute(self, batch: Batch, rows: list[int]) -> list[Drawn]:
        """Draw each distinct ``(prompt, llm seed)`` of ``rows`` once, retrying failed checks with the next seeds."""
        keys = [(str(batch[schema.PROMPT][i]), _llm_seed(batch, i)) for i in rows]
        results: dict[tuple[str, int], Drawn] = {}
        pending = list(dict.fromkeys(keys))
        for draw in range(self.llm.retries + 1):
            if not pending:
                break
            seeds = [self.seed_of(seed, draw) for _, seed in pending]
            texts = self.writer.write(
                [prompt for prompt, _ in pending], seeds, instruction=self.llm.instruction, **self.settings,
                micro_batch=self.micro_batch,
            )
            self.drawn_texts += len(pending)
            failed = []
            for key, text in zip(pending, texts, strict=True):
                problem = self._problem(text)
                results[key] = (None, problem) if problem else (text, None)
                if problem:
                    failed.append(key)
            pending = failed
        tries = self.llm.retries + 1
        return [(text, None if problem is None else f"{problem} ({tries} draw{'s' if tries > 1 else ''})")
                for text, problem in (results[key] for key in keys)]

    def _problem(self, text: str) -> str | None:
        """Why ``text`` cannot be a prompt, or None when it can."""
        if not text:
            return "the LLM wrote an empty prompt"
        if self.window.limit is not None and (count := self.window.count(text)) > self.window.limit:
            return f"the LLM wrote {count} tokens, more than the text window of the image model ({self.window.limit})"
        if self.constraint is not None and not self.constraint.fullmatch(text):
            return f"the LLM text does not match llm.constraint: {text[:200]!r}"
        return None

    def finish(self, batch: Batch, results: dict[int, Drawn]) -> None:
        size = len(batch[schema.STATUS])
        self.mark(batch, {i: problem for i, (_, problem) in results.items() if problem is not None})
        source = np.asarray(batch[schema.PROMPT], dtype=object).copy()
        prompts = source.copy()
        for i, (text, _) in results.items():
            if text is not None:
                prompts[i] = text
        batch[schema.SOURCE_PROMPT] = source
        batch[schema.PROMPT] = prompts
        batch[schema.VARIATION_INDEX] = np.asarray(
            batch.pop(VARIATION_COLUMN) if VARIATION_COLUMN in batch else np.zeros(size), dtype=np.int64)
        batch[schema.LLM_SEED] = np.asarray([_llm_seed(batch, i) for i in range(size)], dtype=np.int64)
        batch.pop(LLM_SEED_COLUMN, None)
        batch[schema.LLM_MODEL] = np.full(size, self.llm.model.uri, dtype=object)
        batch[schema.LLM_MODEL_HASH] = np.full(size, self.writer.info["model_hash"], dtype=object)
        batch[schema.LLM_SAMPLING] = np.full(size, self.sampling, dtype=object)


def _llm_seed(batch: Batch, i: int) -> int:
    """Row ``i``'s LLM seed: its variation's (``pipelines.fanout``), else its own seed."""
    return int(batch[LLM_SEED_COLUMN][i] if LLM_SEED_COLUMN in batch else batch[schema.SEED][i])
