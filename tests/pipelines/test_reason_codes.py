"""Error reasons group by a stable code, each with one full example (issue 17, item 6)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.accounting import RunSummary
from pipelines.schema import reason_code
from pipelines.sink import ShardDatasink


@pytest.mark.parametrize(("stage", "error", "code"), [
    ("input", "line 3: column 'prompt' holds a number where the file's other rows hold a string",
     "input: line N: column '…' holds a number where the file's other rows hold a string"),
    ("input", "width must be a multiple of 8, got 63", "input: width must be a multiple of N, got N"),
    ("style", "s3://bucket/styles/x.png: not found", "style: URI: not found"),
    ("style", "/tmp/a/b.png is a directory", "style: PATH is a directory"),
    ("input", "prompt is empty", "input: prompt is empty"),
    ("generate", "ValueError: width and height must be multiples of 16, got 48x40",
     "generate: ValueError: width and height must be multiples of N, got NxN"),
    ("llm", "the LLM text does not match llm.constraint: 'a red circle, white background' (2 draws)",
     "llm: the LLM text does not match llm.constraint: '…' (N draws)"),
    ("generate", "RuntimeError: boom\nTraceback (most recent call last): ...", "generate: RuntimeError: boom"),
])
def test_reason_codes_take_the_values_out(stage: str, error: str, code: str) -> None:
    assert reason_code(stage, error) == code


def test_the_summary_counts_codes_and_keeps_one_full_example_each() -> None:
    table = pa.table({
        "status": ["error", "error", "error", "ok", "error"],
        "stage": ["input", "input", "input", "", "input"],
        "error": ["width must be a multiple of 8, got 63", "width must be a multiple of 8, got 100",
                  "line 3: column 'prompt' holds a number where the file's other rows hold a string", "",
                  "prompt is empty"],
    })
    stats = ShardDatasink._stats(table, shard=0, run_id="r", started="", seconds=0.0)
    assert stats["failures_by_reason"] == {
        "input: width must be a multiple of N, got N": 2,
        "input: line N: column '…' holds a number where the file's other rows hold a string": 1,
        "input: prompt is empty": 1,
    }
    summary = RunSummary(run_id="r", output="out", mode="resume")
    summary.add_shards([stats])
    lines = summary.reason_lines()
    assert lines[0] == "2 x input: width must be a multiple of N, got N"
    assert lines[1] == "    e.g. input: width must be a multiple of 8, got 63"
    # the full reason is there, never cut at its first colon
    assert ("    e.g. input: line 3: column 'prompt' holds a number where the file's other rows hold a string"
            in lines)
    assert "1 x input: prompt is empty" in lines and "    e.g. input: prompt is empty" not in lines
    assert summary.errors_by_stage == {"input": 4}
