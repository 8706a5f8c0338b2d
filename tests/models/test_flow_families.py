"""The built-in tiny FLUX and SD3 pipelines through the family registry (real models, CPU).

Both read the prompt through CLIP (77 tokens) and T5 (a longer window); ``prompt_truncated``
is T5's verdict (``models.families``), which these tests pin down by what the embeddings do.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.diffusion import ImageGenerator, PromptEncoder
from models.families import FAMILIES, family_for
from models.tiny_tokenizer import T5_WINDOW

PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset", "zebra!"]
NEGATIVES = ["", "blurry", None, "ugly"]
SIZE = {"width": 32, "height": 32, "steps": 2}
SEEDS = [3, 4, 5, 6]
CLIP_WINDOW = 77
# 100 common words: 102 CLIP tokens (cut at 77), 101 T5 tokens (whole in the tiny window of 128)
OVER_CLIP = " ".join(["red cat"] * 50)
# 150 common words: over both windows
OVER_T5 = " ".join(["red cat"] * 75)


@pytest.fixture(scope="module", params=["tiny_flux_builtin_path", "tiny_sd3_path"])
def halves(request: pytest.FixtureRequest) -> tuple[PromptEncoder, ImageGenerator]:
    """Encoder and generator of each flow-matching family."""
    path = request.getfixturevalue(request.param)
    return PromptEncoder(path), ImageGenerator(path)


def _bytes_per_row(embeds: dict[str, np.ndarray]) -> int:
    """Bytes of one row's embeddings: what the encode stage hands to a separate generate pool."""
    return sum(value[0].nbytes for value in embeds.values())


def test_each_half_loads_through_its_family(halves) -> None:
    encoder, generator = halves
    assert generator.pipe.transformer is not None and encoder.pipe.transformer is None and encoder.pipe.vae is None
    texts = [name for name in ("text_encoder", "text_encoder_2", "text_encoder_3") if hasattr(encoder.pipe, name)]
    assert all(getattr(encoder.pipe, name) is not None for name in texts)
    assert all(getattr(generator.pipe, name, None) is None for name in texts)
    assert generator.info["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert generator.family is FAMILIES[encoder.pipeline_class] and generator.family.size_multiple == 16


def test_embeddings_and_their_bytes_per_row(halves) -> None:
    encoder, _ = halves
    embeds = encoder.encode(PROMPTS, NEGATIVES, guidance=[1.0] * len(PROMPTS))
    assert all(value.dtype == np.float32 and len(value) == len(PROMPTS) for value in embeds.values())
    if encoder.pipeline_class == "FluxPipeline":
        # T5 sequence (window x 32) + CLIP pooled (32); no negatives (guidance is an input, not CFG)
        assert {key: value.shape[1:] for key, value in embeds.items()} == {
            "prompt_embeds": (T5_WINDOW, 32), "pooled_prompt_embeds": (32,)}
        assert _bytes_per_row(embeds) == (T5_WINDOW * 32 + 32) * 4
    else:
        # (77 CLIP + window T5) x 64 and two pooled CLIP projections (2 x 32), each with its negative
        sequence, pooled = (CLIP_WINDOW + T5_WINDOW, 64), (64,)
        assert {key: value.shape[1:] for key, value in embeds.items()} == {
            "prompt_embeds": sequence, "negative_prompt_embeds": sequence,
            "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": pooled}
        assert _bytes_per_row(embeds) == 2 * ((CLIP_WINDOW + T5_WINDOW) * 64 + 64) * 4
        # an empty negative is the encoding of "" (no zeroing), whatever the batch holds
        alone = encoder.encode(["a red cat"], [""], guidance=[1.0])
        assert np.array_equal(embeds["negative_prompt_embeds"][0], alone["negative_prompt_embeds"][0])
        assert not np.array_equal(embeds["negative_prompt_embeds"][0], embeds["negative_prompt_embeds"][1])


def test_truncation_is_t5s_window(halves) -> None:
    encoder, _ = halves
    assert encoder.max_tokens == T5_WINDOW  # not CLIP's 77
    short, over_clip, over_t5 = encoder.token_counts(["a red cat", OVER_CLIP, OVER_T5])
    assert short == 4  # 3 words + T5's </s>
    assert CLIP_WINDOW < over_clip <= encoder.max_tokens < over_t5
    clip_tokens = len(encoder.pipe.tokenizer(OVER_CLIP, truncation=False, verbose=False)["input_ids"])
    assert clip_tokens > CLIP_WINDOW  # CLIP cuts this prompt; T5 reads it whole, so it is not truncated
    embeds = encoder.encode([OVER_CLIP, OVER_CLIP + " dog", OVER_T5, OVER_T5 + " dog"], None, guidance=[1.0] * 4)
    sequence = embeds["prompt_embeds"]
    # within T5's window a word past CLIP's cut still changes the sequence the transformer reads...
    assert not np.array_equal(sequence[0], sequence[1])
    # ...past T5's window nothing does: the prompt was truncated
    assert np.array_equal(sequence[2], sequence[3])


@pytest.mark.parametrize("guidance", [1.0, 3.5])
def test_images_are_batch_invariant(halves, guidance: float) -> None:
    encoder, generator = halves
    embeds = encoder.encode(PROMPTS, NEGATIVES, guidance=[guidance] * len(PROMPTS), micro_batch=2)
    images = generator.generate(embeds, seeds=SEEDS, guidance=guidance, micro_batch=2, **SIZE)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    for rows in ([2], [3, 0]):  # alone, padded; and reordered
        again = encoder.encode([PROMPTS[i] for i in rows], [NEGATIVES[i] for i in rows],
                               guidance=[guidance] * len(rows), micro_batch=2)
        assert all(np.array_equal(again[key], embeds[key][rows]) for key in embeds)
        redrawn = generator.generate(again, seeds=[SEEDS[i] for i in rows], guidance=guidance, micro_batch=2, **SIZE)
        assert redrawn.tobytes() == images[rows].tobytes()
    assert len({image.tobytes() for image in images}) == 4


def test_sizes_must_be_multiples_of_16(halves) -> None:
    encoder, generator = halves
    embeds = encoder.encode(["a red cat"], None, guidance=[1.0])
    with pytest.raises(ValueError, match="multiples of 16"):
        generator.generate(embeds, seeds=[0], width=40, height=32, steps=1, guidance=1.0)


def test_family_registry_names_both_pipelines(tiny_flux_builtin_path: str, tiny_sd3_path: str) -> None:
    assert family_for(tiny_flux_builtin_path)[0] == "FluxPipeline"
    assert family_for(tiny_sd3_path)[0] == "StableDiffusion3Pipeline"
    caps = {name: FAMILIES[name].max_sequence_length for name in ("FluxPipeline", "StableDiffusion3Pipeline")}
    assert caps == {"FluxPipeline": 512, "StableDiffusion3Pipeline": 256}


def test_t5_tokenizer_is_built_in_code() -> None:
    from models.tiny_tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(model_max_length=16)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red zebra 🙂", truncation=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[:2] == ["▁a", "▁red"]  # common words are one piece
    assert pieces[2:7] == ["▁z", "e", "b", "r", "a"]  # others are spelled
    assert pieces[-2:] == ["<unk>", "</s>"] and tokenizer.model_max_length == 16


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_weights_are_deterministic(name: str) -> None:
    from models.builtin import BUILTIN_MODELS

    first, second = (BUILTIN_MODELS[name]().transformer.state_dict() for _ in range(2))
    assert first.keys() == second.keys() and all(first[key].equal(second[key]) for key in first)
