"""Bad style references are one row's error each; the other rows of the batch are styled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models.images
from actors.generate import IMAGE_COLUMN
from actors.style import StyleStage
from pipelines.spec import StageSpec, StyleSpec
from tests.actors.test_style import _png, _stripes


def _content(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)


def _batch(styles: list[str]) -> dict[str, np.ndarray]:
    n = len(styles)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = _content(i)
    return {
        "status": np.array(["ok"] * n, dtype=object),
        "stage": np.array([""] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "style": np.array(styles, dtype=object),
        IMAGE_COLUMN: images,
    }


@pytest.fixture(scope="module")
def stage() -> StyleStage:
    return StyleStage(style=StyleSpec(), stage=StageSpec())


@pytest.fixture
def good(tmp_path: Path) -> str:
    path = tmp_path / "stripes.png"
    path.write_bytes(_png(_stripes()))
    return str(path)


def _assert_only_row_fails(out: dict[str, np.ndarray], bad: int, reason: str) -> None:
    n = len(out["status"])
    assert [s == "error" for s in out["status"]] == [i == bad for i in range(n)], list(out["error"])
    assert out["stage"][bad] == "style"
    assert reason in out["error"][bad], out["error"][bad]
    for i in range(n):
        if i != bad:  # styled: visibly changed
            assert np.abs(out[IMAGE_COLUMN][i].astype(int) - _content(i)).mean() > 10


def test_bomb_style_image_is_one_rows_error(
    stage: StyleStage, good: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(np.zeros((120, 140, 3), np.uint8)))  # 16,800 pixels
    monkeypatch.setattr(models.images, "MAX_PIXELS", 96 * 96)
    out = stage(_batch([good, str(bomb), "style-02"]))
    _assert_only_row_fails(out, 1, "bomb.png has 140x120 = 16,800 pixels, over the limit of 9,216")


def test_pillows_own_bomb_error_is_one_rows_error(
    stage: StyleStage, good: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(np.zeros((300, 300, 3), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 96 * 2)  # stripes pass; the bomb is over twice that
    out = stage(_batch(["style-01", str(bomb), good]))
    _assert_only_row_fails(out, 1, "too large")


def test_directory_is_one_rows_error(stage: StyleStage, good: str, tmp_path: Path) -> None:
    folder = tmp_path / "styles"
    folder.mkdir()
    out = stage(_batch([good, str(folder), "style-03"]))
    _assert_only_row_fails(out, 1, f"style reference {folder} is a directory/prefix, not an image")


@pytest.mark.parametrize("uri", ["s3://pixelmill/", "s3://pixelmill", "s3://pixelmill/styles/"])
def test_bucket_root_or_prefix_is_one_rows_error(s3, stage: StyleStage, good: str, uri: str) -> None:
    s3.pipe("pixelmill/styles/stripes.png", _png(_stripes()))
    out = stage(_batch(["s3://pixelmill/styles/stripes.png", uri, good]))
    _assert_only_row_fails(out, 1, f"style reference {uri} is a directory/prefix, not an image")


def test_undecodable_bytes_are_one_rows_error(stage: StyleStage, good: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = stage(_batch([good, "style-04", str(junk)]))
    _assert_only_row_fails(out, 2, "is not a readable image")


def test_float_style_image_out_of_range_is_one_rows_error(stage: StyleStage, good: str, tmp_path: Path) -> None:
    path = tmp_path / "hdr.tif"
    Image.fromarray(np.full((32, 32), 4.0, np.float32)).save(path, format="TIFF")
    out = stage(_batch([str(path), good]))
    _assert_only_row_fails(out, 0, "its range is unknown")


def test_any_exception_in_resolution_is_one_rows_error(
    good: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = StyleStage(style=StyleSpec(), stage=StageSpec())
    other = tmp_path / "other.png"
    other.write_bytes(_png(255 - _stripes()))
    real = stage.backend.style_vector

    def flaky(pixels: np.ndarray) -> np.ndarray:
        if pixels[0, 0, 0] == 235:  # 255 - 20: the other file
            raise RuntimeError("model blew up")
        return real(pixels)

    monkeypatch.setattr(stage.backend, "style_vector", flaky)
    out = stage(_batch([good, str(other), "style-05"]))
    _assert_only_row_fails(out, 1, "RuntimeError: model blew up")


def test_sixteen_bit_style_image_styles_like_its_eight_bit_twin(stage: StyleStage, tmp_path: Path) -> None:
    grey = _stripes()[..., 0]
    eight, sixteen = tmp_path / "eight.png", tmp_path / "sixteen.png"
    Image.fromarray(grey).save(eight)
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen)
    out = stage(_batch([str(eight), str(sixteen)]))
    assert list(out["status"]) == ["ok", "ok"]
    fresh = StyleStage(style=StyleSpec(), stage=StageSpec())
    a, b = fresh._image_vector(str(eight))[1], fresh._image_vector(str(sixteen))[1]
    assert np.array_equal(a, b)  # before: the 16-bit file decoded almost white, a different style


def test_exif_rotated_style_image_is_used_upright(stage: StyleStage, tmp_path: Path) -> None:
    pixels = np.zeros((48, 96, 3), np.uint8)
    pixels[:, :48] = (250, 30, 30)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    rotated, upright = tmp_path / "rotated.jpg", tmp_path / "upright.jpg"
    image.save(rotated, format="JPEG", exif=exif.tobytes(), quality=95)
    image.transpose(Image.Transpose.ROTATE_270).save(upright, format="JPEG", quality=95)
    fresh = StyleStage(style=StyleSpec(), stage=StageSpec())
    a, b = fresh._image_vector(str(rotated))[1], fresh._image_vector(str(upright))[1]
    unrotated = fresh.backend.style_vector(pixels)
    assert np.abs(a - b).mean() < np.abs(a - unrotated).mean() / 4


def test_bad_style_rows_in_a_ray_run_are_error_records(
    ray_session, s3, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    """Through Ray: the run finishes and balances; each bad style row is in ``_errors/`` with its reason."""
    from pipelines.runner import run_job
    from pipelines.spec import load_spec
    from tests.pipelines.readback import check_exactly_once, read_output

    good = tmp_path / "stripes.png"
    good.write_bytes(_png(_stripes(80, 80)))
    folder = tmp_path / "a_folder"
    folder.mkdir()
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    rows = [
        {"id": "builtin", "prompt": "a red circle", "seed": 5, "style": "style-04"},
        {"id": "image", "prompt": "a red circle", "seed": 5, "style": str(good)},
        {"id": "folder", "prompt": "a red circle", "seed": 5, "style": str(folder)},
        {"id": "bucket", "prompt": "a blue square", "seed": 6, "style": "s3://pixelmill/"},
        {"id": "junk", "prompt": "a blue square", "seed": 7, "style": str(junk)},
        {"id": "plain", "prompt": "a blue square", "seed": 8, "style": ""},
    ]
    raw = {
        "input": {"uri": str(write_prompts(rows, "prompts.jsonl"))},
        "output": {"uri": str(tmp_path / "out"), "samples_per_shard": 4},
        "model": {"cache_dir": model_cache},
        "style": {},
        "seed": 3,
    }
    summary = run_job(load_spec(raw=raw))
    assert (summary.rows, summary.images, summary.errors) == (6, 3, 3)
    assert summary.balanced
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, [row["id"] for row in rows])
    errors = {row["id"]: row for row in out["errors"]}
    assert set(errors) == {"folder", "bucket", "junk"}
    assert {row["stage"] for row in errors.values()} == {"style"}
    assert {row["status"] for row in errors.values()} == {"error"}
    assert "is a directory/prefix, not an image" in errors["folder"]["error"]
    assert "s3://pixelmill/ is a directory/prefix, not an image" in errors["bucket"]["error"]
    assert "is not a readable image" in errors["junk"]["error"]
    assert {s["json"]["id"] for s in out["samples"]} == {"builtin", "image", "plain"}
