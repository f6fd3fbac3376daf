"""Data sets and an on-device batch loader for the examples (no torchvision needed).

Every loader returns ``(images, labels)``: ``images`` is ``uint8`` of shape ``(N, C, H, W)`` (``C = 3``,
32×32 for CIFAR and SVHN; ``C = 1``, 28×28 for MNIST) and ``labels`` is ``int64`` of shape ``(N,)``.
Pixels stay ``uint8`` until a batch is drawn, so a whole training set fits on the GPU (CIFAR-10 is
150 MiB) and augmentation runs there, vectorised (:class:`RandomCropFlip`, :class:`DeviceLoader`).

The recipe both papers follow (SPEC §4): random crop 32 with 4 pixels of zero padding and a random
horizontal flip for CIFAR and SVHN; inputs in [0, 1]; no normalisation.

Only files already on disk are read; nothing is downloaded. The CIFAR python-layout pickles are read
with a restricted unpickler that builds only what those files hold (dicts, lists, bytes, strings,
numbers and numpy ``uint8`` arrays) and refuses anything else, so a hostile file in ``--data-root``
cannot run code. A file that is truncated, not what its name says, or holds labels outside the data
set's classes raises a ``ValueError`` that names it.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PathLike = Union[str, Path]
Dataset = Tuple[Tensor, Tensor]

_CIFAR10_UNPACK_HINT = (
    "To unpack the copy shipped beside this repository run, from the repository root, "
    "'python3 ../shared/data/cifar10-part-a/cifar10_parts.py unpack ../shared/data/cifar10-part-a ROOT' "
    "and then the same with cifar10-part-b."
)


def _to_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, path: Path) -> Dataset:
    """Wraps numpy arrays as a contiguous ``uint8`` image tensor and an ``int64`` label tensor, after
    checking that every label of ``path`` is a class in ``0..num_classes - 1``."""
    labels = np.asarray(labels).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Expected labels in 0..{num_classes - 1} in '{path}', got {labels[first]} at record "
            f"{first} ({int(bad.sum())} such records). The file is corrupted or of another data set: "
            "re-extract or re-unpack it."
        )
    return (
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1)),
    )


def _missing(what: str, expected: Path, hint: str = "") -> FileNotFoundError:
    message = f"Expected the {what} file at '{expected}', got no such file."
    return FileNotFoundError(f"{message} {hint}".strip())


def _cifar10_files(train: bool) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]


def _read_cifar_binary(path: Path) -> Dataset:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 bytes (R, G, B planes)."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + 3 * 32 * 32
    if raw.size == 0 or raw.size % record != 0:
        raise ValueError(
            f"Expected '{path}' to hold whole CIFAR-10 records of {record} bytes, got {raw.size} bytes "
            f"({raw.size % record} left over). It is empty or truncated: re-extract or re-unpack it."
        )
    records = raw.reshape(-1, record)
    return _to_dataset(records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0], 10, path)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, limited to Latin-1."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"Expected bytes encoded as latin1, got encoding {encoding!r}."
        )
    return codecs.encode(text, "latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, strings, numbers and numpy arrays; refuses every other global.

    The CIFAR python-layout files (pickled by Python 2 with numpy) need nothing else; a pickle that
    names ``os.system`` or any other callable is refused before it is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"Expected only numpy arrays, dicts, lists, bytes and numbers, got a reference to "
            f"{module}.{name}"
        )


def _read_cifar_pickle(path: Path, label_key: bytes, num_classes: int) -> Dataset:
    """Reads one CIFAR python-layout pickle: ``b"data"`` is ``(N, 3072)`` uint8, R, G, B planes."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"Expected a CIFAR python-layout batch in '{path}', got a file that is not one ({err}). "
            "Re-extract it from the official archive, or use the binary layout (cifar-10-batches-bin)."
        ) from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"Expected a CIFAR pickle with keys b'data' and {label_key!r} in '{path}', got {keys}."
        )
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    return _to_dataset(data.reshape(-1, 3, 32, 32), np.asarray(batch[label_key]), num_classes, path)


def _concat(parts: list[Dataset]) -> Dataset:
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def load_cifar10(root: PathLike, train: bool = True) -> Dataset:
    """Loads CIFAR-10 from the official binary or python layout, whichever is under ``root``.

    Looks for ``root/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`` first, then
    ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``; ``root`` may also be one of those
    folders itself.

    Args:
        root: folder holding ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``.
        train: the 50,000 training images if True, else the 10,000 test images.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)`` in file order.

    Raises:
        FileNotFoundError: if neither layout is found or a batch file is missing; the message says how
            to unpack the shipped copy.
        ValueError: on an empty, truncated or corrupted batch file, a python-layout file whose
            pickle references anything but numpy arrays, or a label outside 0..9.
    """
    root = Path(root)
    names = _cifar10_files(train)
    layouts = [
        (folder, suffix, reader)
        for folder_name, suffix, reader in (
            ("cifar-10-batches-bin", ".bin", _read_cifar_binary),
            ("cifar-10-batches-py", "", lambda path: _read_cifar_pickle(path, b"labels", 10)),
        )
        for folder in (root / folder_name, root)
    ]
    for folder, suffix, reader in layouts:
        paths = [folder / f"{n}{suffix}" for n in names]
        if paths[0].is_file():
            for path in paths:
                if not path.is_file():
                    raise _missing("CIFAR-10", path, _CIFAR10_UNPACK_HINT)
            return _concat([reader(path) for path in paths])
    raise FileNotFoundError(
        f"Expected CIFAR-10 at '{root / 'cifar-10-batches-bin' / (names[0] + '.bin')}' (binary layout) "
        f"or '{root / 'cifar-10-batches-py' / names[0]}' (python layout), got neither. "
        + _CIFAR10_UNPACK_HINT
    )


def load_cifar100(root: PathLike, train: bool = True) -> Dataset:
    """Loads CIFAR-100 (python layout, fine labels) from ``root/cifar-100-python/{train,test}``.

    Args:
        root: folder holding ``cifar-100-python/`` (or that folder itself).
        train: the 50,000 training images if True, else the 10,000 test images.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)`` fine labels in 0..99.

    Raises:
        FileNotFoundError: if the pickle is missing.
        ValueError: on a corrupted file, a pickle that references anything but numpy arrays, or a
            label outside 0..99.
    """
    root = Path(root)
    name = "train" if train else "test"
    for folder in (root / "cifar-100-python", root):
        if (folder / name).is_file():
            return _read_cifar_pickle(folder / name, b"fine_labels", 100)
    raise _missing(
        "CIFAR-100 python-layout",
        root / "cifar-100-python" / name,
        "Extract cifar-100-python.tar.gz into ROOT.",
    )


def load_svhn(root: PathLike, train: bool = True) -> Dataset:
    """Loads SVHN (cropped digits) from ``root/{train,test}_32x32.mat``; label 10 (digit 0) maps to 0.

    Args:
        root: folder holding ``train_32x32.mat`` / ``test_32x32.mat``.
        train: the 73,257 training images if True, else the 26,032 test images.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)`` digits in 0..9.

    Raises:
        ImportError: if scipy is not installed (``.mat`` files need ``scipy.io.loadmat``).
        FileNotFoundError: if the ``.mat`` file is missing.
    """
    path = Path(root) / ("train_32x32.mat" if train else "test_32x32.mat")
    if not path.is_file():
        raise _missing("SVHN", path, "Download it from http://ufldl.stanford.edu/housenumbers/.")
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError(
            "Expected scipy to read SVHN's .mat files, got no scipy. Install it with 'pip install scipy'."
        ) from err
    mat = loadmat(str(path))
    images = np.asarray(mat["X"]).transpose(3, 2, 0, 1)  # (32, 32, 3, N) -> (N, 3, 32, 32)
    labels = np.asarray(mat["y"]).reshape(-1) % 10  # SVHN stores digit 0 as label 10
    return _to_dataset(images, labels, 10, path)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Reads an IDX file (plain or gzip, told apart by content) after checking its magic number."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"Expected a complete gzip file at '{path}', got one that does not decompress ({err}). "
            "It is truncated or corrupted: download or copy it again."
        ) from err
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"Expected an IDX file of at least {header} bytes at '{path}', got {len(data)} bytes. "
            "It is truncated or empty: download or copy it again."
        )
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise ValueError(
            f"Expected IDX magic number {magic} in '{path}', got {found}. Is it the right MNIST file?"
        )
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    # A bytearray keeps the array writable, which torch.from_numpy wants.
    array = np.frombuffer(bytearray(data), dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise ValueError(
            f"Expected {int(np.prod(shape))} values of shape {shape} in '{path}', got {array.size}. "
            "It is truncated or corrupted: download or copy it again."
        )
    return array.reshape(shape)


def _find_idx(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise _missing("MNIST IDX", root / f"{name}[.gz]", "Place the four MNIST IDX files in ROOT.")


def load_mnist(root: PathLike, train: bool = True) -> Dataset:
    """Loads MNIST from IDX files in ``root``, gzipped (``.gz``) or not.

    Args:
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        train: the 60,000 training images if True, else the 10,000 test images.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 1, 28, 28)`` and ``int64`` ``(N,)``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: on a wrong magic number, a truncated, empty or corrupted (``.gz``) file, or a
            label outside 0..9.
    """
    root = Path(root)
    prefix = "train" if train else "t10k"
    images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"), magic=2051, ndim=3)
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    labels = _read_idx(labels_path, magic=2049, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected as many MNIST labels as images in '{root}', got {labels.shape[0]} labels "
            f"for {images.shape[0]} images."
        )
    return _to_dataset(images[:, None], labels, 10, labels_path)


_LOADERS: dict[str, Callable[[PathLike, bool], Dataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist": load_mnist,
    "svhn": load_svhn,
}


class DatasetInfo(NamedTuple):
    """What a training script needs to know about a data set besides its pixels.

    Attributes:
        num_classes: number of classes (labels lie in ``0..num_classes - 1``).
        in_channels: image channels.
        augment: whether training uses random crop (4 pixels of padding) and horizontal flip: CIFAR
            yes (both papers); SVHN and MNIST no (a flipped digit is another digit, or none).
        train_examples: images in the training split (SVHN: ``train`` alone, without ``extra``).
        test_examples: images in the test split.
    """

    num_classes: int
    in_channels: int
    augment: bool
    train_examples: int
    test_examples: int


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, 3, True, 50_000, 10_000),
    "cifar100": DatasetInfo(100, 3, True, 50_000, 10_000),
    "mnist": DatasetInfo(10, 1, False, 60_000, 10_000),
    "svhn": DatasetInfo(10, 3, False, 73_257, 26_032),
}


def dataset_info(name: str) -> DatasetInfo:
    """Classes, channels and augmentation of a data set by name (see :data:`DATASETS`).

    Raises:
        ValueError: on an unknown name; the message lists the valid ones.

    Example:
        >>> dataset_info("cifar100").num_classes
        100
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"Expected a data set name in {sorted(DATASETS)}, got {name!r}.")
    return DATASETS[key]


def load_dataset(
    name: str, root: PathLike, train: bool = True, size: Optional[int] = None
) -> Dataset:
    """Loads a data set by name: ``"cifar10"``, ``"cifar100"``, ``"svhn"`` or ``"mnist"``.

    Args:
        name: the data set's name (case-insensitive).
        root: the folder the loader searches (see each ``load_*`` function).
        train: the training split if True, else the test split.
        size: keep a fixed class-balanced subset of this many examples (:func:`balanced_subset`);
            ``None`` keeps them all.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, C, H, W)`` and ``int64`` ``(N,)``.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones), or a ``size`` the split
            cannot give.
        FileNotFoundError: if the expected files are not under ``root``.
    """
    info = dataset_info(name)
    dataset = _LOADERS[name.lower()](root, train)
    return dataset if size is None else balanced_subset(dataset, size, info.num_classes)


def balanced_subset(dataset: Dataset, size: int, num_classes: int) -> Dataset:
    """A fixed class-balanced subset: ``size // C`` examples of each class (one more for the first
    ``size % C`` classes), drawn by a permutation seeded with 0, so it depends on ``size`` alone
    (every run, seed and row of a study trains on the same examples). Kept in data-set order.

    Raises:
        ValueError: if ``size`` is not in ``1..len(dataset)`` or a class has too few examples.

    Example:
        >>> images, labels = torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 0, 1, 1, 1])
        >>> balanced_subset((images, labels), 4, 2)[1].tolist()
        [0, 0, 1, 1]
    """
    images, labels = dataset
    if not 1 <= size <= labels.numel():
        raise ValueError(
            f"Expected a subset size in 1..{labels.numel()} (the split's size), got {size}."
        )
    quota = torch.full((num_classes,), size // num_classes)
    quota[: size % num_classes] += 1
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts < quota).any()):
        raise ValueError(
            f"Expected at least {quota.tolist()} examples per class for a balanced subset of {size}, "
            f"got {counts.tolist()}; ask for a smaller size."
        )
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    by_class = order[torch.sort(labels[order], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[labels[by_class]]
    keep = torch.sort(by_class[rank < quota[labels[by_class]]]).values
    return images[keep], labels[keep]


class CropFlipParams(NamedTuple):
    """Random parameters of :func:`crop_flip` for one batch.

    Attributes:
        top: ``int64`` ``(N,)``, row of the crop's top-left corner in the padded image, in ``[0, 2p]``.
        left: ``int64`` ``(N,)``, column of that corner, in ``[0, 2p]``.
        flip: ``bool`` ``(N,)``, whether the crop is mirrored left-right.
    """

    top: Tensor
    left: Tensor
    flip: Tensor


def sample_crop_flip(
    n: int,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[torch.device, str]] = None,
) -> CropFlipParams:
    """Draws crop offsets uniformly in ``[0, 2·padding]`` and flips with probability 1/2.

    Args:
        n: the batch size.
        padding: zero padding on each side, in pixels.
        flip: if False, no example is flipped.
        generator: source of randomness; the numbers are drawn on its device.
        device: where the returned tensors live (default: the generator's device, else CPU).

    Returns:
        :class:`CropFlipParams` with tensors of shape ``(n,)``.
    """
    draw_on = generator.device if generator is not None else torch.device(device or "cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=draw_on) < 0.5
    else:
        mirrored = torch.zeros(n, dtype=torch.bool, device=draw_on)
    target = device if device is not None else draw_on
    return CropFlipParams(top.to(target), left.to(target), mirrored.to(target))


def crop_flip(images: Tensor, params: CropFlipParams, *, padding: int = 4) -> Tensor:
    """Crops every image of a batch at its own offset after zero padding, and mirrors some of them.

    ``out[n, c, i, j] = padded[n, c, top[n] + i, left[n] + j']`` with ``j' = W − 1 − j`` if
    ``flip[n]`` else ``j``, where ``padded`` is ``images`` with ``padding`` zeros on each side. One
    gather for the whole batch: no Python loop over examples, no host synchronisation.

    Args:
        images: ``(N, C, H, W)``, any dtype (``uint8`` in the examples).
        params: offsets and flips from :func:`sample_crop_flip`, on ``images.device``.
        padding: the padding the offsets were drawn for.

    Returns:
        A tensor of the shape, dtype and device of ``images``.

    Raises:
        ValueError: if ``images`` is not 4-D or ``params`` do not have one entry per image.
    """
    if images.dim() != 4:
        raise ValueError(f"Expected images of shape (N, C, H, W), got shape {tuple(images.shape)}.")
    n, c, h, w = images.shape
    if any(p.shape != (n,) for p in params):
        raise ValueError(
            f"Expected crop/flip parameters of shape ({n},), got "
            f"{[tuple(p.shape) for p in params]}. Draw them with sample_crop_flip(images.shape[0])."
        )
    padded = F.pad(images, (padding, padding, padding, padding))
    cols = torch.arange(w, device=images.device)
    cols = torch.where(params.flip[:, None], w - 1 - cols, cols) + params.left[:, None]
    rows = params.top[:, None] + torch.arange(h, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def to_float(images: Tensor) -> Tensor:
    """Converts ``uint8`` pixels to ``float32`` in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


class RandomCropFlip:
    """Random crop with zero padding and random horizontal flip, batched, on the images' device.

    The CIFAR/SVHN augmentation of both papers (crop 32 with padding 4, flip). Takes a ``uint8``
    batch and returns ``float32`` in [0, 1].

    Args:
        padding: zero padding on each side, in pixels.
        flip: whether to flip left-right with probability 1/2.

    Example:
        >>> images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
        >>> out = RandomCropFlip()(images, torch.Generator().manual_seed(0))
        >>> out.shape, out.dtype
        (torch.Size([5, 3, 32, 32]), torch.float32)
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"Expected padding >= 0, got {padding}.")
        self.padding = padding
        self.flip = flip

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Augments a ``uint8`` batch ``(N, C, H, W)``; returns ``float32`` in [0, 1], same shape."""
        params = sample_crop_flip(
            images.shape[0],
            padding=self.padding,
            flip=self.flip,
            generator=generator,
            device=images.device,
        )
        return to_float(crop_flip(images, params, padding=self.padding))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip})"


Augment = Callable[[Tensor, Optional[torch.Generator]], Tensor]


class DeviceLoader:
    """Batches of a ``uint8`` data set kept on one device, shuffled and augmented there.

    Yields ``(x, y)`` with ``x`` ``float32`` in [0, 1] and ``y`` ``int64``, both on the data's device.
    The order of epoch ``e`` is a permutation drawn from ``seed + e`` (the same on every rank, as in
    :class:`torch.utils.data.DistributedSampler`). Each ``iter()`` uses the current epoch and then moves
    to the next one; :meth:`set_epoch` picks the epoch explicitly (for resuming).

    Sharding for DistributedDataParallel: rank ``r`` of ``world_size`` takes the strided slice
    ``order[r::world_size]``, so shards are disjoint. When ``N`` is not a multiple of ``world_size``
    the order is first padded with its own head (``drop_last=False``) or cut (``drop_last=True``) so
    that every rank runs the same number of steps; evaluate on a single rank for exact counts.

    Args:
        images: ``uint8`` ``(N, C, H, W)``.
        labels: ``int64`` ``(N,)``.
        batch_size: examples per batch on this rank.
        shuffle: draw a new order each epoch; else keep the data set's order.
        augment: False for none, True for :class:`RandomCropFlip` ``(padding=4, flip=True)``, or a
            callable ``(uint8 batch, generator) -> float batch in [0, 1]``.
        generator: source of the augmentation's randomness, on the data's device; give each rank a
            differently seeded one. None uses the global generator.
        drop_last: drop each rank's incomplete last batch (and the uneven tail across ranks).
        device: if given, ``images`` and ``labels`` are moved there once.
        seed: base seed of the shuffling order.
        rank: this process's rank.
        world_size: number of processes sharing the data.

    Example:
        >>> images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
        >>> loader = DeviceLoader(images, torch.arange(10), batch_size=4, augment=True)
        >>> len(loader), [tuple(y.shape) for _, y in loader]
        (3, [(4,), (4,), (2,)])
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = True,
        augment: Union[bool, Augment] = False,
        generator: Optional[torch.Generator] = None,
        drop_last: bool = False,
        *,
        device: Optional[Union[torch.device, str]] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"Expected uint8 images of shape (N, C, H, W), got {images.dtype} of shape "
                f"{tuple(images.shape)}. Keep the loaders' uint8 output; conversion happens per batch."
            )
        if images.shape[0] == 0:
            raise ValueError("Expected at least one image, got an empty data set.")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"Expected labels of shape ({images.shape[0]},), got {tuple(labels.shape)}."
            )
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"Expected world_size >= 1 and 0 <= rank < world_size, got rank={rank}, "
                f"world_size={world_size}."
            )
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        self.images = images
        self.labels = labels.to(torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment: Optional[Augment] = RandomCropFlip() if augment is True else augment or None
        self.generator = generator
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Makes the next ``iter()`` use the order of ``epoch``."""
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        """Number of examples this rank sees per epoch."""
        n = self.images.shape[0]
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def indices(self, epoch: int) -> Tensor:
        """This rank's example indices for ``epoch``, in visiting order, on the data's device."""
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        total = self.shard_size * self.world_size
        order = order.repeat(-(-total // n))[:total]  # pads with the order's own head
        return order[self.rank :: self.world_size].to(self.images.device)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        # The epoch advances when iter() is called, not at the first batch.
        index = self.indices(self.epoch)
        self.epoch += 1
        return self._batches(index)

    def _batches(self, index: Tensor) -> Iterator[Tuple[Tensor, Tensor]]:
        for b in range(len(self)):
            batch = index[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[batch]
            x = self.augment(x, self.generator) if self.augment is not None else to_float(x)
            yield x, self.labels[batch]
