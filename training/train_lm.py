"""Train and evaluate ``shapes-lm``: a small causal LM that turns a request into a world caption.

Usage (the commands that made the shipped model; see its model card)::

    python -m training.train_lm train --out models/zoo/shapes-lm --seed 0 --steps 3000
    python -m training.train_lm evaluate --lm models/zoo/shapes-lm --sd models/zoo/shapes-sd --n 200

``train`` builds a word-level tokenizer over the world's words (``training.requests.REQUEST_WORDS``)
whose ``chat_template`` renders a user message as ``"<bos>request: <request>\\ncaption:"``, and a
``GPT2LMHeadModel`` that learns to continue it with ``" <caption><eos>"``: requests are drawn by
``requests.make_request`` from ``world.scenes(..., split_name="train")`` and the target is the
caption of the scene the request came from, so the model learns the spread of captions that
satisfy a request (sampling gives varied ones).  The loss covers the caption tokens only.

``evaluate`` draws requests from held-out scenes (``world.held_out``), applies the chat template
exactly as pixelmill's LLM stage does, samples 4 variations per request (one ``generate`` call
with 4 return sequences after ``torch.manual_seed(i)`` for request ``i``) with the saved generation
config, and prints as JSON: the share of outputs that parse as captions, the
share that keep every attribute the request named, the mean share of distinct variations per
request, and the pixel-judge rate (``training.adherence``, "all") of ``shapes-sd`` images drawn
from the LM's first variation next to images drawn from the source scenes' own captions.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from training import requests, world

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}request: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}caption:{% endif %}"
)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
MAX_LENGTH = 64  # tokens of prompt + caption; the longest caption is 20 tokens
VARIATIONS = 4


def build_tokenizer():
    """The word-level ``PreTrainedTokenizerFast`` of shapes-lm (lower-cased, punctuation split off)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIAL_TOKENS.values(), *requests.REQUEST_WORDS, "request", "caption", ":", ",", "."]
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, "left ," -> "left,"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=True,
        model_max_length=MAX_LENGTH, padding_side="left", **SPECIAL_TOKENS,  # left: batched generation
    )


def prompt_text(tokenizer, request: str) -> str:
    """``request`` formatted as the LLM stage formats a row's prompt (chat template, generation prompt)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": request}], add_generation_prompt=True, tokenize=False
    )


def build_model(tokenizer, *, width: int = 128, layers: int = 4, heads: int = 4):
    """An untrained (seeded by the caller) ``GPT2LMHeadModel`` sized for ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=MAX_LENGTH, n_embd=width, n_layer=layers, n_head=heads,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _examples(tokenizer, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training sequences: input ids ``[n, L]`` (right-padded) and labels (-100 off the caption)."""
    rng = np.random.default_rng(seed + 1)
    prompts, targets = [], []
    for scene in world.scenes(n, seed, split_name="train"):
        prompts.append(prompt_text(tokenizer, requests.make_request(scene, rng).text()))
        targets.append(" " + world.caption(scene))
    prompt_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    target_ids = tokenizer(targets, add_special_tokens=False).input_ids
    length = max(len(p) + len(t) + 1 for p, t in zip(prompt_ids, target_ids))
    ids = torch.full((n, length), tokenizer.pad_token_id)
    labels = torch.full((n, length), -100)
    for row, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        sequence = [*p, *t, tokenizer.eos_token_id]
        ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(p) : len(sequence)] = torch.tensor(sequence[len(p) :])
    return ids, labels


def _lr(base: float, step: int, total: int) -> float:
    """100 warm-up steps, then cosine decay to 0."""
    return base * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / total))


def train(args: argparse.Namespace) -> None:
    """Train shapes-lm and save model, tokenizer and generation config into ``args.out``."""
    from transformers import GenerationConfig

    start = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tokenizer = build_tokenizer()
    ids, labels = _examples(tokenizer, args.pool, args.seed)
    print(f"{len(ids)} examples, {ids.shape[1]} tokens max, {time.time() - start:.0f}s", flush=True)
    if args.init:  # continue from a saved shapes-lm folder (same tokenizer: it is built in code)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.init)
    else:
        model = build_model(tokenizer, width=args.width, layers=args.layers, heads=args.heads)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    for step in range(args.steps):
        rows = torch.from_numpy(rng.integers(len(ids), size=args.batch))
        length = int((labels[rows] != -100).nonzero()[:, 1].max()) + 1  # trim shared right padding
        batch, target = ids[rows, :length], labels[rows, :length]
        for group in optimiser.param_groups:
            group["lr"] = _lr(args.lr, step, args.steps)
        loss = model(input_ids=batch, attention_mask=batch != tokenizer.pad_token_id, labels=target).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step}/{args.steps} {time.time() - start:.0f}s loss={loss.item():.4f}", flush=True)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.95, top_k=0, max_new_tokens=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.eval().save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": args.out, "params": params, "wall_s": round(time.time() - start, 1)}), flush=True)


def load(lm_path: str):
    """``(tokenizer, model)`` of a saved shapes-lm folder, loaded as the LLM stage loads one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(lm_path), AutoModelForCausalLM.from_pretrained(lm_path).eval()


@torch.no_grad()
def rewrite(tokenizer, model, request: str, *, seed: int, count: int = 1) -> list[str]:
    """``count`` sampled captions for ``request`` after ``torch.manual_seed(seed)``.

    The LLM stage's rule: chat template with the generation prompt, sample (the saved generation
    config) until EOS, decode the new tokens without special tokens, strip.
    """
    ids = tokenizer(prompt_text(tokenizer, request), add_special_tokens=False, return_tensors="pt")
    torch.manual_seed(seed)
    out = model.generate(**ids, num_return_sequences=count)  # sampling settings: model.generation_config
    return [tokenizer.decode(row[ids.input_ids.shape[1] :], skip_special_tokens=True).strip() for row in out]


def draw(requests_: list[str], lm_path: str, *, variations: int) -> list[list[str]]:
    """``variations`` captions per request, drawn the way the LLM stage draws them.

    Through ``models.llm.PromptWriter`` (the stage's code: chat template, a generator per row,
    micro-batch 1) with the model's own sampling settings (``generation_config.json``, what the
    stage uses when the spec sets none). Request ``i``'s variation ``v`` has seed ``i * variations + v``.

    Returns:
        one list of ``variations`` captions per request.
    """
    from models.llm import PromptWriter

    writer = PromptWriter(lm_path)
    prompts = [request for request in requests_ for _ in range(variations)]
    texts = writer.write(prompts, list(range(len(prompts))), **writer.sampling())
    return [texts[i * variations:(i + 1) * variations] for i in range(len(requests_))]


def held_out_requests(n: int, seed: int) -> list[tuple[str, world.Scene]]:
    """``n`` (request, source scene) pairs from held-out scenes (``world.held_out(n, seed)``)."""
    rng = np.random.default_rng(seed)
    return [(requests.make_request(scene, rng).text(), scene) for _text, _image, scene in world.held_out(n, seed)]


def text_figures(pairs: list[tuple[str, list[str]]]) -> dict[str, float]:
    """Parse, keep and distinct rates of (request, outputs) pairs.

    Returns:
        ``parse``: share of all outputs that ``world.parse_caption`` reads; ``keep``: share whose scene
        satisfies every attribute of the request; ``distinct``: mean over requests of distinct outputs
        / outputs.
    """
    parsed = kept = total = 0
    distinct = []
    for request, outputs in pairs:
        constraints = requests.named_attributes(request)
        assert constraints is not None, request
        for output in outputs:
            scene = world.parse_caption(output)
            total += 1
            parsed += scene is not None
            kept += scene is not None and requests.satisfies(scene, constraints)
        distinct.append(len(set(outputs)) / len(outputs))
    return {"parse": parsed / total, "keep": kept / total, "distinct": float(np.mean(distinct))}


def judged_rate(sd_path: str, captions: list[str]) -> float:
    """Share of shapes-sd images (64x64, 2 steps, seeds 0..) that pass the pixel judge's "all" for their caption.

    A caption that is not a world caption counts as a failure.
    """
    from training.adherence import score
    from training.train_world import generate

    images = generate(sd_path, captions, steps=2)
    passed = [world.parse_caption(c) is not None and score(c, image).all_ok for c, image in zip(captions, images)]
    return float(np.mean(passed))


def evaluate(args: argparse.Namespace) -> None:
    """Print the four figures of the model card as JSON."""
    begin = time.time()
    pairs = held_out_requests(args.n, args.seed)
    outputs = draw([r for r, _scene in pairs], args.lm, variations=VARIATIONS)
    report: dict = {"n": args.n, "seed": args.seed, **text_figures([(r, o) for (r, _s), o in zip(pairs, outputs)])}
    report["lm_s"] = round(time.time() - begin, 1)
    report["examples"] = [{"request": r, "outputs": o} for (r, _s), o in list(zip(pairs, outputs))[:5]]
    if args.sd:
        report["judge_lm"] = judged_rate(args.sd, [o[0] for o in outputs])
        report["judge_world"] = judged_rate(args.sd, [world.caption(scene) for _r, scene in pairs])
    report["wall_s"] = round(time.time() - begin, 1)
    print(json.dumps(report, indent=1), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``train`` or ``evaluate`` (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m training.train_lm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tr = commands.add_parser("train", help="train shapes-lm")
    tr.add_argument("--out", required=True)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--pool", type=int, default=100000, help="(request, caption) examples drawn up front")
    tr.add_argument("--steps", type=int, default=3000)
    tr.add_argument("--batch", type=int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--width", type=int, default=128)
    tr.add_argument("--layers", type=int, default=4)
    tr.add_argument("--heads", type=int, default=4)
    tr.add_argument("--init", help="a shapes-lm folder to continue training from (--width/--layers/--heads ignored)")
    ev = commands.add_parser("evaluate", help="the model card's four figures on held-out requests, as JSON")
    ev.add_argument("--lm", required=True)
    ev.add_argument("--sd", help="a shapes-sd folder for the pixel-judge comparison")
    ev.add_argument("--n", type=int, default=200)
    ev.add_argument("--seed", type=int, default=1)
    for command in (tr, ev):
        command.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # shared 2-core machine: one thread (see training.train_world)
    {"train": train, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
