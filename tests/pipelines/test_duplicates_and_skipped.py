"""Duplicate ids and what ``skipped`` counts, end to end on real Ray, local files and moto S3 (issue 16, kinds 1, 5).

Every later occurrence of an id is an error record ``duplicate id (first at <source>#<row>)``;
``skipped`` is the number of this run's input rows (after ``limit``) found already done, so
every run balances in every mode and at every ``limit``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipelines.accounting import RunSummary
from pipelines.retry import retry_errors
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

# r0..r7, then a second r0 with another prompt (the input).
DUPLICATED = [{"id": f"r{i}", "prompt": f"a red circle number {i}"} for i in range(8)]
DUPLICATED.append({"id": "r0", "prompt": "a blue square, the second r0"})
NIGHT_1 = [{"id": f"n1-{i:02d}", "prompt": f"a green star number {i}"} for i in range(12)]
NIGHT_2 = [{"id": f"n2-{i}", "prompt": f"a yellow moon number {i}"} for i in range(3)]


def _spec(input_uri: str, output_uri: str, model_cache: str, *, limit: int | None = None):
    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"encode": {"batch_size": 8}, "generate": {"batch_size": 4}},
        "score": None,
        "limit": limit,
    }
    return load_spec(raw=raw)


def _terms(summary: RunSummary) -> tuple[int, int, int, int, int]:
    assert summary.balanced, summary.equation
    return summary.input_rows, summary.images, summary.errors, summary.filtered, summary.skipped


def _check_duplicate_fates(out: dict) -> None:
    """Exactly one r0 image (the first prompt), the second r0 one duplicate record; every other id one image.

    Counted as consumers count them: tar samples and the errors table (``retry-errors`` leaves a
    retried record's old row in its shard's Parquet).
    """
    samples = {sample["json"]["id"]: sample for sample in out["samples"]}
    assert len(out["samples"]) == 8 and set(samples) == {f"r{i}" for i in range(8)}
    first = samples["r0"]["json"]
    assert (samples["r0"]["txt"], first["source_row"]) == (DUPLICATED[0]["prompt"], 0)
    assert len(out["errors"]) == 1
    second = out["errors"][0]
    assert (second["id"], second["prompt"], second["source_row"]) == ("r0", DUPLICATED[8]["prompt"], 8)
    assert (second["status"], second["stage"]) == ("error", "duplicate")
    assert second["error"] == f"duplicate id (first at {first['source']}#0)"


def test_duplicate_id_is_an_error_record_and_every_resume_balances(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    path = str(write_prompts(DUPLICATED, "prompts.jsonl"))
    out_uri = str(tmp_path / "out")
    first = run_job(_spec(path, out_uri, model_cache, limit=4), mode="overwrite")
    assert _terms(first) == (4, 4, 0, 0, 0)
    resumed = run_job(_spec(path, out_uri, model_cache))
    assert _terms(resumed) == (9, 4, 1, 0, 4)
    assert resumed.errors_by_stage == {"duplicate": 1}
    _check_duplicate_fates(read_output(out_uri))
    # The committed duplicate record is done: the next resume skips all nine rows.
    again = run_job(_spec(path, out_uri, model_cache))
    assert _terms(again) == (9, 0, 0, 0, 9) and again.shards == []
    # retry-errors gives the duplicate record back as itself, never as a second r0 image.
    retried = retry_errors(_spec(path, out_uri, model_cache))
    assert _terms(retried) == (1, 0, 1, 0, 0)
    _check_duplicate_fates(read_output(out_uri))
    # and a resume after the retry still finds every row done
    assert _terms(run_job(_spec(path, out_uri, model_cache))) == (9, 0, 0, 0, 9)


def test_duplicates_in_the_first_run_and_a_limit_that_cuts_between_them(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    rows = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}, {"id": "a", "prompt": "three"},
            {"id": "c", "prompt": "four"}, {"id": "a", "prompt": "five"}]
    path = str(write_prompts(rows, "prompts.jsonl"))
    out_uri = str(tmp_path / "out")
    # The first three rows: the second "a" is a duplicate of row 0 within this run's input.
    assert _terms(run_job(_spec(path, out_uri, model_cache, limit=3), mode="overwrite")) == (3, 2, 1, 0, 0)
    assert _terms(run_job(_spec(path, out_uri, model_cache))) == (5, 1, 1, 0, 3)
    out = read_output(out_uri)
    errors = sorted((row["source_row"], row["error"]) for row in out["errors"])
    assert errors == [(2, "duplicate id (first at prompts.jsonl#0)"), (4, "duplicate id (first at prompts.jsonl#0)")]
    assert sorted(sample["txt"] for sample in out["samples"]) == ["four", "one", "two"]


def test_skipped_counts_this_input_after_appends(ray_session, write_prompts, tmp_path: Path, model_cache: str) -> None:
    night_1 = str(write_prompts(NIGHT_1[:4], "night-1.jsonl"))
    night_2 = str(write_prompts(NIGHT_2, "night-2.jsonl"))
    out_uri = str(tmp_path / "out")
    assert _terms(run_job(_spec(night_1, out_uri, model_cache), mode="overwrite")) == (4, 4, 0, 0, 0)
    assert _terms(run_job(_spec(night_1, out_uri, model_cache), mode="append")) == (4, 4, 0, 0, 0)
    assert _terms(run_job(_spec(night_2, out_uri, model_cache), mode="append")) == (3, 3, 0, 0, 0)
    # The output holds 11 rows; this input is 3 rows, all done.
    assert _terms(run_job(_spec(night_2, out_uri, model_cache))) == (3, 0, 0, 0, 3)
    out = read_output(out_uri)
    fates = Counter(row["id"] for row in out["rows"] if row["status"] == "ok")
    assert fates == Counter({**{row["id"]: 2 for row in NIGHT_1[:4]}, **{row["id"]: 1 for row in NIGHT_2}})
    assert len(out["samples"]) == 11


def test_resume_with_a_limit_skips_only_the_limited_input(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    path = str(write_prompts(NIGHT_1, "night-1.jsonl"))
    out_uri = str(tmp_path / "out")
    assert _terms(run_job(_spec(path, out_uri, model_cache))) == (12, 12, 0, 0, 0)
    resumed = run_job(_spec(path, out_uri, model_cache, limit=5))
    assert _terms(resumed) == (5, 0, 0, 0, 5)
    assert resumed.equation == "0 images + 0 errors + 0 filtered + 5 skipped = 5 == 5 input rows"
    check_exactly_once(read_output(out_uri), [row["id"] for row in NIGHT_1])


def test_duplicates_and_skipped_on_s3(ray_session, s3, write_prompts, model_cache: str) -> None:
    s3.put(str(write_prompts(DUPLICATED, "prompts.parquet")), "pixelmill/in/night-1/prompts.parquet")
    s3.put(str(write_prompts(NIGHT_2, "night-2.csv")), "pixelmill/in/night-2/prompts.csv")
    night_1, night_2, out_uri = "s3://pixelmill/in/night-1/", "s3://pixelmill/in/night-2/", "s3://pixelmill/out"
    assert _terms(run_job(_spec(night_1, out_uri, model_cache, limit=4), mode="overwrite")) == (4, 4, 0, 0, 0)
    assert _terms(run_job(_spec(night_1, out_uri, model_cache))) == (9, 4, 1, 0, 4)
    _check_duplicate_fates(read_output(out_uri))
    assert _terms(run_job(_spec(night_2, out_uri, model_cache), mode="append")) == (3, 3, 0, 0, 0)
    assert _terms(run_job(_spec(night_2, out_uri, model_cache))) == (3, 0, 0, 0, 3)
    assert _terms(run_job(_spec(night_1, out_uri, model_cache, limit=5))) == (5, 0, 0, 0, 5)
    out = read_output(out_uri)
    assert out["run"]["balanced"] and out["run"]["skipped"] == 5
    assert sum(1 for row in out["rows"] if row["status"] == "ok") == 11
