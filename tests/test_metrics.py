"""PSNR / SSIM against scikit-image, and the BT.601 colour conversion."""

import numpy as np
import pytest
from skimage import color
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from minisr.data import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from minisr.metrics import psnr, ssim


def sk_ssim(a, b, **kw):
    """scikit-image configured as Wang et al.'s ssim_index: Gaussian 11x11 window (sigma 1.5, truncated at
    3.5 sigma = radius 5), population covariances, L = 255. skimage filters the whole image (reflecting at the
    borders) and then drops (11 - 1) / 2 = 5 pixels per side of the SSIM map before the mean: exactly the
    positions where the window fits, i.e. MATLAB's 'valid' filtering. So the two agree to rounding error."""
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=255, **kw)


@pytest.fixture
def pair(rng):
    """A photo crop and a noisy, slightly blurred copy of it (uint8 RGB)."""
    hr = skdata.astronaut()[60:190, 140:300]
    noisy = hr.astype(np.float64) + rng.normal(0, 10, hr.shape)
    noisy[1:] = 0.7 * noisy[1:] + 0.3 * noisy[:-1]
    return hr, np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def test_psnr_on_rgb_matches_skimage(pair):
    a, b = pair
    expected = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(a, b, y_channel=False) == pytest.approx(expected, abs=1e-10)
    c = 3
    expected = peak_signal_noise_ratio(a[c:-c, c:-c], b[c:-c, c:-c], data_range=255)
    assert psnr(a, b, crop_border=c, y_channel=False) == pytest.approx(expected, abs=1e-10)


def test_psnr_on_y_matches_skimage(pair):
    a, b = pair
    # skimage's rgb2ycbcr takes RGB in [0, 1] and uses the same BT.601 matrix; Y is not rounded
    ya, yb = (color.rgb2ycbcr(x / 255.0)[..., 0] for x in (a, b))
    c = 4
    expected = peak_signal_noise_ratio(ya[c:-c, c:-c], yb[c:-c, c:-c], data_range=255)
    assert psnr(a, b, crop_border=c) == pytest.approx(expected, abs=1e-9)
    assert psnr(a, b) != pytest.approx(psnr(a, b, y_channel=False), abs=0.05)  # Y and RGB differ


def test_ssim_on_grey_and_y_matches_skimage(pair):
    a, b = pair
    assert ssim(a[..., 1], b[..., 1]) == pytest.approx(sk_ssim(a[..., 1], b[..., 1]), abs=1e-10)
    ya, yb = (color.rgb2ycbcr(x / 255.0)[..., 0] for x in (a, b))
    c = 2
    assert ssim(a, b, crop_border=c) == pytest.approx(sk_ssim(ya[c:-c, c:-c], yb[c:-c, c:-c]), abs=1e-10)


def test_ssim_on_rgb_is_the_channel_mean(pair):
    a, b = pair
    expected = sk_ssim(a, b, channel_axis=-1)
    assert ssim(a, b, y_channel=False) == pytest.approx(expected, abs=1e-10)
    per_channel = [ssim(a[..., k], b[..., k]) for k in range(3)]
    assert ssim(a, b, y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_identical_images_and_float_input(pair):
    a, b = pair
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a.astype(np.float32), b.astype(np.float64)) == pytest.approx(psnr(a, b), abs=1e-6)
    assert ssim(a, b) < 1.0


def test_greyscale_is_its_own_y(pair):
    a, b = pair
    g, h = a[..., 0], b[..., 0]
    assert psnr(g, h) == psnr(g, h, y_channel=False)
    assert ssim(g, h) == ssim(g, h, y_channel=False)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 12, 3\).*\(10, 11, 3\)"):
        psnr(np.zeros((10, 12, 3)), np.zeros((10, 11, 3)))
    with pytest.raises(ValueError, match=r"\(20, 20\).*\(20, 20, 3\)"):
        ssim(np.zeros((20, 20)), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(np.zeros((6, 6)), np.ones((6, 6)), crop_border=3)


def test_ycbcr_matches_matlab_and_skimage(rng):
    rgb = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_ycbcr(rgb), color.rgb2ycbcr(rgb / 255.0), atol=1e-10)
    # MATLAB: rgb2ycbcr of white is (235, 128, 128), of black (16, 128, 128)
    white = np.full((1, 1, 3), 255, np.uint8)
    np.testing.assert_allclose(rgb_to_ycbcr(white)[0, 0], [235, 128, 128], atol=1e-9)
    np.testing.assert_allclose(rgb_to_ycbcr(np.zeros((1, 1, 3)))[0, 0], [16, 128, 128], atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(rgb), rgb_to_ycbcr(rgb)[..., 0], atol=1e-12)
    # the same on a [0, 1] scale
    unit = rgb / 255.0
    np.testing.assert_allclose(rgb_to_ycbcr(unit, data_range=1.0), rgb_to_ycbcr(rgb) / 255.0, atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(unit, data_range=1.0), rgb_to_y(rgb) / 255.0, atol=1e-12)


def test_colour_round_trip(rng):
    rgb = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    np.testing.assert_allclose(back, rgb, atol=1e-9)
    np.testing.assert_array_equal(np.round(back).astype(np.uint8), rgb)
    unit = rng.random((5, 7, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(unit, 1.0), 1.0), unit, atol=1e-12)
    ycbcr = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycbcr_to_rgb(ycbcr), color.ycbcr2rgb(ycbcr) * 255, atol=1e-8)
    with pytest.raises(ValueError, match="HxWx3"):
        rgb_to_ycbcr(np.zeros((4, 4)))
