"""AdaIN networks: the published weight layout, AdaIN itself, and the stylizer on small deterministic weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.adain import AdaINStylizer, adain, build_decoder, build_vgg_encoder, save_test_weights


def test_layouts_match_the_published_files() -> None:
    vgg = build_vgg_encoder().state_dict()
    decoder = build_decoder().state_dict()
    assert vgg["0.weight"].shape == (3, 3, 1, 1)
    assert vgg["2.weight"].shape == (64, 3, 3, 3)
    assert vgg["29.weight"].shape == (512, 256, 3, 3)  # the conv before relu4_1 (module 30)
    assert len(build_vgg_encoder()) == 53
    assert decoder["1.weight"].shape == (256, 512, 3, 3)
    assert decoder["28.weight"].shape == (3, 64, 3, 3)
    assert isinstance(build_decoder()[3], torch.nn.Upsample)


def test_adain_moves_statistics_to_the_style() -> None:
    content = torch.randn(2, 4, 8, 8)
    mean, std = torch.tensor([[1.0, 2, 3, 4]] * 2), torch.tensor([[0.5, 1, 2, 3]] * 2)
    out = adain(content, mean, std)
    assert torch.allclose(out.flatten(2).mean(-1), mean, atol=1e-4)
    assert torch.allclose(out.flatten(2).std(-1, correction=1), std, atol=1e-3)


@pytest.fixture(scope="module")
def stylizer(tmp_path_factory: pytest.TempPathFactory) -> AdaINStylizer:
    vgg, decoder = save_test_weights(str(tmp_path_factory.mktemp("adain")), seed=0)
    return AdaINStylizer(vgg, decoder)


def test_style_vectors_and_batched_stylize(stylizer: AdaINStylizer) -> None:
    rng = np.random.default_rng(0)
    stripes = np.zeros((64, 80, 3), np.uint8)
    stripes[:, ::4] = 255
    checks = ((np.indices((64, 64)).sum(0) // 8) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    first, second = stylizer.style_vector(stripes), stylizer.style_vector(checks)
    assert first.shape == (1024,) and np.isfinite(first).all()
    assert np.abs(first - second).mean() > 1e-3
    images = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    out = stylizer.stylize(images, np.stack([first, second]))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, stylizer.stylize(images, np.stack([first, second])))
    swapped = stylizer.stylize(images, np.stack([second, first]))
    assert np.abs(out.astype(int) - swapped).mean() > 1.0


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error path cannot happen")
    vgg, decoder = save_test_weights(str(tmp_path))
    with pytest.raises(RuntimeError, match="no GPU"):
        AdaINStylizer(vgg, decoder, device="cuda")
