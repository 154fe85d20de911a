"""Image decoding and transforms on the device (``--decode_on_device``).

The loader's workers only read the files; the main process decodes the
batch where the model runs -- JPEGs with ``torchvision.io.decode_jpeg``
(nvJPEG on a GPU, batched), other formats with ``decode_image`` on the CPU
-- and applies wsolevaluation's transforms there: train = resize to
``resize_size`` squared, random crop ``crop_size``, random horizontal flip;
eval = resize to ``crop_size`` squared; then ImageNet normalisation.  It frees
the CPU cores for the box evaluator when JPEG decoding would otherwise be
the bottleneck.

Resizing is bilinear with antialiasing and rounded to uint8 like PIL's, so
the images are close to the PIL path's (within about one grey level) but not
bit-identical: results differ from the default path by float rounding.  Each
training sample's crop and flip come from its AugmentationSeeds seed, as in
the default path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsol.data.images import bad_image
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DeviceDecoder", "DecodedLoader", "exif_orientation", "upright"]

_JPEG_MAGIC = (0xFF, 0xD8)


def exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation tag (1-8, 1 = upright) of an encoded image, from
    its headers only."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            return int(image.getexif().get(0x0112, 1))
    except Exception:  # unreadable headers: the decoder reports the file
        return 1


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned as PIL's ImageOps.exif_transpose turns the image."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


class DeviceDecoder:
    """Turns a batch of encoded files into the model's normalised input."""

    def __init__(self, device: torch.device, train: bool, resize_size: int, crop_size: int,
                 skip_bad_images: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.device = torch.device(device)
        self.train = train
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.skip_bad_images = skip_bad_images
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def decode(self, encoded: list[torch.Tensor], image_ids: list[str]
               ) -> list[torch.Tensor | None]:
        """uint8 [3, H, W] images on the device; None for an unreadable one
        with ``skip_bad_images`` (otherwise ImageLoadError naming it)."""
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        images: list[torch.Tensor | None] = [None] * len(encoded)
        jpegs = [i for i, data in enumerate(encoded)
                 if data.numel() > 2 and tuple(data[:2].tolist()) == _JPEG_MAGIC]
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB,
                                  device=self.device) if jpegs else []
        except RuntimeError:  # find the bad file(s) one by one
            decoded = [self._decode_one(lambda d: decode_jpeg(d, mode=ImageReadMode.RGB,
                                                              device=self.device),
                                        encoded[i], image_ids[i]) for i in jpegs]
        for i, image in zip(jpegs, decoded):
            # nvJPEG ignores the EXIF orientation: applied here, as the PIL path does.
            images[i] = None if image is None else upright(image, exif_orientation(encoded[i]))
        for i in set(range(len(encoded))) - set(jpegs):
            image = self._decode_one(lambda d: decode_image(d, mode=ImageReadMode.RGB,
                                                            apply_exif_orientation=True),
                                     encoded[i], image_ids[i])
            if image is not None and image.dtype != torch.uint8:  # 16-bit PNG
                image = (image.float() * (255.0 / 65535.0)).round_().to(torch.uint8)
            images[i] = None if image is None else image.to(self.device, non_blocking=True)
        return images

    def _decode_one(self, decode, data: torch.Tensor, image_id: str) -> torch.Tensor | None:
        try:
            return decode(data)
        except RuntimeError as error:
            return bad_image(f"cannot decode image {image_id}: {error}", self.skip_bad_images)

    def transform(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """One decoded image -> [1, 3, crop, crop] float in [0, 1]."""
        size = self.resize_size if self.train else self.crop_size
        x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)  # PIL hands uint8 to ToTensor
        if self.train:
            generator = torch.Generator().manual_seed(int(seed))
            span = size - self.crop_size + 1
            top = int(torch.randint(span, (), generator=generator))
            left = int(torch.randint(span, (), generator=generator))
            x = x[..., top:top + self.crop_size, left:left + self.crop_size]
            if float(torch.rand((), generator=generator)) < 0.5:
                x = x.flip(-1)
        return x / 255

    def __call__(self, encoded: list[torch.Tensor], image_ids: list[str],
                 seeds: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(normalised batch [B', 3, crop, crop] on the device, kept positions)."""
        decoded = self.decode(encoded, image_ids)
        kept = [i for i, image in enumerate(decoded) if image is not None]
        if not kept:
            return torch.empty(0, 3, self.crop_size, self.crop_size, device=self.device), kept
        batch = torch.cat([self.transform(decoded[i], seeds[i]) for i in kept])
        return (batch - self.mean) / self.std, kept


class DecodedLoader:
    """Wraps a DataLoader of encoded files: yields ``(images, labels, ids)``
    like the default loader, with the images already on the decoder's device."""

    def __init__(self, loader, decoder: DeviceDecoder):
        self.loader = loader
        self.decoder = decoder
        self.dataset = loader.dataset
        self.sampler = loader.sampler
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if len(batch) == 3:  # every file of the batch was unreadable and skipped
                yield batch
                continue
            encoded, labels, image_ids, seeds = batch
            images, kept = self.decoder(encoded, image_ids, seeds)
            if len(kept) < len(image_ids):
                labels = labels[kept]
                image_ids = [image_ids[i] for i in kept]
            yield images, labels, image_ids
