"""The LLM prompt writer on the built-in tiny LM: seeds, batch invariance, chat template, left padding."""

from __future__ import annotations

import pytest

from models.llm import PromptWriter, TextWindow
from models.store import model_fingerprint, resolve_model_path
from models.tiny_lm import ASSISTANT, USER

PROMPTS = ["a red cat", "a very long blue dog on the beach at night with a lamp", "sky", "a green tree"]


@pytest.fixture(scope="module")
def tiny_lm_path(model_cache_dir: str) -> str:
    return resolve_model_path("builtin:tiny-lm", cache_dir=model_cache_dir)


@pytest.fixture(scope="module")
def writer(tiny_lm_path: str) -> PromptWriter:
    return PromptWriter(tiny_lm_path)


def test_the_tiny_lm_is_a_plain_transformers_folder(tiny_lm_path: str, writer: PromptWriter) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert writer.tokenizer.padding_side == "left"
    assert writer.tokenizer.pad_token == writer.tokenizer.eos_token  # none of its own: eos pads
    assert writer.info["model_hash"] == model_fingerprint(tiny_lm_path)


def test_the_same_seed_gives_the_same_text_and_other_seeds_other_text(writer: PromptWriter) -> None:
    first = writer.write(PROMPTS, [1, 2, 3, 4], max_new_tokens=10)
    again = writer.write(PROMPTS, [1, 2, 3, 4], max_new_tokens=10)
    other = writer.write(PROMPTS, [5, 6, 7, 8], max_new_tokens=10)
    assert first == again
    assert all(text for text in first)
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 3


@pytest.mark.parametrize("do_sample", [True, False])
def test_a_rows_text_does_not_depend_on_its_batch(writer: PromptWriter, do_sample: bool) -> None:
    seeds = [11, 12, 13, 14]
    alone = [writer.write([p], [s], max_new_tokens=12, do_sample=do_sample)[0] for p, s in zip(PROMPTS, seeds)]
    for micro_batch in (1, 2, 4):  # left-padded chunks of 2 and 4 rows: measured the same on CPU
        assert writer.write(PROMPTS, seeds, max_new_tokens=12, do_sample=do_sample, micro_batch=micro_batch) == alone
    reordered = writer.write(PROMPTS[::-1], seeds[::-1], max_new_tokens=12, do_sample=do_sample)
    assert reordered[::-1] == alone


def test_the_chat_template_wraps_the_filled_instruction(writer: PromptWriter) -> None:
    rendered = writer.render("a red cat", "describe {prompt} in detail")
    assert rendered == f"{USER} describe a red cat in detail {ASSISTANT}"
    with_template = writer.write(["a red cat"], [3], max_new_tokens=10)
    template = writer.tokenizer.chat_template
    writer.tokenizer.chat_template = None
    try:
        assert writer.render("a red cat", "describe {prompt}") == "describe a red cat"  # no template: as is
        assert writer.write(["a red cat"], [3], max_new_tokens=10) != with_template
    finally:
        writer.tokenizer.chat_template = template


def test_left_padding_keeps_the_prompt_next_to_the_new_tokens(writer: PromptWriter) -> None:
    texts = [writer.render(p) for p in PROMPTS[:2]]
    encoded = writer.tokenizer(texts, padding=True, add_special_tokens=False)
    short = encoded["attention_mask"][0]
    assert short[0] == 0 and short[-1] == 1  # pads on the left


def test_sampling_settings_change_the_text_and_greedy_ignores_the_seed(writer: PromptWriter) -> None:
    sampled = writer.write(PROMPTS, [1, 2, 3, 4], max_new_tokens=10)
    narrow = writer.write(PROMPTS, [1, 2, 3, 4], max_new_tokens=10, top_p=0.2)
    assert narrow != sampled
    greedy = writer.write(PROMPTS[:1] * 2, [1, 2], max_new_tokens=10, do_sample=False)
    assert greedy[0] == greedy[1]
    assert all(len(text.split()) <= 10 for text in sampled)  # at most max_new_tokens words


def test_mismatched_prompts_and_seeds_raise(writer: PromptWriter) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        writer.write(["a", "b"], [1])


def test_the_text_window_is_the_image_models_tokenizer(tiny_sd_path: str, tmp_path) -> None:
    window = TextWindow(tiny_sd_path)
    assert window.limit == 77
    assert window.count("a red cat") == 5  # bos, three words, eos
    assert window.count("cat " * 100) > 77
    assert TextWindow(str(tmp_path)).limit is None  # no tokenizer folder: no window
