"""Metadata readers and image loaders in the wsolevaluation format.

wsolevaluation's ``data_loaders`` names, from the library: the metadata
readers (:mod:`wsol.data.metadata`) and the datasets and loaders
(:mod:`wsol.data.loaders`).  The format of the metadata files is in
docs/protocol.md and metadata/README.md.
"""
from wsol.data.images import ImageLoadError, bad_image
from wsol.data.loaders import (AugmentationSeeds, LoaderSettings, WSOLImageLabelDataset,
                               get_data_loader, get_transforms, skip_none_collate)
from wsol.data.metadata import (GroundTruth, MetadataError, configure_metadata,
                                get_bounding_boxes, get_class_labels, get_image_ids,
                                get_image_sizes, get_mask_paths)
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MetadataError", "ImageLoadError", "configure_metadata", "get_image_ids",
           "get_class_labels", "get_bounding_boxes", "get_image_sizes", "get_mask_paths",
           "GroundTruth", "WSOLImageLabelDataset", "AugmentationSeeds", "LoaderSettings",
           "get_transforms", "get_data_loader", "skip_none_collate", "bad_image",
           "IMAGENET_MEAN", "IMAGENET_STD"]
