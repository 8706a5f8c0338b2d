"""The style stage with the AdaIN torch backend, weights in the published layout (small deterministic ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.generate import IMAGE_COLUMN
from actors.style import StyleStage
from models.adain import save_test_weights
from pipelines.spec import StageSpec, StyleSpec


@pytest.fixture(scope="module")
def adain_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[StyleStage, Path]:
    folder = tmp_path_factory.mktemp("adain")
    vgg, decoder = save_test_weights(str(folder), seed=0)
    spec = StyleSpec(backend="adain", adain={"vgg": vgg, "decoder": decoder})
    for name, pattern in (("stripes", lambda a: a.__setitem__((slice(None), slice(None, None, 6)), 230)),
                          ("dots", lambda a: a.__setitem__((slice(None, None, 5), slice(None, None, 5)), 250))):
        pixels = np.full((64, 64, 3), 30, np.uint8)
        pattern(pixels)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return StyleStage(style=spec, stage=StageSpec()), folder


def _batch(styles: list[str], strengths: list[float] | None = None) -> dict[str, np.ndarray]:
    n = len(styles)
    rng = np.random.default_rng(0)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    batch = {
        "status": np.array(["ok"] * n, dtype=object),
        "stage": np.array([""] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "style": np.array(styles, dtype=object),
        IMAGE_COLUMN: images,
    }
    if strengths is not None:
        batch["style_strength"] = np.array(strengths, dtype=object)
    return batch


def test_adain_styles_a_batch(adain_stage) -> None:
    stage, folder = adain_stage
    stripes, dots = str(folder / "stripes.png"), str(folder / "dots.png")
    first = stage(_batch([stripes, dots, stripes, "style-03"], strengths=[1.0, 1.0, 0.0, 1.0]))
    originals = _batch(["", "", "", ""])[IMAGE_COLUMN]
    assert list(first["status"]) == ["ok", "ok", "ok", "error"]
    assert "no built-in styles" in first["error"][3]
    for image in first[IMAGE_COLUMN][:3]:
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(first[IMAGE_COLUMN][2], originals[2])  # strength 0 returns the input
    a, b = first[IMAGE_COLUMN][0].astype(int), first[IMAGE_COLUMN][1].astype(int)
    assert np.abs(a - b).mean() > 1.0  # different styles, different outputs
    again = stage(_batch([stripes, dots]))
    assert np.array_equal(again[IMAGE_COLUMN][0], first[IMAGE_COLUMN][0])
    assert set(first["style_backend"]) == {"adain"}


def test_adain_results_are_batch_invariant(adain_stage) -> None:
    """``micro_batch_size`` rows per pass at a fixed padded shape: a row's pixels do not depend on its batch."""
    first, folder = adain_stage
    stage = StyleStage(style=first.style, stage=StageSpec(micro_batch_size=3))
    styles = [str(folder / name) for name in ("stripes.png", "dots.png", "stripes.png", "dots.png", "dots.png")]
    full = _batch(styles)
    contents = list(full[IMAGE_COLUMN])
    out = stage(full)[IMAGE_COLUMN]
    for order in ([4, 3, 2, 1, 0], [2], [1, 4], [3, 0, 4, 2]):
        part = _batch([styles[i] for i in order])
        for j, i in enumerate(order):
            part[IMAGE_COLUMN][j] = contents[i]
        styled = stage(part)[IMAGE_COLUMN]
        for j, i in enumerate(order):
            assert np.array_equal(styled[j], out[i]), (order, i)
