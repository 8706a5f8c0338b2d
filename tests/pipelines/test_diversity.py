"""Diversity figures without Ray: the bottom-k sample, the pairwise figures, the stored embedding column,
and ``measure_run`` over shard Parquet files written by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import schema
from pipelines.diversity import (
    EMBEDDING_TYPE,
    NO_SCORE_WHY,
    GroupSample,
    group_key,
    measure_run,
    pairwise_figures,
    store_embeddings,
    summary_lines,
)
from pipelines.layout import OutputLayout
from pipelines.spec import DiversitySpec

DIM = 8


def _unit(rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _images(groups: dict[str, int], seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(group, f"{group}-{k}", _unit(rng)) for group, size in groups.items() for k in range(size)]


def _expected(images: list[tuple[str, str, np.ndarray]], cap: int) -> set[str]:
    """The bottom-k rule written out directly: groups by key, while the images fit."""
    sizes: dict[str, int] = {}
    for group, _, _ in images:
        sizes[group] = sizes.get(group, 0) + 1
    picked, total = set(), 0
    for _, group in sorted(group_key(g) for g in sizes):
        total += sizes[group]
        if total > cap:
            break
        picked.add(group)
    return picked


def _sample(images: list[tuple[str, str, np.ndarray]], cap: int) -> list[tuple[str, str, np.ndarray]]:
    sample = GroupSample(cap)
    for group, row_id, embedding in images:
        sample.add(group, row_id, embedding)
    return sample.rows()


def test_sample_keeps_whole_groups_up_to_the_cap() -> None:
    images = _images({f"p{i}": 1 + i % 4 for i in range(200)})
    rows = _sample(images, cap=50)
    groups = {group for group, _, _ in rows}
    assert 40 <= len(rows) <= 50  # groups of at most 4 images: the prefix stops within 4 of the cap
    assert groups == _expected(images, 50)
    for group in groups:  # whole groups: every image of a picked group is in
        assert sum(1 for g, _, _ in rows if g == group) == 1 + int(group[1:]) % 4
    assert [row_id for _, row_id, _ in rows] == sorted(row_id for _, row_id, _ in rows)


def test_sample_does_not_depend_on_order_or_shard_split() -> None:
    images = _images({f"p{i}": 1 + i % 3 for i in range(300)})
    shuffled = list(images)
    random.Random(7).shuffle(shuffled)
    first = [row_id for _, row_id, _ in _sample(images, cap=64)]
    assert first == [row_id for _, row_id, _ in _sample(shuffled, cap=64)]
    assert first == [row_id for _, row_id, _ in _sample(list(reversed(images)), cap=64)]


def test_a_first_group_larger_than_the_cap_gives_an_empty_sample() -> None:
    images = _images({"big": 5})
    assert _sample(images, cap=4) == []
    assert len(_sample(images, cap=5)) == 5


def test_sample_memory_stays_bounded() -> None:
    sample = GroupSample(10)
    for group, row_id, embedding in _images({f"p{i}": 2 for i in range(1000)}):
        sample.add(group, row_id, embedding)
        assert sample.size <= 20
    assert len(sample.rows()) == 10


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=0, max_size=40),
    cap=st.integers(min_value=1, max_value=30),
    order_seed=st.integers(min_value=0, max_value=2**16),
)
def test_sample_property(sizes: list[int], cap: int, order_seed: int) -> None:
    images = _images({f"g{i}": size for i, size in enumerate(sizes)})
    shuffled = list(images)
    random.Random(order_seed).shuffle(shuffled)
    rows = _sample(shuffled, cap)
    assert len(rows) <= cap
    assert {group for group, _, _ in rows} == _expected(images, cap)
    by_group = {group: size for group, size in ((f"g{i}", s) for i, s in enumerate(sizes))}
    for group in {group for group, _, _ in rows}:
        assert sum(1 for g, _, _ in rows if g == group) == by_group[group]
    assert [r for _, r, _ in rows] == [r for _, r, _ in _sample(images, cap)]


def test_pairwise_figures_find_near_duplicates_and_distances() -> None:
    rng = np.random.default_rng(1)
    base = _unit(rng)
    close = base + 0.01 * _unit(rng)
    close /= np.linalg.norm(close)
    rows = sorted([("a", "a0", base), ("a", "a1", close), ("b", "b0", -base), ("c", "c0", _unit(rng))],
                  key=lambda row: row[1])
    figures, pairs = pairwise_figures(rows, threshold=0.95)
    assert figures["near_duplicates"] == {"pairs": 1, "images": 2}
    assert pairs.to_pylist()[0]["id_a"] == "a0" and pairs.to_pylist()[0]["id_b"] == "a1"
    assert pairs.num_rows == 1 and pairs.column("cosine")[0].as_py() > 0.99
    within = figures["within_prompt_distance"]
    assert within["groups"] == 1 and within["mean"] == pytest.approx(1 - float(base @ close), abs=1e-5)
    matrix = np.stack([emb for _, _, emb in rows]).astype(np.float64)
    sims = matrix @ matrix.T
    brute = np.mean([1 - sims[i, j] for i in range(4) for j in range(i + 1, 4)])
    assert figures["mean_distance"] == pytest.approx(brute, abs=1e-5)


def test_pairs_table_is_capped_most_similar_first() -> None:
    rng = np.random.default_rng(2)
    base = _unit(rng)
    rows = [(f"g{i}", f"r{i:02d}", base) for i in range(10)]  # 45 identical pairs
    figures, pairs = pairwise_figures(rows, threshold=0.9, max_pairs=5)
    assert figures["near_duplicates"] == {"pairs": 45, "images": 10}
    assert figures["mean_distance"] == pytest.approx(0.0, abs=1e-6)
    assert pairs.num_rows == 5
    assert [(p["id_a"], p["id_b"]) for p in pairs.to_pylist()] == [("r00", f"r{j:02d}") for j in range(1, 6)]


def test_store_embeddings_makes_a_list_column_with_nulls() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    matrix[1] = np.nan
    stored = store_embeddings(pa.table({schema.IMAGE_EMBEDDING: pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.ravel()), 4)}))
    column = stored.column(schema.IMAGE_EMBEDDING)
    assert column.type == EMBEDDING_TYPE
    assert column.to_pylist() == [[0, 1, 2, 3], None, [8, 9, 10, 11]]
    plain = pa.table({"x": [1]})
    assert store_embeddings(plain) is plain


def _write_shard(layout: OutputLayout, shard: int, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    if schema.IMAGE_EMBEDDING in table.column_names:
        index = table.column_names.index(schema.IMAGE_EMBEDDING)
        table = table.set_column(index, schema.IMAGE_EMBEDDING, table.column(index).cast(EMBEDDING_TYPE))
    pq.write_table(table, layout.shard_file("parquet", shard))
    Path(layout.shard_file("stats", shard)).write_text(json.dumps({"shard": shard}))


def _row(row_id: str, sha: str, embedding: np.ndarray | None, status: str = "ok", **extra) -> dict:
    row = {"id": row_id, "status": status, "sha256": sha, **extra}
    if embedding is not None:
        row[schema.IMAGE_EMBEDDING] = None if status != "ok" else embedding.tolist()
    return row


def test_measure_run_over_shards(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    rng = np.random.default_rng(3)
    same = _unit(rng)
    _write_shard(layout, 0, [_row("a", "aa" * 32, same), _row("b", "aa" * 32, same),
                             _row("x", "", None, status="error") | {schema.IMAGE_EMBEDDING: None}])
    _write_shard(layout, 1, [_row("c", "cc" * 32, _unit(rng)), _row("d", "dd" * 32, _unit(rng))])
    _write_shard(layout, 2, [_row("z", "aa" * 32, _unit(rng))])  # not this run's shard
    figures = measure_run(layout, [0, 1], DiversitySpec(), run_id="run1")
    assert figures["images"] == 4
    assert figures["exact_duplicates"] == {"images": 2, "groups": 1}
    assert figures["sample"]["images"] == 4 and figures["sample"]["of"] == 4
    assert figures["near_duplicates"]["pairs"] == 1
    assert figures["why"] is None
    assert figures["within_prompt_distance"] == {"mean": None, "groups": 0}  # no parent_id: groups of one
    pairs = pq.read_table(layout.path(figures["pairs_table"])).to_pylist()
    assert [(p["id_a"], p["id_b"]) for p in pairs] == [("a", "b")]
    assert figures["pairs_table"] == "_diversity/run1.parquet"
    assert layout.is_owned(layout.diversity_table("run1"))
    assert not layout.is_owned(layout.path("_diversity", "notes.txt"))
    assert any("2 of 4 images are exact duplicates" in line for line in summary_lines(figures))


def test_measure_run_groups_by_parent_id(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    rng = np.random.default_rng(4)
    rows = [_row(f"p{p}#{k}", f"{p}{k}".ljust(64, "0"), _unit(rng), parent_id=f"p{p}") for p in range(3) for k in
            range(2)]
    _write_shard(layout, 0, rows[:3])
    _write_shard(layout, 1, rows[3:])  # a group split across shards
    figures = measure_run(layout, [0, 1], DiversitySpec(sample_size=4), run_id="r")
    assert figures["sample"]["images"] == 4 and figures["sample"]["groups"] == 2
    assert figures["within_prompt_distance"]["groups"] == 2
    assert figures["within_prompt_distance"]["mean"] > 0


def test_measure_run_without_embeddings_reports_exact_duplicates_only(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    _write_shard(layout, 0, [_row("a", "aa" * 32, None), _row("b", "aa" * 32, None), _row("c", "cc" * 32, None)])
    figures = measure_run(layout, [0], DiversitySpec(), run_id="r")
    assert figures["exact_duplicates"] == {"images": 2, "groups": 1}
    assert figures["near_duplicates"] is None and figures["mean_distance"] is None and figures["sample"] is None
    assert figures["why"] == NO_SCORE_WHY
    assert figures["pairs_table"] is None and not Path(layout.path("_diversity")).exists()
    assert "score stage is off" in summary_lines(figures)[-1]
