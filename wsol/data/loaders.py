"""Image datasets and loaders in the wsolevaluation format.

Items are ``(image_tensor, label, image_id)``; only the train loader
shuffles, and each of its samples carries its own augmentation seed
(:class:`AugmentationSeeds`), so batches depend neither on the worker that
loads them nor on the number of workers.  With ``decode_device`` the workers
only read the files and :mod:`wsol.data.device_decode` decodes on the device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from wsol.data.images import READ_ERRORS, bad_image, open_rgb
from wsol.data.metadata import (MetadataError, check_ids_present, configure_metadata,
                                get_class_labels, get_image_ids, get_multi_labels)
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["WSOLImageLabelDataset", "AugmentationSeeds", "LoaderSettings", "get_transforms",
           "get_data_loader", "skip_none_collate"]

_SPLITS = ("train", "val", "test")


class WSOLImageLabelDataset(Dataset):
    """Images of one split with their class labels; items are
    ``(image_tensor, label, image_id)``, or with ``transform=None``
    ``(file_bytes, label, image_id, seed)`` for decoding on the device
    (:mod:`wsol.data.device_decode`; ``seed`` is -1 without AugmentationSeeds)."""

    def __init__(self, data_root: str, metadata_root: str,
                 transform: Callable | None, proxy: bool = False,
                 num_sample_per_class: int = 0,
                 num_classes: int | None = None,
                 skip_bad_images: bool = False,
                 multi_label: bool = False):
        self.data_root = data_root
        self.skip_bad_images = skip_bad_images
        self.metadata = configure_metadata(metadata_root)
        self.transform = transform
        self.multi_label = multi_label
        self.image_ids = get_image_ids(self.metadata, proxy=proxy)
        if multi_label:  # several classes per image: multi-hot targets
            if num_classes is None:
                raise ValueError("a multi-label dataset needs num_classes")
            self.label_lists = get_multi_labels(self.metadata)
            check_ids_present(self.image_ids, self.label_lists, self.metadata["class_labels"])
            self.image_labels = {i: labels[0] for i, labels in self.label_lists.items()}
        else:
            self.image_labels = get_class_labels(self.metadata)
            check_ids_present(self.image_ids, self.image_labels, self.metadata["class_labels"])
        self.num_classes = num_classes
        if num_classes is not None:
            lists = (self.label_lists if multi_label
                     else {i: [label] for i, label in self.image_labels.items()})
            bad = [i for i in self.image_ids if max(lists[i]) >= num_classes]
            if bad:
                raise MetadataError(
                    f"{self.metadata['class_labels']}: label "
                    f"{max(lists[bad[0]])} of {bad[0]!r} is >= the number "
                    f"of classes ({num_classes})")
        if num_sample_per_class > 0:
            self.image_ids = self._first_per_class(num_sample_per_class)

    def _first_per_class(self, count: int) -> list[str]:
        taken: dict[int, int] = {}
        kept = []
        for image_id in self.image_ids:
            label = self.image_labels[image_id]
            if taken.get(label, 0) < count:
                taken[label] = taken.get(label, 0) + 1
                kept.append(image_id)
        return kept

    def __len__(self) -> int:
        return len(self.image_ids)

    def target(self, image_id: str):
        """The class (an int), or for a multi-label dataset the multi-hot
        vector (float [C])."""
        if not self.multi_label:
            return self.image_labels[image_id]
        hot = torch.zeros(self.num_classes)
        hot[self.label_lists[image_id]] = 1.0
        return hot

    def __getitem__(self, key: int | tuple[int, int]):
        """``key``: an index, or ``(index, seed)`` from :class:`AugmentationSeeds`
        (the random transforms then draw from ``seed`` alone)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image_id = self.image_ids[index]
        path = os.path.join(self.data_root, image_id)
        if self.transform is None:
            return self._encoded(path, image_id, seed)
        try:
            image = open_rgb(path)
        except READ_ERRORS as error:
            return bad_image(f"cannot read image {path}: {error}", self.skip_bad_images)
        if seed is None:
            return self.transform(image), self.target(image_id), image_id
        with torch.random.fork_rng(devices=[]):  # leaves the process's own stream alone
            torch.manual_seed(seed)
            return self.transform(image), self.target(image_id), image_id

    def _encoded(self, path: str, image_id: str, seed: int | None):
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data:
                raise OSError("empty file")
        except OSError as error:
            return bad_image(f"cannot read image {path}: {error}", self.skip_bad_images)
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return encoded, self.target(image_id), image_id, -1 if seed is None else seed


class AugmentationSeeds(Sampler):
    """Wraps a sampler so that each sample carries its own augmentation seed.

    Yields ``(index, seed)`` with ``seed = base + index`` and ``base`` drawn
    from ``generator`` once per epoch.  The crops and flips of a sample then
    depend only on the generator's state and the sample, not on which worker
    process loads it nor on how long that worker has lived: the loader can
    keep its workers across epochs (``persistent_workers``), use any number
    of them, and a run resumed from a checkpoint (which stores the
    generator) replays the same augmentations.
    """

    def __init__(self, sampler: Sampler, generator: torch.Generator):
        self.sampler = sampler
        self.generator = generator
        self.skip = 0  # samples the next pass leaves out (a resumed epoch)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip

    def set_epoch(self, epoch: int) -> None:  # DistributedSampler's reshuffle
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def resume_after(self, samples: int) -> None:
        """Make the next pass draw as usual but start after its first
        ``samples`` samples (those an interrupted epoch already trained on)."""
        self.skip = samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Everything is drawn before the first sample, so a pass resumed
        # with resume_after() sees the same order and seeds.
        base = int(torch.randint(0, 2 ** 62, (), generator=self.generator))
        indices = list(self.sampler)
        skip, self.skip = self.skip, 0
        for index in indices[skip:]:
            yield index, base + index


def skip_none_collate(batch: list):
    """Default collation of the items that loaded; an all-bad batch is empty.
    Encoded items (file bytes of different lengths) stay a list."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long), []
    if len(batch[0]) == 4:
        encoded, labels, ids, seeds = zip(*batch)
        return list(encoded), _labels(labels), list(ids), torch.as_tensor(seeds)
    images, labels, ids = zip(*batch)
    if len({tuple(image.shape) for image in images}) > 1:  # images at their own size
        return list(images), _labels(labels), list(ids)
    return torch.stack(images), _labels(labels), list(ids)


def _labels(labels: tuple) -> torch.Tensor:
    """Class indices [B], or multi-hot vectors [B, C]."""
    if isinstance(labels[0], torch.Tensor):
        return torch.stack(labels)
    return torch.as_tensor(labels)


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int = 32
    workers: int = 4
    resize_size: int = 256
    crop_size: int = 224
    proxy_training_set: bool = False
    num_val_sample_per_class: int = 0
    skip_bad_images: bool = False
    prefetch_factor: int = 4   # batches per worker prepared ahead
    decode_device: torch.device | None = None  # decode and transform there (--decode_on_device)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the network's input normalisation
    std: tuple[float, float, float] = IMAGENET_STD
    multi_label: bool = False  # class_labels.txt lists several classes per image
    augment: str = "wsol"      # training transforms: "wsol" or "recam"
    resize_long: tuple[int, int] = (320, 640)  # "recam": the long side's random range
    keep_size: bool = False    # evaluation images at their own size (seeds, batch 1)


class RandomResizeLong:
    """ReCAM's training resize: the long side drawn uniformly from
    [low, high] (torch's random stream, so AugmentationSeeds governs it),
    bicubic, aspect ratio kept."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def __call__(self, image):
        from PIL import Image
        target = int(torch.randint(self.low, self.high + 1, ()))
        width, height = image.size
        scale = target / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.BICUBIC)


class RandomCropPad:
    """ReCAM's random crop of a normalised tensor to ``size`` x ``size``:
    a side shorter than ``size`` is placed at a random offset in a zero
    canvas (zero = the mean colour after normalisation)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        _, height, width = tensor.shape
        out = tensor.new_zeros(tensor.shape[0], self.size, self.size)

        def span(length):  # (source start, target start, extent)
            extent = min(length, self.size)
            slack = abs(length - self.size)
            offset = int(torch.randint(0, slack + 1, ())) if slack else 0
            return (offset, 0, extent) if length > self.size else (0, offset, extent)
        sy, ty, h = span(height)
        sx, tx, w = span(width)
        out[:, ty:ty + h, tx:tx + w] = tensor[:, sy:sy + h, sx:sx + w]
        return out


def get_transforms(split: str, resize_size: int, crop_size: int,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   augment: str = "wsol", resize_long: tuple[int, int] = (320, 640),
                   keep_size: bool = False):
    """wsolevaluation's transforms: train = resize, random crop, flip; eval =
    resize straight to the crop size (the whole image is seen); then the
    network's normalisation (ImageNet's, or e.g. 0.5 for the DeiT-Tiny of the
    method's earlier code).  ``augment="recam"``: ReCAM's training transforms
    (long side random in ``resize_long``, flip, random crop ``crop_size``
    padded with zeros).  ``keep_size``: evaluation images at their own size
    (the seed evaluation scales them itself)."""
    from torchvision import transforms as T
    normalize = T.Normalize(mean, std)
    if split == "train" and augment == "recam":
        return T.Compose([RandomResizeLong(*resize_long), T.RandomHorizontalFlip(),
                          T.ToTensor(), normalize, RandomCropPad(crop_size)])
    if split != "train" and keep_size:
        return T.Compose([T.ToTensor(), normalize])
    if split == "train":
        return T.Compose([
            T.Resize((resize_size, resize_size)),
            T.RandomCrop(crop_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            normalize,
        ])
    return T.Compose([
        T.Resize((crop_size, crop_size)),
        T.ToTensor(),
        normalize,
    ])


def get_data_loader(data_roots: dict[str, str], metadata_root: str,
                    settings: LoaderSettings, splits=_SPLITS,
                    num_classes: int | None = None,
                    generator: torch.Generator | None = None,
                    sampler_factory: Callable | None = None,
                    train_split: str = "train") -> dict[str, DataLoader]:
    """One DataLoader per split; only the training split's (``train_split``:
    ``train``, or e.g. VOC's ``train_aug``) shuffles and augments."""
    loaders = {}
    for split in splits:
        if not os.path.isdir(data_roots[split]):
            raise MetadataError(f"image folder not found: {data_roots[split]} "
                                f"(check --data_root: images of dataset D are under <data_root>/D)")
        dataset = WSOLImageLabelDataset(
            data_root=data_roots[split],
            metadata_root=os.path.join(metadata_root, split),
            transform=(get_transforms("train" if split == train_split else split,
                                      settings.resize_size, settings.crop_size,
                                      settings.mean, settings.std, settings.augment,
                                      settings.resize_long, settings.keep_size)
                       if settings.decode_device is None else None),
            proxy=settings.proxy_training_set and split == train_split,
            num_sample_per_class=(settings.num_val_sample_per_class
                                  if split == "val" else 0),
            num_classes=num_classes,
            skip_bad_images=settings.skip_bad_images,
            multi_label=settings.multi_label)
        sampler = sampler_factory(dataset, split) if sampler_factory else None
        train = split == train_split
        if train:
            generator = generator if generator is not None else torch.Generator().manual_seed(0)
            sampler = AugmentationSeeds(
                sampler if sampler is not None else RandomSampler(dataset, generator=generator),
                generator)
        workers = settings.workers
        loaders[split] = DataLoader(
            dataset,
            batch_size=settings.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=skip_none_collate,
            pin_memory=torch.cuda.is_available(),
            # Workers live across epochs: the augmentation seeds travel with
            # the indices, so nothing depends on a worker's own random state.
            persistent_workers=train and workers > 0,
            prefetch_factor=settings.prefetch_factor if workers > 0 else None,
            # Only seeds the workers' own streams, which no transform uses.
            generator=torch.Generator().manual_seed(0) if train else None)
        if settings.decode_device is not None:
            from wsol.data.device_decode import DecodedLoader, DeviceDecoder
            loaders[split] = DecodedLoader(loaders[split], DeviceDecoder(
                settings.decode_device, train, settings.resize_size, settings.crop_size,
                settings.skip_bad_images, settings.mean, settings.std))
    return loaders
