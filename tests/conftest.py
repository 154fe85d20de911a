import os
import shutil

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

# Tiny SYNTH: 10 classes, a few images each; generated once per session.
TINY_SYNTH = dict(seed=0, image_size=64, train_per_class=2, val_per_class=1, test_per_class=1)


@pytest.fixture(scope="session")
def tiny_synth_root(tmp_path_factory):
    """A folder with ``dataset/SYNTH`` and ``metadata/SYNTH`` (tiny)."""
    from wsol.data.synth import generate_synth
    root = tmp_path_factory.mktemp("synth")
    generate_synth(str(root / "dataset"), str(root / "metadata"), **TINY_SYNTH)
    return root


def copy_as_dataset(source_root, target_root, name: str) -> None:
    """Lay the tiny SYNTH data out as dataset ``name`` (boxes, or masks for OpenImages)."""
    shutil.copytree(source_root / "dataset" / "SYNTH", target_root / "dataset" / name)
    for split in ("train", "val", "test"):
        src = source_root / "metadata" / "SYNTH" / split
        dst = target_root / "metadata" / name / split
        shutil.copytree(src, dst)
        masks = dst / "localization_masks.txt"
        if name == "OpenImages" and split != "train":
            os.replace(masks, dst / "localization.txt")
        elif masks.exists() and name != "SYNTH":
            masks.unlink()


def synth_argv(root, name: str, *extra: str) -> list[str]:
    """main.py flags of a small run on the tiny SYNTH copied under ``root``
    (later flags in ``extra`` win)."""
    return ["--experiment_name", name, "--dataset_name", "SYNTH", "--architecture", "resnet18",
            "--data_root", str(root / "dataset"), "--metadata_root", str(root / "metadata"),
            "--root", str(root / "train_log"), "--batch_size", "8", "--workers", "0",
            "--cam_curve_interval", "0.01", *extra]
