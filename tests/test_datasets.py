"""Dataset resolution, benchmark loading, the embedded default images and the training patch sampler."""

import numpy as np
import pytest

from minisr.data import (
    DEFAULT_TRAIN,
    DEFAULT_VALIDATION,
    DatasetNotFoundError,
    PatchDataset,
    default_images,
    default_split,
    dihedral,
    imresize,
    load_benchmark,
    load_images,
    modcrop,
    read_image,
    resolve_dataset,
    rgb_to_y,
    write_image,
)


def make_images(folder, rng, shapes=((26, 31, 3), (20, 24))):
    """Write small random images a.png, b.png, ... into folder; returns {name: array}."""
    images = {}
    for name, shape in zip("abcdefgh", shapes):
        images[name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        write_image(folder / f"{name}.png", images[name])
    return images


# --- resolving names ---

def test_name_resolves_under_env_and_data_root(tmp_path, monkeypatch):
    (tmp_path / "env" / "Set5").mkdir(parents=True)
    (tmp_path / "arg" / "Set5").mkdir(parents=True)
    monkeypatch.setenv("MINISR_DATA", str(tmp_path / "env"))
    assert resolve_dataset("Set5") == tmp_path / "env" / "Set5"
    assert resolve_dataset("set5") == tmp_path / "env" / "Set5"  # case-insensitive fallback
    assert resolve_dataset("Set5", data_root=tmp_path / "arg") == tmp_path / "arg" / "Set5"  # argument wins
    assert resolve_dataset(tmp_path / "arg" / "Set5") == tmp_path / "arg" / "Set5"  # a folder is a folder


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISR_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        resolve_dataset("Set42")
    message = str(err.value)
    assert "Set42" in message and str(tmp_path) in message and "MINISR_DATA" in message
    assert "--data-root" in message
    monkeypatch.delenv("MINISR_DATA")
    with pytest.raises(DatasetNotFoundError, match="no data root is set"):
        resolve_dataset("Set5")
    with pytest.raises(FileNotFoundError):  # DatasetNotFoundError is a FileNotFoundError
        resolve_dataset(tmp_path / "nowhere")


# --- benchmarks ---

def test_folder_with_only_hr(tmp_path, rng):
    images = make_images(tmp_path / "Mine" / "HR", rng)
    items = load_benchmark("Mine", 3, data_root=tmp_path)
    assert [it.name for it in items] == ["a", "b"]
    for name, hr, lr in items:
        np.testing.assert_array_equal(hr, modcrop(images[name], 3))
        np.testing.assert_array_equal(lr, imresize(hr, 1 / 3))
        assert lr.shape[:2] == (hr.shape[0] // 3, hr.shape[1] // 3)


def test_plain_folder_of_images(tmp_path, rng):
    images = make_images(tmp_path, rng)
    (tmp_path / "readme.txt").write_text("not an image")
    items = load_benchmark(tmp_path, 2)
    assert {it.name for it in items} == set(images)
    assert all(it.hr.shape[0] % 2 == 0 and it.hr.shape[1] % 2 == 0 for it in items)


def test_lr_folder_is_used_when_present(tmp_path, rng):
    make_images(tmp_path / "HR", rng, shapes=((24, 24, 3),))
    shipped = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)  # deliberately not imresize's output
    write_image(tmp_path / "LR_bicubic" / "X2" / "ax2.png", shipped)
    np.testing.assert_array_equal(load_benchmark(tmp_path, 2)[0].lr, shipped)
    assert load_benchmark(tmp_path, 3)[0].lr.shape == (8, 8, 3)  # no X3 folder: made by imresize
    write_image(tmp_path / "LR_bicubic" / "X4" / "ax4.png", shipped)  # wrong size for x4
    with pytest.raises(ValueError, match="ax4.png"):
        load_benchmark(tmp_path, 4)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "HR").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_benchmark(tmp_path, 2)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_images(tmp_path / "HR")


def test_set14_by_name(data_root, monkeypatch):
    monkeypatch.setenv("MINISR_DATA", str(data_root))
    items = load_benchmark("Set14", 3)
    assert len(items) == 14
    bridge = next(it for it in items if it.name == "bridge")
    assert bridge.hr.ndim == 2 and bridge.lr.ndim == 2  # Set14's bridge is greyscale, and so is its LR
    expected = read_image(data_root / "Set14" / "LR_bicubic" / "X3" / "bridgex3.png")
    np.testing.assert_array_equal(bridge.lr, expected)


def test_load_images(tmp_path, rng):
    images = make_images(tmp_path, rng)
    loaded = load_images(tmp_path)
    assert len(loaded) == 2
    np.testing.assert_array_equal(loaded[1], images["b"])


# --- the embedded default training set ---

def test_default_split():
    train, val = default_split()
    assert len(train) == len(DEFAULT_TRAIN) and len(val) == len(DEFAULT_VALIDATION) == 2
    assert not set(DEFAULT_TRAIN) & set(DEFAULT_VALIDATION)
    for img in train + val:
        assert img.dtype == np.uint8 and min(img.shape[:2]) >= 256
    named = default_images()
    np.testing.assert_array_equal(named[DEFAULT_VALIDATION[0]], val[0])
    assert {"chessboard_GRAY", "logo", "phantom"}.isdisjoint(named)


# --- patches ---

@pytest.fixture
def photos(rng):
    """Two random-texture images (so every patch is unique), one RGB and one greyscale."""
    return [rng.integers(0, 256, size=(50, 61, 3), dtype=np.uint8),
            rng.integers(0, 256, size=(45, 40), dtype=np.uint8)]


def full_pair(img, scale, channels, mode):
    """The whole-image (input, target) that the patches must be cut from, computed without PatchDataset."""
    x = rgb_to_y(img) / 255.0 if channels == "y" else img / 255.0
    if x.ndim == 2:
        x = x[..., None] if channels == "y" else np.repeat(x[..., None], 3, axis=2)
    hr = modcrop(x, scale)
    lr = imresize(hr, 1 / scale)
    inp = imresize(lr, scale) if mode == "upscaled" else lr
    return np.clip(inp, 0, 1), hr


def find_patch(hr, target):
    """(y, x) of a CHW target patch inside an HWC image, or None."""
    t = target.transpose(1, 2, 0)
    windows = np.lib.stride_tricks.sliding_window_view(hr, t.shape)[..., 0, :, :, :]  # (Y, X, h, w, C)
    hits = np.argwhere(np.abs(windows - t).max(axis=(2, 3, 4)) < 1e-6)
    return tuple(hits[0]) if len(hits) else None


def undo_dihedral(img, k: int):
    """The inverse of dihedral(., k): unflip, then rotate back."""
    return np.rot90(img[:, ::-1] if k >= 4 else img, -(k % 4), axes=(0, 1))


@pytest.mark.parametrize("mode,channels,scale", [("upscaled", "y", 3), ("lr", "rgb", 2)])
def test_patches_are_aligned_crops(photos, mode, channels, scale):
    ds = PatchDataset(photos[:1], scales=scale, patch_size=9, stride=7, channels=channels, augment=False,
                      mode=mode, seed=3)
    inp_full, hr_full = full_pair(photos[0], scale, channels, mode)
    t = scale if mode == "lr" else 1
    count = 0
    for inputs, targets in ds.batches(16):
        assert inputs.dtype == np.float32 and inputs.ndim == 4
        assert targets.shape[2:] == (9 * t, 9 * t) and inputs.shape[2:] == (9, 9)
        assert 0.0 <= inputs.min() and inputs.max() <= 1.0
        for a, b in zip(inputs, targets):
            pos = find_patch(hr_full, b)
            assert pos is not None and pos[0] % (7 * t) == 0 and pos[1] % (7 * t) == 0
            y, x = pos[0] // t, pos[1] // t
            np.testing.assert_allclose(a.transpose(1, 2, 0), inp_full[y:y + 9, x:x + 9], atol=1e-6)
            count += 1
    assert count == len(ds) == ((inp_full.shape[0] - 9) // 7 + 1) * ((inp_full.shape[1] - 9) // 7 + 1)


def test_augmentation_applies_the_same_flip_to_both(photos):
    ds = PatchDataset(photos[:1], scales=2, patch_size=8, patches_per_image=24, channels="rgb", mode="lr",
                      seed=1)
    inp_full, hr_full = full_pair(photos[0], 2, "rgb", "lr")
    seen = set()
    for inputs, targets in ds.batches(8):
        for a, b in zip(inputs, targets):
            a, b = a.transpose(1, 2, 0), b.transpose(1, 2, 0)
            matches = []
            for k in range(8):  # undo each of the 8 transforms: exactly one gives an aligned pair of crops
                pos = find_patch(hr_full, undo_dihedral(b, k).transpose(2, 0, 1))
                if pos is not None:
                    y, x = pos[0] // 2, pos[1] // 2
                    if np.allclose(undo_dihedral(a, k), inp_full[y:y + 8, x:x + 8], atol=1e-6):
                        matches.append(k)
            assert len(matches) == 1
            seen.add(matches[0])
    assert len(seen) >= 5  # 24 draws of 8 transforms


def test_undo_dihedral():
    img = np.arange(24).reshape(4, 6)
    for k in range(8):
        np.testing.assert_array_equal(undo_dihedral(dihedral(img, k), k), img)


def test_dihedral_gives_eight_distinct_transforms():
    img = np.arange(12).reshape(3, 4)
    outs = {dihedral(img, k).tobytes() + bytes(dihedral(img, k).shape) for k in range(8)}
    assert len(outs) == 8


def test_reproducible_and_resumable(photos):
    def make():
        return PatchDataset(photos, scales=[2, 3], patch_size=12, patches_per_image=10, seed=7)

    first = list(make().batches(6, epoch=4))
    again = list(make().batches(6, epoch=4))
    other = list(make().batches(6, epoch=5))
    assert len(first) == make().steps_per_epoch(6) == 7  # 2 images x 2 scales x 10 patches = 40 -> 7 batches
    for (a, b), (c, d) in zip(first, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not np.array_equal(first[0][0], other[0][0])
    resumed = list(make().batches(6, epoch=4, start_step=3))
    assert len(resumed) == 4
    np.testing.assert_array_equal(resumed[0][1], first[3][1])
    dropped = list(make().batches(6, epoch=0, drop_last=True))
    assert len(dropped) == make().steps_per_epoch(6, drop_last=True) == 6


def test_mixed_scales(photos):
    upscaled = PatchDataset(photos, scales=[2, 3, 4], patch_size=10, patches_per_image=5, channels="y")
    shapes = {(x.shape[1:], y.shape[1:]) for x, y in upscaled.batches(4)}
    assert shapes == {((1, 10, 10), (1, 10, 10))}
    lr = PatchDataset(photos, scales=[2, 3], patch_size=6, patches_per_image=5, mode="lr", channels="rgb")
    batches = list(lr.batches(4))
    assert {y.shape[2] // x.shape[2] for x, y in batches} == {2, 3}  # both scales, one per batch
    assert sum(len(x) for x, _ in batches) == len(lr) == 2 * 2 * 5
    assert len(batches) == lr.steps_per_epoch(4) == 2 * 3


def test_images_from_a_folder_are_read_lazily(tmp_path, photos):
    for i, img in enumerate(photos):
        write_image(tmp_path / f"{i}.png", img)
    from_disk = PatchDataset(tmp_path, scales=2, patch_size=8, stride=10, seed=2)
    in_memory = PatchDataset(photos, scales=2, patch_size=8, stride=10, seed=2)
    assert all(not isinstance(im, np.ndarray) for im in from_disk.images)
    assert len(from_disk) == len(in_memory)
    for (a, b), (c, d) in zip(from_disk.batches(32), in_memory.batches(32)):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_patch_dataset_rejects_bad_settings(photos):
    with pytest.raises(ValueError, match="channels"):
        PatchDataset(photos, channels="yuv")
    with pytest.raises(ValueError, match="mode"):
        PatchDataset(photos, mode="nearest")
    with pytest.raises(ValueError):
        PatchDataset([], scales=2)
    tiny = PatchDataset([np.zeros((10, 10), np.uint8)], scales=2, patch_size=33)
    assert len(tiny) == 0 and list(tiny.batches(4)) == []  # too small for a patch: skipped


def test_degradation_options(photos):
    clean = PatchDataset(photos, scales=2, patch_size=10, patches_per_image=4, seed=5, augment=False)
    noisy = PatchDataset(photos, scales=2, patch_size=10, patches_per_image=4, seed=5, augment=False,
                         blur_sigma=1.0, noise_sigma=10)
    (xc, yc), (xn, yn) = next(clean.batches(8)), next(noisy.batches(8))
    np.testing.assert_array_equal(yc, yn)  # same patches, only the input degraded differently
    assert xc.shape == xn.shape and not np.allclose(xc, xn)
    assert np.isfinite(xn).all() and 0 <= xn.min() and xn.max() <= 1


def test_rescale_adds_downscaled_copies_as_images_of_their_own(photos):
    """Scale augmentation (FSRCNN's): with rescale=(1, 0.8) every patch is an aligned crop of the image itself or of
    clip(imresize(image, 0.8)), computed here without PatchDataset, and each copy is cut on its own grid."""
    img = photos[0]
    ds = PatchDataset([img], scales=2, patch_size=6, stride=5, channels="y", augment=False, mode="lr", seed=4,
                      rescale=(1.0, 0.8))
    y = rgb_to_y(img)[..., None] / 255.0
    copies = {1.0: y, 0.8: np.clip(imresize(y, 0.8), 0.0, 1.0)}
    assert copies[0.8].shape[:2] == (40, 49)  # MATLAB's ceil(0.8 x 50, 0.8 x 61)
    grids = {}
    for f, im in copies.items():
        inp_full, hr_full = full_pair((im * 255.0)[..., 0], 2, "rgb", "lr")  # already Y: no colour conversion
        grids[f] = (inp_full[..., :1], hr_full[..., :1])
    found = {1.0: 0, 0.8: 0}
    for inputs, targets in ds.batches(7):
        for a, b in zip(inputs, targets):
            hits = [f for f, (inp_full, hr_full) in grids.items() if find_patch(hr_full, b) is not None]
            assert len(hits) == 1
            f = hits[0]
            pos = find_patch(grids[f][1], b)
            assert pos[0] % 10 == 0 and pos[1] % 10 == 0  # on the copy's own grid (stride 5 LR = 10 HR)
            np.testing.assert_allclose(a.transpose(1, 2, 0), grids[f][0][pos[0] // 2:pos[0] // 2 + 6,
                                                                        pos[1] // 2:pos[1] // 2 + 6], atol=1e-6)
            found[f] += 1
    n = {f: ((im.shape[0] // 2 - 6) // 5 + 1) * ((im.shape[1] // 2 - 6) // 5 + 1) for f, im in copies.items()}
    assert found == n and len(ds) == sum(n.values()) and ds.steps_per_epoch(7) == -(-sum(n.values()) // 7)


def test_rescale_one_is_the_images_as_they_are(photos):
    plain = PatchDataset(photos, scales=2, patch_size=8, patches_per_image=6, seed=9)
    same = PatchDataset(photos, scales=2, patch_size=8, patches_per_image=6, seed=9, rescale=[1])
    for (a, b), (c, d) in zip(plain.batches(5, epoch=2), same.batches(5, epoch=2), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    for bad in [(), (0.0,), (1.5,), (1.0, -0.5)]:
        with pytest.raises(ValueError, match="rescale"):
            PatchDataset(photos, rescale=bad)
