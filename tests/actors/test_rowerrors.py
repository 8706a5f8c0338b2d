"""``actors.rowerrors``: bisection of a failing batch down to its bad rows, and error marking. No Ray, no model."""

from __future__ import annotations

import numpy as np
import pytest

from actors import rowerrors
from actors.rowerrors import mark_errors, run_isolating
from pipelines.schema import Status


def _compute(bad: set[int], calls: list[list[int]], error: Exception | None = None):
    def compute(rows):
        calls.append(list(rows))
        if bad & set(rows):
            raise error or ValueError(f"bad rows {sorted(bad & set(rows))}")
        return [row * 10 for row in rows]

    return compute


def test_healthy_batch_is_one_call() -> None:
    calls: list[list[int]] = []
    results, errors = run_isolating(_compute(set(), calls), [0, 2, 5])
    assert results == {0: 0, 2: 20, 5: 50} and errors == {}
    assert calls == [[0, 2, 5]]


def test_no_rows_no_call() -> None:
    calls: list[list[int]] = []
    assert run_isolating(_compute(set(), calls), []) == ({}, {})
    assert calls == []


@pytest.mark.parametrize("bad", [{0}, {7}, {3}, {2, 5}, {0, 1, 2, 3, 4, 5, 6, 7}])
def test_bad_rows_are_isolated_and_the_rest_computed(bad: set[int]) -> None:
    calls: list[list[int]] = []
    rows = list(range(8))
    results, errors = run_isolating(_compute(bad, calls), rows)
    assert set(errors) == bad
    assert results == {row: row * 10 for row in rows if row not in bad}
    assert all(message.startswith("ValueError: bad rows") for message in errors.values())
    assert calls[0] == rows
    # every failing row was tried on its own, every healthy row computed exactly once with success
    assert all([row] in calls for row in bad)
    succeeded = [row for call in calls if not bad & set(call) for row in call]
    assert sorted(succeeded) == sorted(results)


def test_one_bad_row_takes_logarithmic_calls() -> None:
    calls: list[list[int]] = []
    run_isolating(_compute({37}, calls), list(range(64)))
    assert len(calls) == 1 + 2 * 6  # log2(64) levels, two halves each


def test_out_of_memory_frees_the_device_cache_and_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[bool] = []
    monkeypatch.setattr(rowerrors, "_free_device_cache", lambda: freed.append(True))
    calls: list[list[int]] = []

    def compute(rows):
        calls.append(list(rows))
        if len(rows) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(rows)

    results, errors = run_isolating(compute, list(range(8)))
    assert results == {i: i for i in range(8)} and errors == {}
    assert len(freed) == 3  # the 8-row call and both 4-row halves ran out of memory
    assert sorted(map(len, calls)) == [2, 2, 2, 2, 4, 4, 8]


def test_sticky_device_error_exits_for_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(Exception):
        pass

    def exit_for_restart(error: BaseException) -> None:
        raise Exited(str(error))

    monkeypatch.setattr(rowerrors, "_exit_for_restart", exit_for_restart)
    error = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(Exited, match="illegal memory access"):
        run_isolating(_compute({1}, [], error), [0, 1, 2])


def test_mark_errors_sets_plain_string_status_stage_and_error() -> None:
    batch = {
        "status": np.array(["ok", "ok", "ok"]),  # fixed-width strings: widened to object first
        "stage": np.array(["", "", ""]),
        "error": np.array(["", "", ""]),
    }
    mark_errors(batch, {1: "ValueError: boom"}, stage="generate")
    mark_errors(batch, {2: "too low"}, stage="score", status=Status.FILTERED)
    assert list(batch["status"]) == ["ok", "error", "filtered"]
    assert list(batch["stage"]) == ["", "generate", "score"]
    assert list(batch["error"]) == ["", "ValueError: boom", "too low"]
    assert batch["status"].dtype == object and all(type(s) is str for s in batch["status"])


def test_mark_errors_without_errors_leaves_the_batch_alone() -> None:
    batch = {"status": np.array(["ok"]), "stage": np.array([""]), "error": np.array([""])}
    mark_errors(batch, {}, stage="encode")
    assert batch["status"].dtype != object


def test_mark_errors_refuses_an_unknown_status() -> None:
    batch = {"status": np.array(["ok"], dtype=object), "stage": np.array([""], dtype=object),
             "error": np.array([""], dtype=object)}
    with pytest.raises(ValueError):
        mark_errors(batch, {0: "x"}, stage="encode", status="broken")
