"""``builtin:tiny-sana``, an LLM-encoded family (Gemma 2), through PromptEncoder + ImageGenerator (real models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.diffusion import ImageGenerator, PromptEncoder
from models.families import FAMILIES, family_for, read_model_index
from models.store import resolve_model_path
from models.tiny_sana import build_gemma_tokenizer, sana_instruction

PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset", "zebra!"]
NEGATIVES = ["", "blurry", None, "ugly"]
SIZE = {"width": 32, "height": 32, "steps": 2}


@pytest.fixture(scope="module")
def tiny_sana_path(model_cache_dir: str) -> str:
    """Local folder of the built-in tiny Sana pipeline."""
    return resolve_model_path("builtin:tiny-sana", cache_dir=model_cache_dir)


@pytest.fixture(scope="module")
def encoder(tiny_sana_path: str) -> PromptEncoder:
    return PromptEncoder(tiny_sana_path)


@pytest.fixture(scope="module")
def generator(tiny_sana_path: str) -> ImageGenerator:
    return ImageGenerator(tiny_sana_path)


@pytest.fixture(scope="module")
def embeds(encoder: PromptEncoder) -> dict[str, np.ndarray]:
    return encoder.encode(PROMPTS, NEGATIVES, guidance=[1.0] * len(PROMPTS))


def _rows(embeds: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in embeds.items()}


def _words(count: int, last: str = "dog") -> str:
    """A prompt of ``count`` tokens (BOS included) whose last word is ``last``."""
    return " ".join(["cat"] * (count - 2) + [last])


def test_the_folder_holds_the_real_classes(tiny_sana_path: str) -> None:
    index = read_model_index(tiny_sana_path)
    assert index["_class_name"] == "SanaPipeline"
    assert index["text_encoder"] == ["transformers", "Gemma2Model"]
    assert index["tokenizer"][1] in ("GemmaTokenizer", "GemmaTokenizerFast")
    assert index["transformer"] == ["diffusers", "SanaTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderDC"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert family_for(tiny_sana_path) == ("SanaPipeline", FAMILIES["SanaPipeline"])


def test_the_tokenizer_is_gemma_like() -> None:
    tokenizer = build_gemma_tokenizer()
    ids = tokenizer("a red cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 4  # BOS + one token per common word
    assert tokenizer.decode(tokenizer("Über 42").input_ids, skip_special_tokens=True) == "Über 42"  # byte fallback
    # The instruction's words are whole tokens: it costs a few hundred tokens, not one per character
    instruction = "\n".join(sana_instruction())
    assert len(tokenizer.encode(instruction)) < len(instruction.split()) * 1.5


def test_each_half_loads_only_its_components(encoder: PromptEncoder, generator: ImageGenerator) -> None:
    assert encoder.pipe.transformer is None and encoder.pipe.vae is None
    assert encoder.pipe.text_encoder is not None
    assert generator.pipe.text_encoder is None and generator.pipe.tokenizer is None
    assert generator.info["pipeline"] == "SanaPipeline"
    assert generator.info["scheduler"] == "DPMSolverMultistepScheduler"


def test_embeddings_and_masks_have_a_fixed_length(embeds: dict[str, np.ndarray]) -> None:
    assert set(embeds) == set(FAMILIES["SanaPipeline"].embed_keys)
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (4, 300, 32)
    assert embeds["prompt_attention_mask"].shape == embeds["negative_prompt_attention_mask"].shape == (4, 300)
    assert all(value.dtype == np.float32 for value in embeds.values())
    masks = embeds["prompt_attention_mask"]
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert masks[0].sum() < masks[1].sum()  # a longer prompt has more tokens to attend to
    # An empty negative is BOS alone; "blurry" is BOS + one token
    assert embeds["negative_prompt_attention_mask"].sum(axis=1).tolist() == [1.0, 2.0, 1.0, 2.0]


def test_generate_hands_the_pipeline_int64_masks(generator: ImageGenerator, embeds) -> None:
    seen: list[dict[str, torch.dtype]] = []

    def record(_module, _args, kwargs):
        seen.append({key: kwargs[key].dtype for key in ("encoder_hidden_states", "encoder_attention_mask")})

    hook = generator.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generator.generate(_rows(embeds, [0]), seeds=[0], guidance=4.5, **SIZE)
    finally:
        hook.remove()
    assert seen and all(
        dtypes == {"encoder_hidden_states": torch.float32, "encoder_attention_mask": torch.int64} for dtypes in seen
    )


def test_the_masks_reach_the_denoiser(generator: ImageGenerator, embeds) -> None:
    row = _rows(embeds, [1])
    unmasked = {**row, "prompt_attention_mask": np.ones_like(row["prompt_attention_mask"])}
    kwargs = {"seeds": [5], "guidance": 1.0, **SIZE}
    assert not np.array_equal(generator.generate(row, **kwargs), generator.generate(unmasked, **kwargs))


def test_images_are_uint8_and_depend_on_prompt_and_seed(generator: ImageGenerator, embeds) -> None:
    images = generator.generate(_rows(embeds, [0, 1, 0]), seeds=[3, 3, 4], guidance=4.5, **SIZE)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])


@pytest.mark.parametrize("width, height", [(48, 32), (32, 40)])
def test_sizes_must_be_multiples_of_32(generator: ImageGenerator, embeds, width: int, height: int) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        generator.generate(_rows(embeds, [0]), seeds=[0], width=width, height=height, steps=1, guidance=1.0)


def test_the_window_is_max_sequence_length(encoder: PromptEncoder) -> None:
    assert encoder.max_tokens == 300  # Sana's max_sequence_length, not CLIP's 77 (the tokenizer has no limit)
    assert encoder.token_counts([_words(299), _words(300), _words(301)]) == [299, 300, 301]

    def last_word_counts(count: int) -> bool:
        prompts = [_words(count, last) for last in ("dog", "red")]
        embeds = [encoder.encode([prompt], None, guidance=[1.0])["prompt_embeds"] for prompt in prompts]
        return not np.array_equal(*embeds)

    # The 300th token still changes the embedding; the 301st is cut off, as max_tokens says
    assert last_word_counts(300) and not last_word_counts(301)


def test_encoding_is_batch_invariant(encoder: PromptEncoder, embeds) -> None:
    alone = encoder.encode([PROMPTS[2]], [NEGATIVES[2]], guidance=[1.0])
    assert all(np.array_equal(alone[key][0], embeds[key][2]) for key in embeds)
    order = [3, 1, 0]
    chunked = encoder.encode(
        [PROMPTS[i] for i in order], [NEGATIVES[i] for i in order], guidance=[1.0] * 3, micro_batch=2
    )
    reference = encoder.encode(PROMPTS, NEGATIVES, guidance=[1.0] * 4, micro_batch=2)
    assert all(np.array_equal(chunked[key], reference[key][order]) for key in embeds)


# guidance 4.5: CFG doubles the denoiser batch; micro_batch 3: a padded last chunk
@pytest.mark.parametrize("guidance, micro_batch", [(1.0, 1), (4.5, 1), (4.5, 3)])
def test_rows_are_bit_identical_in_any_batch(
    generator: ImageGenerator, embeds, guidance: float, micro_batch: int
) -> None:
    kwargs = {**SIZE, "guidance": guidance, "micro_batch": micro_batch}
    together = generator.generate(embeds, seeds=[0, 1, 2, 3], **kwargs)
    for rows in ([2], [3, 0]):
        apart = generator.generate(_rows(embeds, rows), seeds=rows, **kwargs)
        assert np.array_equal(apart, together[rows])
