"""A small CLIP byte-level BPE vocabulary built in code, for the built-in tiny models.

The vocabulary has the 256 byte symbols of CLIP's byte-to-unicode table, each also
with the ``</w>`` end-of-word suffix, the two special tokens, and whole-word tokens
for a few hundred common English words (plus the merge chains that build them), so
ordinary prompts tokenize to one token per common word and degrade to characters
for everything else, like the real CLIP tokenizer.
"""

from __future__ import annotations

import json
import os

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77

# Common words for image prompts; order only affects merge ranks.
COMMON_WORDS = """
a an the of and or in on at to with without by for from into over under near behind
above below between inside outside through across around under beside under is are
was be it its this that these those there here very more most much many some few
one two three four five six seven eight nine ten first last big small large tiny huge
long short tall wide old new young ancient modern future bright dark light heavy soft
hard warm cold hot wet dry clean dirty empty full quiet loud happy sad calm wild
red orange yellow green blue purple pink brown black white gray grey gold silver
color colors colorful pastel neon vivid muted golden
cat cats dog dogs bird birds fish horse cow sheep lion tiger bear wolf fox rabbit
mouse owl eagle dragon unicorn robot robots person people man woman men women child
children boy girl baby king queen knight wizard witch astronaut pirate chef farmer
soldier artist face eyes eye hair hand hands portrait smile
tree trees forest flower flowers garden grass leaf leaves plant rose sunflower
mountain mountains hill river lake sea ocean beach island desert valley canyon cave
sky cloud clouds sun moon star stars planet space galaxy rain snow storm fog wind
sunset sunrise night day morning evening winter summer spring autumn fall
city town village street road bridge house home castle tower building buildings
church temple room kitchen window door wall roof table chair bed lamp book books
car cars train boat ship plane bicycle rocket
food apple banana cake bread pizza coffee tea cup bottle
photo photograph painting drawing sketch illustration render art style digital
oil watercolor pencil ink anime cartoon realistic photorealistic detailed highly
high quality resolution cinematic lighting dramatic studio shot close up view
wide angle lens focus bokeh background foreground scene landscape abstract
minimal surreal fantasy magic magical epic beautiful cute scary pretty ugly
concept trending artstation unreal engine octane hd hdr sharp blurry
water fire ice stone rock wood metal glass paper sand
running sitting standing flying walking swimming sleeping eating playing reading
holding wearing looking dancing jumping
hat shirt dress coat shoes glasses crown armor
not no blurry lowres bad worst deformed text watermark signature
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Segment ``word`` with the merges in ``ranks``, exactly as CLIP's BPE does."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_vocab_and_merges(
    words: list[str] | None = None, extra_words: list[str] | None = None
) -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab, merges)`` for a byte-level CLIP BPE with one token per word in ``words``.

    ``extra_words`` are added after ``words`` (default :data:`COMMON_WORDS`), so the
    tokens and merges of ``words`` keep their ids and ranks; without them the result
    is unchanged.

    Words are added one at a time: the word is segmented with the merges so far and the
    first two pieces are joined by a new merge ranked after all existing ones, until the
    word is one token. New merges only fire once the old ones are exhausted, so words
    added earlier (already single tokens) keep their tokenization; a plain per-word
    merge chain would not, since e.g. "t o</w>" (from "to") ranked early splits "photo".
    """
    symbols = list(bytes_to_unicode().values())
    tokens: list[str] = symbols + [symbol + "</w>" for symbol in symbols]
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    base = list(words if words is not None else COMMON_WORDS)
    for word in dict.fromkeys(base + list(extra_words or [])):
        # Re-segment after each new merge: it may fire more than once ("v i" in "vivid").
        while len(pieces := _bpe(word, ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            if (joined := pieces[0] + pieces[1]) not in known:
                known.add(joined)
                tokens.append(joined)
    tokens += [BOS, EOS]
    merges = [f"{left} {right}" for left, right in ranks]  # dicts keep insertion = rank order
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str, extra_words: list[str] | None = None) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (CLIP's on-disk format) into ``folder``.

    ``extra_words``: more whole-word tokens, after the common ones (see :func:`build_vocab_and_merges`).
    """
    vocab, merges = build_vocab_and_merges(extra_words=extra_words)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump(vocab, handle, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_clip_tokenizer(folder: str, extra_words: list[str] | None = None):  # -> transformers.CLIPTokenizer
    """Write the vocabulary into ``folder`` and load it as a ``transformers.CLIPTokenizer``.

    ``extra_words``: more whole-word tokens (see :func:`build_vocab_and_merges`).
    """
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder, extra_words)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)


T5_WINDOW = 128  # the tiny T5 tokenizers' model_max_length: longer than CLIP's 77, so the two windows differ


def build_t5_tokenizer(model_max_length: int = T5_WINDOW):  # -> transformers.T5Tokenizer
    """Build a small T5 tokenizer in code: a SentencePiece-style Unigram over :data:`COMMON_WORDS`.

    The vocabulary is T5's layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), one ``▁word`` piece
    per common word, and single characters (letters, digits, punctuation, with and without
    the word-start ``▁``), so common words are one token and other words are spelled; a
    character outside the table is ``<unk>``. No sentinel (``<extra_id_N>``) tokens.

    Returns:
        a ``transformers.T5Tokenizer`` (in transformers 5 the ``tokenizers``-backed class that
        ``T5TokenizerFast`` names too) whose ``model_max_length`` is ``model_max_length``.
    """
    import string

    from transformers import T5Tokenizer

    characters = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(f"▁{word}", -5.0) for word in dict.fromkeys(COMMON_WORDS)]
    pieces += [(f"▁{char}", -11.0) for char in characters] + [(char, -10.0) for char in characters]
    scores = dict(reversed(pieces))  # one entry per piece, its first score ("▁a" is a word and a character)
    vocab = [(piece, scores[piece]) for piece in dict.fromkeys(piece for piece, _ in pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
