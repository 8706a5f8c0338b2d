"""AdaIN networks: the published weight layout, AdaIN itself, and the stylizer on small seeded weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.adain import RELU4_1, AdaINStylizer, adain, build_decoder, build_vgg_encoder, save_test_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Seeded test weights in the published layout, written once per module."""
    return save_test_weights(str(tmp_path_factory.mktemp("adain")), seed=0)


@pytest.fixture(scope="module")
def stylizer(weights: tuple[str, str]) -> AdaINStylizer:
    return AdaINStylizer(*weights)


@pytest.fixture(scope="module")
def style_images() -> tuple[np.ndarray, np.ndarray]:
    """A striped and a checkered style image (different sizes: style_vector resizes)."""
    stripes = np.zeros((64, 80, 3), np.uint8)
    stripes[:, ::4] = 255
    checks = ((np.indices((64, 64)).sum(0) // 8) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    return stripes, checks


@pytest.fixture(scope="module")
def vectors(stylizer: AdaINStylizer, style_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return np.stack([stylizer.style_vector(image) for image in style_images])


@pytest.fixture(scope="module")
def contents() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)


def test_layouts_match_the_published_files() -> None:
    vgg, decoder = build_vgg_encoder(), build_decoder()
    vgg_state, decoder_state = vgg.state_dict(), decoder.state_dict()
    assert len(vgg) == 53 and len(decoder) == 29
    assert vgg_state["0.weight"].shape == (3, 3, 1, 1)
    assert vgg_state["2.weight"].shape == (64, 3, 3, 3)
    assert vgg_state["29.weight"].shape == (512, 256, 3, 3)  # the conv before relu4_1 (module 30)
    assert vgg_state["51.weight"].shape == (512, 512, 3, 3)  # relu5_4's conv: the full file must load
    assert isinstance(vgg[7], torch.nn.MaxPool2d) and vgg[7].ceil_mode
    assert isinstance(vgg[RELU4_1 - 1], torch.nn.ReLU)
    with torch.no_grad():
        assert vgg[:RELU4_1](torch.rand(1, 3, 32, 40)).shape == (1, 512, 4, 5)
    assert decoder_state["1.weight"].shape == (256, 512, 3, 3)
    assert decoder_state["28.weight"].shape == (3, 64, 3, 3)
    assert isinstance(decoder[3], torch.nn.Upsample)
    assert isinstance(decoder[-1], torch.nn.Conv2d) and decoder[-1].out_channels == 3


def test_adain_moves_statistics_to_the_style() -> None:
    content = torch.randn(2, 4, 8, 8)
    mean, std = torch.tensor([[1.0, 2, 3, 4]] * 2), torch.tensor([[0.5, 1, 2, 3]] * 2)
    out = adain(content, mean, std)
    assert torch.allclose(out.flatten(2).mean(-1), mean, atol=1e-4)
    # unbiased std, as the reference calc_mean_std (torch's default var)
    assert torch.allclose(out.flatten(2).std(-1, correction=1), std, atol=1e-3)


def test_style_vector(vectors: np.ndarray) -> None:
    assert vectors.shape == (2, 1024) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and (vectors[:, 512:] > 0).all()  # stds include eps
    assert np.abs(vectors[0] - vectors[1]).mean() > 1e-3


def test_stylize_shape_and_determinism(
    stylizer: AdaINStylizer, weights: tuple[str, str], vectors: np.ndarray, contents: np.ndarray
) -> None:
    out = stylizer.stylize(contents, vectors)
    assert out.shape == contents.shape and out.dtype == np.uint8
    assert out.std() > 1.0  # not flattened to a constant by clipping
    assert np.array_equal(out, stylizer.stylize(contents, vectors))
    assert np.array_equal(out, AdaINStylizer(*weights).stylize(contents, vectors))


def test_odd_sizes_are_cropped_back(stylizer: AdaINStylizer, vectors: np.ndarray) -> None:
    images = np.full((1, 50, 37, 3), 128, np.uint8)  # ceil-mode pools decode to 56 x 40
    assert stylizer.stylize(images, vectors[:1]).shape == images.shape


def test_different_styles_give_different_images(
    stylizer: AdaINStylizer, vectors: np.ndarray, contents: np.ndarray
) -> None:
    out = stylizer.stylize(contents, vectors)
    swapped = stylizer.stylize(contents, vectors[::-1].copy())
    assert np.abs(out.astype(int) - swapped).mean() > 1.0


def test_bad_inputs_are_value_errors(stylizer: AdaINStylizer, vectors: np.ndarray, contents: np.ndarray) -> None:
    with pytest.raises(ValueError, match="vectors"):
        stylizer.stylize(contents, vectors[:1])
    with pytest.raises(ValueError, match="uint8"):
        stylizer.stylize(contents.astype(np.float32), vectors)


def test_cuda_without_a_gpu_is_a_clear_error(weights: tuple[str, str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error path cannot happen")
    with pytest.raises(RuntimeError, match="no GPU"):
        AdaINStylizer(*weights, device="cuda")
