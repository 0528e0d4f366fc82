"""Feature file readers: every supported format, and errors that name the file."""

import numpy as np
import pytest
import torch

from egolab.data.features import FeatureFileError, concat_streams, load_concat_features, load_features


@pytest.fixture
def array() -> np.ndarray:
    return np.arange(12, dtype=np.float64).reshape(4, 3)


def test_npy(tmp_path, array):
    np.save(tmp_path / "v.npy", array)
    out = load_features(tmp_path / "v.npy")
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, array.astype(np.float32))


def test_npz_default_and_custom_key(tmp_path, array):
    np.savez(tmp_path / "a.npz", feats=array)
    np.savez(tmp_path / "b.npz", x=array)
    np.testing.assert_array_equal(load_features(tmp_path / "a.npz"), array)
    np.testing.assert_array_equal(load_features(tmp_path / "b.npz", npz_key="x"), array)
    with pytest.raises(FeatureFileError, match=r"b\.npz.*no key 'feats'"):
        load_features(tmp_path / "b.npz")


def test_pt_tensor_and_dict(tmp_path, array):
    torch.save(torch.from_numpy(array), tmp_path / "t.pt")
    torch.save({"feats": torch.from_numpy(array).half()}, tmp_path / "d.pt")
    torch.save({"other": torch.zeros(2, 2)}, tmp_path / "e.pt")
    np.testing.assert_array_equal(load_features(tmp_path / "t.pt"), array)
    np.testing.assert_array_equal(load_features(tmp_path / "d.pt"), array)
    with pytest.raises(FeatureFileError, match=r"e\.pt.*no key 'feats'"):
        load_features(tmp_path / "e.pt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npy"):
        load_features(tmp_path / "nope.npy")


def test_corrupt_npy(tmp_path):
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY garbage bytes that are not an array")
    with pytest.raises(FeatureFileError, match=r"bad\.npy.*cannot read"):
        load_features(path)


def test_corrupt_npz_and_pt(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureFileError, match=r"bad\.npz"):
        load_features(tmp_path / "bad.npz")
    with pytest.raises(FeatureFileError, match=r"bad\.pt"):
        load_features(tmp_path / "bad.pt")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_wrong_ndim(tmp_path, shape):
    np.save(tmp_path / "w.npy", np.zeros(shape))
    with pytest.raises(FeatureFileError, match=r"w\.npy.*2-d"):
        load_features(tmp_path / "w.npy")


def test_non_finite(tmp_path, array):
    array[1, 2] = np.nan
    array[3, 0] = np.inf
    np.save(tmp_path / "n.npy", array)
    with pytest.raises(FeatureFileError, match=r"n\.npy: 2 non-finite"):
        load_features(tmp_path / "n.npy")


def test_unknown_extension(tmp_path):
    (tmp_path / "f.h5").write_bytes(b"")
    with pytest.raises(FeatureFileError, match=r"f\.h5.*extension"):
        load_features(tmp_path / "f.h5")


def test_concat_streams_on_channels(tmp_path):
    np.save(tmp_path / "s.npy", np.ones((5, 2)))
    np.save(tmp_path / "o.npy", np.full((5, 3), 2.0))
    out = load_concat_features([tmp_path / "s.npy", tmp_path / "o.npy"])
    assert out.shape == (5, 5)
    np.testing.assert_array_equal(out[0], [1, 1, 2, 2, 2])


def test_concat_truncates_one_step_and_rejects_more(tmp_path):
    a, b, c = np.zeros((10, 2)), np.arange(9.0)[:, None], np.zeros((7, 1))
    out = concat_streams([a, b], ["a", "b"])
    assert out.shape == (9, 3)
    np.testing.assert_array_equal(out[:, 2], np.arange(9.0))
    with pytest.raises(FeatureFileError, match=r"a: 10, c: 7"):
        concat_streams([a, c], ["a", "c"])
