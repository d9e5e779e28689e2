import numpy as np
import pytest

from dae.noise import KINDS, NoiseSpec, add_noise, add_noise_batch, image_seed


def _images(n=6, h=12, w=10, c=1, seed=0):
    return np.random.default_rng(seed).random((n, h, w, c), dtype=np.float32)


@pytest.mark.parametrize("spec", ["gaussian:0.5", "salt_pepper:0.2", "salt_pepper:0.2,salt=0.3",
                                  "poisson:30", "speckle:0.2", "gaussian:0.05-0.6"])
def test_parse_roundtrip_and_range(spec):
    s = NoiseSpec.parse(spec)
    assert NoiseSpec.parse(str(s)) == s
    y = add_noise_batch(_images(), [str(i) for i in range(6)], s, seed=1)
    assert y.dtype == np.float32 and y.shape == (6, 12, 10, 1)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("bad", ["gauss:0.5", "gaussian", "gaussian:abc", "gaussian:0.6-0.1",
                                 "salt_pepper:1.5", "salt_pepper:0.1,pepper=2", "poisson:0", ""])
def test_bad_spec_lists_valid_kinds(bad):
    with pytest.raises(ValueError) as e:
        NoiseSpec.parse(bad)
    msg = str(e.value)
    assert any(k in msg for k in KINDS) or "option" in msg or "[0, 1]" in msg or "> 0" in msg


def test_unknown_kind_message_lists_all_kinds():
    with pytest.raises(ValueError, match="valid kinds: gaussian, salt_pepper, poisson, speckle"):
        NoiseSpec.parse("blur:1")


def test_gaussian_is_the_seed_formula():
    x = np.full((64, 64, 1), 0.5, np.float32)
    y = add_noise(x, "gaussian:0.1", seed=0, image_id="a")
    assert abs(float((y - x).std()) - 0.1) < 0.01  # at 0.5 +- 5 sigma nothing is clipped


def test_salt_pepper_amount_and_ratio():
    x = np.full((200, 200, 1), 0.5, np.float32)
    y = add_noise(x, "salt_pepper:0.2,salt=0.25", seed=0, image_id="a")
    salt, pepper = (y == 1).mean(), (y == 0).mean()
    assert abs(salt + pepper - 0.2) < 0.01 and abs(salt - 0.05) < 0.005


def test_same_image_same_noise_whatever_the_batching():
    imgs = _images(n=10)
    ids = [f"img-{i}" for i in range(10)]
    whole = add_noise_batch(imgs, ids, "gaussian:0.3", seed=7, epoch=2)
    # different batch sizes, a reversed order: each image's noise depends on its id only
    parts = np.concatenate([add_noise_batch(imgs[i:i + 3], ids[i:i + 3], "gaussian:0.3", 7, 2)
                            for i in range(0, 10, 3)])
    rev = add_noise_batch(imgs[::-1], ids[::-1], "gaussian:0.3", 7, 2)[::-1]
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole, rev)


def test_noise_changes_with_epoch_seed_and_id():
    x = _images(n=1)
    a = add_noise(x[0], "gaussian:0.3", seed=1, image_id="a", epoch=0)
    assert not np.array_equal(a, add_noise(x[0], "gaussian:0.3", seed=1, image_id="a", epoch=1))
    assert not np.array_equal(a, add_noise(x[0], "gaussian:0.3", seed=2, image_id="a", epoch=0))
    assert not np.array_equal(a, add_noise(x[0], "gaussian:0.3", seed=1, image_id="b", epoch=0))
    assert image_seed(1, "a", 0) == image_seed(1, "a", 0)


def test_blind_levels_vary_per_image_within_range():
    x = np.full((8, 64, 64, 1), 0.5, np.float32)
    y = add_noise_batch(x, [str(i) for i in range(8)], "gaussian:0.05-0.3", seed=0)
    stds = (y - x).reshape(8, -1).std(1)
    assert stds.min() > 0.04 and stds.max() < 0.31 and stds.max() - stds.min() > 0.03


def test_ragged_batches():
    imgs = [np.random.rand(5, 7, 3).astype(np.float32), np.random.rand(9, 4, 3).astype(np.float32)]
    y = add_noise_batch(imgs, ["a", "b"], "poisson:10", seed=0)
    assert [a.shape for a in y] == [(5, 7, 3), (9, 4, 3)]
