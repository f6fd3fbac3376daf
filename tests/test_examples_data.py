"""Tests for examples/data.py: loaders on tiny files written here, augmentation, DeviceLoader."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from data import (  # noqa: E402
    CropFlipParams,
    DeviceLoader,
    RandomCropFlip,
    crop_flip,
    dataset_info,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_mnist,
    load_svhn,
    sample_crop_flip,
    to_float,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _random_images(rng: np.random.Generator, n: int, c: int = 3, side: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(n, c, side, side), dtype=np.uint8)


def _check_pixels(images: torch.Tensor, expected: np.ndarray) -> None:
    """Checks dtype, every pixel, and one named pixel (channel/row/column) against the source."""
    assert images.dtype == torch.uint8
    assert images.shape == expected.shape
    np.testing.assert_array_equal(images.numpy(), expected)
    n, c, h, w = expected.shape
    assert images[n - 1, c - 1, 1, 2].item() == expected[n - 1, c - 1, 1, 2]


# --- CIFAR-10 ---------------------------------------------------------------------------------


def _write_cifar10_binary(root: Path, rng: np.random.Generator, records: int = 3):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    images, labels = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images[name] = _random_images(rng, records)
        labels[name] = rng.integers(0, 10, size=records).astype(np.uint8)
        with open(folder / f"{name}.bin", "wb") as f:
            for k in range(records):
                f.write(bytes([labels[name][k]]))
                # Red plane, green plane, blue plane, each row-major 32×32.
                for ch in range(3):
                    f.write(images[name][k, ch].tobytes(order="C"))
    return images, labels


def test_cifar10_binary_reads_written_pixels(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = _write_cifar10_binary(tmp_path, rng)
    x, y = load_cifar10(tmp_path, train=True)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    _check_pixels(x, np.concatenate([images[n] for n in train_names]))
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), np.concatenate([labels[n] for n in train_names]))
    x_test, y_test = load_cifar10(tmp_path, train=False)
    _check_pixels(x_test, images["test_batch"])
    np.testing.assert_array_equal(y_test.numpy(), labels["test_batch"])


def test_cifar10_binary_red_green_blue_planes(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = bytearray(3073)
    record[0] = 7
    record[1 + 0 * 1024 + 2 * 32 + 5] = 11  # red, row 2, col 5
    record[1 + 1 * 1024 + 30 * 32 + 1] = 22  # green, row 30, col 1
    record[1 + 2 * 1024 + 0 * 32 + 31] = 33  # blue, row 0, col 31
    (folder / "test_batch.bin").write_bytes(bytes(record))
    x, y = load_cifar10(tmp_path, train=False)
    assert y.tolist() == [7]
    assert x[0, 0, 2, 5] == 11 and x[0, 1, 30, 1] == 22 and x[0, 2, 0, 31] == 33
    assert int(x.sum()) == 66


def test_cifar10_missing_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in (1, 2, 3):  # as after unpacking part a only
        (folder / f"data_batch_{i}.bin").write_bytes(bytes(3073))
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin.*cifar10-part-b"):
        load_cifar10(tmp_path, train=True)


def test_cifar10_binary_rejects_truncated_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="3073"):
        load_cifar10(tmp_path, train=False)


def _write_pickle(path: Path, data: np.ndarray, label_key: bytes, labels: list[int]) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": data.reshape(len(data), -1), label_key: labels}, f)


def test_cifar10_python_layout(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        written[name] = (_random_images(rng, 2), rng.integers(0, 10, size=2).tolist())
        _write_pickle(folder / name, written[name][0], b"labels", written[name][1])
    x, y = load_cifar10(tmp_path, train=True)
    _check_pixels(x, np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]))
    assert y.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x_test, y_test = load_dataset("cifar10", tmp_path, train=False)
    _check_pixels(x_test, written["test_batch"][0])
    assert y_test.tolist() == written["test_batch"][1]


def test_cifar10_missing_says_what_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", tmp_path, train=True)
    message = str(err.value)
    assert "cifar-10-batches-bin" in message and "cifar-10-batches-py" in message
    assert "cifar10_parts.py unpack" in message


# --- CIFAR-100, SVHN, MNIST -------------------------------------------------------------------


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        images = _random_images(rng, 4)
        labels = [99, 0, 42, 7] if name == "train" else [1, 2, 3, 98]
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"data": images.reshape(4, -1),
                    b"fine_labels": labels,
                    b"coarse_labels": [0, 0, 0, 0],
                },
                f,
            )
        x, y = load_dataset("cifar100", tmp_path, train=name == "train")
        _check_pixels(x, images)
        assert y.dtype == torch.int64 and y.tolist() == labels


def test_cifar100_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar100(tmp_path, train=False)


def test_svhn_mat_and_label_ten_is_zero(tmp_path):
    scipy_io = pytest.importorskip(
        "scipy.io", reason="scipy is needed to write and read .mat files"
    )
    rng = np.random.default_rng(3)
    images = _random_images(rng, 3)  # (N, C, H, W)
    labels = np.array([[10], [3], [1]], dtype=np.uint8)
    # SVHN stores X as (H, W, C, N).
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": labels})
    x, y = load_svhn(tmp_path, train=False)
    _check_pixels(x, images)
    assert x[1, 2, 31, 0] == images[1, 2, 31, 0]
    assert y.dtype == torch.int64 and y.tolist() == [0, 3, 1]


def test_svhn_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", tmp_path, train=True)


def _write_idx(path: Path, magic: int, array: np.ndarray, compress: bool) -> None:
    payload = struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx(tmp_path, compress):
    rng = np.random.default_rng(4)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", 2051, images, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", 2049, labels, compress)
        x, y = load_mnist(tmp_path, train=prefix == "train")
        _check_pixels(x, images[:, None])
        assert x[n - 1, 0, 27, 3] == images[n - 1, 27, 3]
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


def test_mnist_wrong_magic(tmp_path):
    labels = np.zeros(2, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2049, np.zeros((2, 28, 28), np.uint8), False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, labels, False)
    with pytest.raises(ValueError, match="2051"):
        load_mnist(tmp_path, train=False)


def test_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, train=False)


def test_unknown_dataset_lists_names(tmp_path):
    with pytest.raises(ValueError, match="cifar100.*mnist.*svhn"):
        load_dataset("imagenet", tmp_path)


def test_dataset_info_classes_channels_and_augmentation():
    assert dataset_info("CIFAR10") == (10, 3, True, 50_000, 10_000)
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("mnist").in_channels == 1
    assert not dataset_info("svhn").augment  # no flips for digits
    with pytest.raises(ValueError, match="cifar10"):
        dataset_info("imagenet")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="../shared/data/mnist is absent")
def test_shared_mnist_test_labels():
    x, y = load_mnist(SHARED_DATA / "mnist", train=False)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert int(y.min()) == 0 and int(y.max()) == 9


# --- augmentation -----------------------------------------------------------------------------


def _oracle_crop_flip(images: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """Per-example loop: zero-pad, cut the window at (top, left), mirror if asked."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for k in range(n):
        padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=images.dtype)
        padded[:, padding : padding + h, padding : padding + w] = images[k]
        top, left = int(params.top[k]), int(params.left[k])
        crop = padded[:, top : top + h, left : left + w]
        out[k] = crop.flip(-1) if bool(params.flip[k]) else crop
    return out


def test_crop_flip_matches_loop_oracle():
    images = torch.randint(
        1, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    params = sample_crop_flip(16, padding=4, generator=torch.Generator().manual_seed(1))
    assert params.top.dtype == torch.int64 and params.flip.dtype == torch.bool
    torch.testing.assert_close(
        crop_flip(images, params, padding=4), _oracle_crop_flip(images, params, 4), rtol=0, atol=0
    )


def test_crop_offsets_in_range_and_cover_extremes():
    params = sample_crop_flip(4000, padding=4, generator=torch.Generator().manual_seed(2))
    for offsets in (params.top, params.left):
        assert int(offsets.min()) == 0 and int(offsets.max()) == 8
    assert 0.45 < params.flip.float().mean().item() < 0.55
    no_flip = sample_crop_flip(100, flip=False, generator=torch.Generator().manual_seed(2))
    assert not no_flip.flip.any()


def test_flip_is_a_mirror_and_centre_crop_is_identity():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32).to(torch.uint8)
    centre = torch.full((2,), 4)
    same = crop_flip(images, CropFlipParams(centre, centre, torch.tensor([False, False])))
    mirrored = crop_flip(images, CropFlipParams(centre, centre, torch.tensor([True, True])))
    assert torch.equal(same, images)
    assert torch.equal(mirrored, images.flip(-1))
    # A corner crop shifts content and fills with zeros.
    corner = crop_flip(
        images,
        CropFlipParams(
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
            torch.tensor([False, True]),
        ),
    )
    assert torch.equal(corner[0, :, 4:, 4:], images[0, :, :28, :28])
    assert int(corner[0, :, :4].sum()) == 0 and int(corner[0, :, :, :4].sum()) == 0
    assert torch.equal(corner[1, :, 4:, :28], images[1, :, :28, :28].flip(-1))


def test_random_crop_flip_output_and_reproducibility():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = RandomCropFlip()(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    params = sample_crop_flip(8, padding=4, generator=torch.Generator().manual_seed(5))
    expected = _oracle_crop_flip(images, params, 4).float() / 255
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        out, RandomCropFlip()(images, torch.Generator().manual_seed(5)), rtol=0, atol=0
    )


def test_crop_flip_rejects_bad_shapes():
    params = sample_crop_flip(3)
    with pytest.raises(ValueError, match="Expected images"):
        crop_flip(torch.zeros(3, 32, 32, dtype=torch.uint8), params)
    with pytest.raises(ValueError, match="Expected crop/flip parameters"):
        crop_flip(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), params)


# --- DeviceLoader -----------------------------------------------------------------------------


def _labelled(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel stores the example's index, so batches can be traced back."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4).contiguous()
    return images, torch.arange(n)


def test_device_loader_covers_each_example_once_per_epoch():
    images, labels = _labelled(23)
    loader = DeviceLoader(
        images, labels, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(loader) == 5
    orders = []
    for _ in range(2):
        seen = []
        for x, y in loader:
            assert x.dtype == torch.float32 and y.dtype == torch.int64
            torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255)
            seen += y.tolist()
        assert sorted(seen) == list(range(23))
        orders.append(seen)
    assert orders[0] != orders[1]
    loader.set_epoch(0)
    assert [y for _, b in loader for y in b.tolist()] == orders[0]


def test_device_loader_drop_last_and_no_shuffle():
    images, labels = _labelled(23)
    loader = DeviceLoader(images, labels, batch_size=5, shuffle=False, drop_last=True)
    batches = [y.tolist() for _, y in loader]
    assert len(loader) == len(batches) == 4
    assert batches[0] == [0, 1, 2, 3, 4] and all(len(b) == 5 for b in batches)


def test_device_loader_augments_with_crop_flip():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(
        images,
        torch.arange(6),
        batch_size=6,
        shuffle=False,
        augment=True,
        generator=torch.Generator().manual_seed(3),
    )
    ((x, y),) = list(loader)
    params = sample_crop_flip(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, to_float(_oracle_crop_flip(images, params, 4)), rtol=0, atol=0)


@pytest.mark.parametrize("n, world_size", [(24, 3), (12, 4)])
def test_device_loader_shards_are_disjoint_and_complete(n, world_size):
    images, labels = _labelled(n)
    shards = []
    for rank in range(world_size):
        loader = DeviceLoader(
            images, labels, batch_size=3, rank=rank, world_size=world_size, seed=7
        )
        shards.append([i for _, y in loader for i in y.tolist()])
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(shards[a]) & set(shards[b])
    assert sorted(i for s in shards for i in s) == list(range(n))


def test_device_loader_uneven_shards_have_equal_lengths():
    images, labels = _labelled(10)
    loaders = [DeviceLoader(images, labels, batch_size=2, rank=r, world_size=4) for r in range(4)]
    assert {len(loader) for loader in loaders} == {2}
    shards = [[i for _, y in loader for i in y.tolist()] for loader in loaders]
    assert all(len(s) == 3 for s in shards)
    assert set(i for s in shards for i in s) == set(range(10))
    dropped = [
        DeviceLoader(images, labels, batch_size=2, rank=r, world_size=4, drop_last=True)
        for r in range(4)
    ]
    dropped_shards = [[i for _, y in loader for i in y.tolist()] for loader in dropped]
    assert all(len(loader) == 1 and len(s) == 2 for loader, s in zip(dropped, dropped_shards))
    assert len(set(i for s in dropped_shards for i in s)) == 8


def test_device_loader_rejects_bad_input():
    images, labels = _labelled(4)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(images.float(), labels, batch_size=2)
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(images, labels[:3], batch_size=2)
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(images, labels, batch_size=2, rank=2, world_size=2)


class _RunsCode:
    """A pickle payload that would create ``marker`` when unpickled by a plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-100-python"])
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, layout):
    folder = tmp_path / layout
    folder.mkdir()
    marker = tmp_path / "pwned"
    hostile = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"fine_labels": [0]}
    hostile[b"batch_label"] = _RunsCode(marker)
    name = "test_batch" if layout == "cifar-10-batches-py" else "test"
    (folder / name).write_bytes(pickle.dumps(hostile))
    pickle.loads((folder / name).read_bytes())  # a plain unpickler runs it: the test can fail
    assert marker.exists()
    marker.unlink()
    loader = load_cifar10 if layout == "cifar-10-batches-py" else load_cifar100
    with pytest.raises(ValueError, match=f"{name}'.*pathlib.*touch"):
        loader(tmp_path, train=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_protocols_numpy_and_bytes_still_load(tmp_path, protocol):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = _random_images(np.random.default_rng(7), 3)
    batch = {
        b"data": images.reshape(3, -1),
        b"fine_labels": [0, 99, 5],
        b"filenames": [b"a.png", b"b.png", b"c.png"],
        b"batch_label": b"testing batch 1 of 1",
    }
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = load_cifar100(tmp_path, train=False)
    _check_pixels(x, images)
    assert y.tolist() == [0, 99, 5]


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95", b"garbage that is no pickle"])
def test_cifar_pickle_empty_truncated_or_garbage_names_the_file(tmp_path, content):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes(content)
    with pytest.raises(ValueError, match="cifar-100-python/test'.*Re-extract"):
        load_cifar100(tmp_path, train=False)


def test_cifar10_binary_label_outside_classes_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = np.zeros((3, 3073), np.uint8)
    records[:, 0] = [3, 10, 255]
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    with pytest.raises(ValueError, match=r"labels in 0\.\.9.*got 10 at record 1 \(2 such"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_python_label_outside_classes_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_pickle(folder / "test_batch", np.zeros((2, 3072), np.uint8), b"labels", [0, 12])
    with pytest.raises(ValueError, match=r"labels in 0\.\.9.*got 12"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_binary_empty_file_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="got 0 bytes.*empty or truncated"):
        load_cifar10(tmp_path, train=False)


def _mnist_test_files(tmp_path: Path) -> tuple[Path, bytes]:
    images = np.zeros((2, 28, 28), np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, images, True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _write_idx(path, 2049, np.array([1, 2], np.uint8), True)
    return path, path.read_bytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "ubyte.gz', got one that does not decompress.*truncated"),
        (lambda b: b[:2] + b"\x08\x00" + bytes(40), "ubyte.gz', got one that does not decompress"),
        (lambda b: gzip.compress(b""), "ubyte.gz', got 0 bytes. It is truncated or empty"),
        (lambda b: b"", "ubyte.gz', got 0 bytes. It is truncated or empty"),
    ],
)
def test_mnist_truncated_garbage_or_empty_gz_names_the_file(tmp_path, damage, message):
    path, good = _mnist_test_files(tmp_path)
    path.write_bytes(damage(good))
    with pytest.raises(ValueError, match=f"t10k-labels-idx1-{message}"):
        load_mnist(tmp_path, train=False)


def test_mnist_label_outside_classes_is_refused(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, np.zeros((2, 28, 28), np.uint8), False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.array([1, 11], np.uint8), False)
    with pytest.raises(ValueError, match=r"labels in 0\.\.9 in .*t10k-labels-idx1-ubyte'"):
        load_mnist(tmp_path, train=False)
