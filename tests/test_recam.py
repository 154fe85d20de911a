"""ReCAM: the SCE term, the recam branch, multi-label data, seed maps and
seed mIoU, PASCAL VOC metadata, and the pipeline on the built-in SYNTH_ML."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import config
import evaluation
import main
from wsol import seeds as seeds_module
from wsol.seeds import seed_maps
from wsol import CAMModel
from wsol.cams import compute_cams_per_branch
from wsol.data.metadata import MetadataError, configure_metadata, get_multi_labels
from wsol.metrics.segmentation import IGNORE_LABEL, SegmentationEvaluator
from wsol.recam import reactivation_loss, recam_class_weights
from wsol.runtime.checkpoint import load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the SCE term ------------------------------------------------------------------
def test_reactivation_loss_against_a_hand_computation():
    torch.manual_seed(0)
    batch, channels, classes = 3, 5, 4
    features = torch.rand(batch, channels, 3, 4)
    w1 = torch.randn(classes, channels)
    w2 = torch.randn(classes, channels)
    targets = torch.tensor([[1., 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])  # image 3: no class
    expected = 0.0
    for i in range(batch):
        terms = []
        for k in range(classes):
            if targets[i, k] == 0:
                continue
            cam = torch.relu((w1[k][:, None, None] * features[i]).sum(0))
            cam = cam / (cam.max() + 1e-5)
            f = (cam[None] * features[i]).mean((1, 2))
            logits = w2 @ f
            terms.append(-torch.log_softmax(logits, 0)[k])
        if terms:
            expected += sum(terms) / len(terms)
    expected /= batch
    got = reactivation_loss(features, w1, w2, targets)
    assert torch.allclose(got, torch.as_tensor(expected), atol=1e-6)
    # The mask is not detached: the term trains the BCE head's weights too.
    w1.requires_grad_(True)
    reactivation_loss(features, w1, w2, targets).backward()
    assert w1.grad is not None and bool(w1.grad.abs().sum() > 0)


def test_recam_clamps_are_spelt_out():
    w1 = torch.tensor([[1.0, -2.0, -1.0]])
    w2 = torch.tensor([[-3.0, -1.0, 2.0]])
    assert recam_class_weights(w1, w2, "product", "none").tolist() == [[-3.0, 2.0, -2.0]]
    # Both factors clamped first: every product of a negative factor is 0.
    assert recam_class_weights(w1, w2, "product", "factors").tolist() == [[0.0, 0.0, 0.0]]
    # "product": the product itself, clamped later like the sigmoid branch's weights.
    assert recam_class_weights(w1, w2, "product", "product").tolist() == [[-3.0, 2.0, -2.0]]
    assert recam_class_weights(w1, w2, "mask_head", "none").tolist() == w1.tolist()
    assert recam_class_weights(w1, w2, "reactivation", "none").tolist() == w2.tolist()
    with pytest.raises(ValueError, match="unknown ReCAM map"):
        recam_class_weights(w1, w2, "sum", "none")


# -- the recam branch --------------------------------------------------------------
@pytest.mark.parametrize("clamp", ["none", "factors", "product"])
def test_recam_branch_maps_equal_the_hand_computed_product(clamp):
    torch.manual_seed(1)
    model = CAMModel(torchvision.models.resnet18(num_classes=5), "layer4", "fc")
    model.add_sigmoid_branch("clone").add_reactivation_head(seed=3, clamp=clamp)
    with torch.no_grad():
        model.fc2.weight.normal_()
        model.fc_re.weight.normal_()
    model.eval()
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    out = compute_cams_per_branch(model, images, targets, ["cam", "gradcam"],
                                  ["softmax", "sigmoid", "recam"])["recam"]
    kept = {}
    handle = model.feature_module.register_forward_hook(lambda m, i, o: kept.setdefault("A", o))
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    a = kept["A"]
    w1 = model.fc2.weight.detach().clamp_min(0)  # the sigmoid branch's clamped weights
    w2 = model.fc_re.weight.detach()
    weight = (w2.clamp_min(0) * w1) if clamp == "factors" else w2 * w1
    channel = weight[targets]
    if clamp == "product":
        channel = channel.clamp_min(0)
    expected = torch.einsum("bk,bkhw->bhw", channel, a)
    assert torch.allclose(out.maps["cam"], expected, atol=1e-5)
    # GAP + linear head: Grad-CAM's weights are the class weights / Z.
    z = a.shape[2] * a.shape[3]
    assert torch.allclose(out.maps["gradcam"], expected / z, atol=1e-6)
    # The branch's logits are those class weights on the pooled features.
    assert torch.allclose(logits["logits_recam"], a.mean((2, 3)) @ weight.t(), atol=1e-5)
    # The other branches are unchanged by the third one.
    fc = model.model.fc
    assert torch.allclose(logits["logits"], F.linear(a.mean((2, 3)), fc.weight, fc.bias),
                          atol=1e-5)


# -- seed mIoU ---------------------------------------------------------------------
def _write_masks(root, labels):
    os.makedirs(root / "masks", exist_ok=True)
    rows, ids = [], []
    for index, label in enumerate(labels):
        image_id = f"img_{index}.png"
        Image.fromarray(label.astype(np.uint8), "L").save(root / "masks" / f"{index}.png")
        rows.append(f"{image_id},masks/{index}.png")
        ids.append(image_id)
    meta = root / "meta"
    os.makedirs(meta, exist_ok=True)
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "segmentation.txt").write_text("".join(f"{r}\n" for r in rows))
    return configure_metadata(str(meta)), ids


def _reference_confusion(labels, maps, keys, threshold, classes):
    """ReCAM's evaluation, independently: pad with the threshold in float32,
    argmax, map to class ids, confusion over pixels not 255."""
    confusion = np.zeros((classes + 1, classes + 1), np.int64)
    for label, m, k in zip(labels, maps, keys):
        padded = np.concatenate([np.full((1, *label.shape), threshold, np.float32), m])
        predicted = np.concatenate([[0], np.asarray(k, np.int64) + 1])[padded.argmax(0)]
        for truth, pred in zip(label.ravel(), predicted.ravel()):
            if truth != IGNORE_LABEL:
                confusion[truth, pred] += 1
    return confusion


def _miou(confusion):
    diag = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * np.nanmean(diag / union)


def test_seed_miou_against_an_independent_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    classes = 6
    labels, maps, keys = [], [], []
    for _ in range(7):
        h, w = rng.integers(5, 14, 2)
        present = sorted(rng.choice(classes, int(rng.integers(0, 4)), replace=False).tolist())
        label = rng.choice([0, *[c + 1 for c in present]], (h, w)).astype(np.int64)
        label[rng.random((h, w)) < 0.15] = IGNORE_LABEL
        m = rng.random((len(present), h, w)).astype(np.float32)
        if present:  # ties with the threshold and between classes occur
            m[:, 0, 0] = np.float32(0.21)
            m[:, -1, -1] = m[0, -1, -1]
        labels.append(label)
        maps.append(m)
        keys.append(present)
    metadata, ids = _write_masks(tmp_path, labels)
    evaluator = SegmentationEvaluator(metadata, "X", "train", str(tmp_path), classes, 0.21)
    for image_id, m, k in zip(ids, maps, keys):
        evaluator.accumulate(m, k, image_id)
    summary = evaluator.summary()
    for t in (0.0, 0.21, 0.37, 0.5, 0.99):
        index = summary["curves"]["thresholds"].index(float(np.float32(t)))
        expected = _miou(_reference_confusion(labels, maps, keys, np.float32(t), classes))
        assert summary["curves"]["mIoU"][index] == pytest.approx(expected, abs=1e-9), t
    assert summary["mIoU"] == pytest.approx(
        _miou(_reference_confusion(labels, maps, keys, np.float32(0.21), classes)), abs=1e-9)
    assert summary["mIoU (best t, chosen on GT)"] == max(summary["curves"]["mIoU"])
    # Counts add up across processes.
    half = SegmentationEvaluator(metadata, "X", "train", str(tmp_path), classes, 0.21)
    other = SegmentationEvaluator(metadata, "X", "train", str(tmp_path), classes, 0.21)
    for n, (image_id, m, k) in enumerate(zip(ids, maps, keys)):
        (half if n % 2 else other).accumulate(m, k, image_id)
    half.merge(other)
    assert half.summary()["curves"] == summary["curves"]


def test_seed_maps_with_flips_are_mirror_symmetric():
    torch.manual_seed(2)
    model = CAMModel(torchvision.models.resnet18(num_classes=4), "layer4", "fc").eval()
    image = torch.randn(1, 3, 40, 56)
    maps = seed_maps(model, image, [0, 2], ["cam"], ["softmax"], scales=(1.0, 0.5))
    mirrored = seed_maps(model, image.flip(-1), [0, 2], ["cam"], ["softmax"], scales=(1.0, 0.5))
    a, b = maps[("cam", "softmax")], mirrored[("cam", "softmax")]
    assert a.shape == (2, 40, 56) and float(a.amax()) <= 1.0
    assert torch.allclose(a, b.flip(-1), atol=1e-5)


def test_recam_style_rescaling_is_pils_bicubic_resize_of_the_8bit_image():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(noise).resize((12, 9)).resize((50, 37), Image.BICUBIC))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    as_tensor = lambda a: ((torch.tensor(a).permute(2, 0, 1)[None].float() / 255  # noqa
                            - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
                                1, 3, 1, 1))
    image = as_tensor(pixels)
    for scale in (0.5, 1.5, 2.0):
        # ReCAM's pil_rescale: round(H * scale), PIL's bicubic on the uint8 image.
        size = (int(np.round(37 * scale)), int(np.round(50 * scale)))
        pil = np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.BICUBIC))
        ours = seeds_module._rescale(image, scale, "recam", (mean, std))
        assert ours.shape[-2:] == size
        grey = (ours * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
                ) * 255
        difference = (grey[0].permute(1, 2, 0) - torch.tensor(pil).float()).abs()
        # PIL's fixed-point filter weights: a few pixels one or two grey levels apart.
        assert float(difference.max()) <= 2.0 + 1e-3, scale
        assert float((difference > 0.5).float().mean()) < 0.005, scale


def test_recam_style_seed_maps_against_a_hand_computation():
    """ReCAM's make_recam: each scale's ReLU'd map (flipped copy flipped back and
    added) resized bilinearly to ceil(H/16)*16 x ceil(W/16)*16, summed, cropped
    to H x W, divided by its maximum + 1e-5."""
    torch.manual_seed(3)
    model = CAMModel(torchvision.models.resnet18(num_classes=4), "layer4", "fc").eval()
    image = torch.randn(1, 3, 37, 50)
    scales, classes = (1.0, 0.5, 1.5), [1, 3]
    normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    maps = seed_maps(model, image, classes, ["cam"], ["softmax"], scales, resize="recam",
                     normalization=normalization)[("cam", "softmax")]
    weight = model.model.fc.weight.detach()[classes]
    features = {}
    model.model.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("A", o))
    expected = torch.zeros(2, 48, 64)  # ceil(37 / 16) * 16, ceil(50 / 16) * 16
    with torch.no_grad():
        for scale in scales:
            x = image if scale == 1.0 else seeds_module._rescale(image, scale, "recam",
                                                                 normalization)
            model(torch.cat([x, x.flip(-1)]))
            cams = F.relu(torch.einsum("ck,bkhw->bchw", weight, features["A"]))
            cam = cams[0] + cams[1].flip(-1)
            expected += F.interpolate(cam[None], size=(48, 64), mode="bilinear",
                                      align_corners=False)[0]
    expected = expected[:, :37, :50]
    expected /= expected.amax((1, 2), keepdim=True) + 1e-5
    assert torch.allclose(maps, expected, atol=1e-5)
    # The default resizes straight to the image: another map.
    direct = seed_maps(model, image, classes, ["cam"], ["softmax"], scales)[("cam", "softmax")]
    assert float((direct - maps).abs().max()) > 1e-3


def test_seed_maps_check_the_model_once_whatever_the_image_sizes(monkeypatch):
    import wsol.cams.check as check
    calls = []
    original = check._check_layer_and_branch
    monkeypatch.setattr(check, "_check_layer_and_branch",
                        lambda *a: calls.append(1) or original(*a))
    model = CAMModel(torchvision.models.resnet18(num_classes=4), "layer4", "fc").eval()
    for height, width in ((32, 40), (48, 35), (64, 64)):
        seed_maps(model, torch.randn(1, 3, height, width), [0, 1], ["cam", "gradcam"],
                  ["softmax"], (1.0, 0.5))
    assert len(calls) == 1


# -- multi-label metadata and VOC --------------------------------------------------
def test_multi_label_metadata_refuses_a_repeated_class(tmp_path):
    (tmp_path / "class_labels.txt").write_text("a.jpg,3\na.jpg,5\nb.jpg,1\na.jpg,3\n")
    with pytest.raises(MetadataError, match=r"class_labels.txt:4: class 3 of 'a.jpg' is listed "
                                            r"again \(first on line 1\)"):
        get_multi_labels(configure_metadata(str(tmp_path)))
    (tmp_path / "class_labels.txt").write_text("a.jpg,3\na.jpg,5\nb.jpg,1\n")
    assert get_multi_labels(configure_metadata(str(tmp_path))) == {"a.jpg": [3, 5],
                                                                  "b.jpg": [1]}


def _fake_voc(root):
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "SegmentationClass",
                   "ImageSets/Segmentation"):
        os.makedirs(voc / folder, exist_ok=True)
    objects = {"2007_000032": ["aeroplane", "person"], "2007_000039": ["tvmonitor"],
               "2008_000002": ["cat", "cat", "dog"], "2008_000003": ["person"]}
    for image_id, names in objects.items():
        Image.new("RGB", (30, 20), (5, 5, 5)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        parts = "".join(f"<object><name>{n}</name><part><name>head</name></part></object>"
                        for n in names)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{parts}</annotation>")
        Image.fromarray(np.zeros((20, 30), np.uint8), "L").save(
            voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_000002\n")
    (root / "train_aug.txt").write_text("2007_000032\n2007_000039\n2008_000003\n")
    return voc


def test_prepare_voc_on_a_fake_devkit(tmp_path):
    voc = _fake_voc(tmp_path)
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "prepare_voc.py"), "--voc_root",
         str(voc), "--train_aug_list", str(tmp_path / "train_aug.txt"), "--metadata_root",
         str(tmp_path / "metadata")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    meta = tmp_path / "metadata" / "VOC2012"
    assert (meta / "train_aug" / "image_ids.txt").read_text().split() == [
        "JPEGImages/2007_000032.jpg", "JPEGImages/2007_000039.jpg", "JPEGImages/2008_000003.jpg"]
    # Ids stay strings; labels 0-based in VOC's order; part names ignored.
    assert (meta / "train" / "class_labels.txt").read_text().split() == [
        "JPEGImages/2007_000032.jpg,0", "JPEGImages/2007_000032.jpg,14",
        "JPEGImages/2007_000039.jpg,19"]
    assert (meta / "val" / "class_labels.txt").read_text().split() == [
        "JPEGImages/2008_000002.jpg,7", "JPEGImages/2008_000002.jpg,11"]
    assert (meta / "val" / "segmentation.txt").read_text().split() == [
        "JPEGImages/2008_000002.jpg,SegmentationClass/2008_000002.png"]
    assert (meta / "train" / "image_sizes.txt").read_text().split()[0] == \
        "JPEGImages/2007_000032.jpg,30,20"
    assert not (meta / "train_aug" / "segmentation.txt").exists()
    # A train_aug list holding a val image is refused.
    (tmp_path / "bad.txt").write_text("2008_000002\n")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "prepare_voc.py"), "--voc_root",
         str(voc), "--train_aug_list", str(tmp_path / "bad.txt"), "--metadata_root",
         str(tmp_path / "m2")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "holds 1 val id(s), e.g. 2008_000002" in done.stderr


# -- training and the pipeline on SYNTH_ML -----------------------------------------
@pytest.fixture(scope="module")
def synth_ml(tmp_path_factory):
    from wsol.data.synth_ml import generate_synth_ml
    root = tmp_path_factory.mktemp("synth_ml")
    generate_synth_ml(str(root / "dataset"), str(root / "metadata"), image_size=48,
                      train_images=24, val_images=4, test_images=6, num_classes=5)
    return root


def ml_argv(root, name, *extra):
    return ["--dataset_name", "SYNTH_ML", "--num_classes", "5", "--experiment_name", name,
            "--architecture", "resnet18", "--data_root", str(root / "dataset"),
            "--metadata_root", str(root / "metadata"), "--root", str(root / "runs"),
            "--resize_size", "40", "--crop_size", "32", "--batch_size", "8", "--workers", "0",
            "--lr", "0.02", "--split", "test", "--method", "cam,gradcam", *extra]


def test_recam_with_lambda_zero_trains_b2_bit_for_bit(synth_ml):
    run = lambda *a: main.run(config.get_configs(ml_argv(synth_ml, *a)))  # noqa: E731
    run("vanilla", "--epochs", "1", "--skip_eval")
    vanilla = str(synth_ml / "runs" / "vanilla" / "last_checkpoint.pth.tar")
    run("b2", "--epochs", "2", "--ft_ckpt", vanilla, "--skip_eval")
    run("recam0", "--epochs", "2", "--ft_ckpt", vanilla, "--recam", "--recam_weight", "0",
        "--skip_eval")
    b2 = load_checkpoint_file(str(synth_ml / "runs" / "b2" / "last_checkpoint.pth.tar"))
    recam = load_checkpoint_file(str(synth_ml / "runs" / "recam0" / "last_checkpoint.pth.tar"))
    assert set(recam["state_dict"]) - set(b2["state_dict"]) == {"fc_re.weight"}
    for key, value in b2["state_dict"].items():
        assert torch.equal(value, recam["state_dict"][key]), key
    # With lambda 1 the branch moves, and only the branch and fc_re do.
    run("recam1", "--epochs", "1", "--ft_ckpt", vanilla, "--recam", "--skip_eval")
    one = load_checkpoint_file(str(synth_ml / "runs" / "recam1" / "last_checkpoint.pth.tar"))
    base = load_checkpoint_file(vanilla)["state_dict"]
    for key, value in base.items():
        assert torch.equal(value, one["state_dict"][key]), key
    assert not torch.equal(one["state_dict"]["fc2.weight"], base["fc.weight"])


def test_one_pass_scores_three_branches_and_evaluation_py_agrees(synth_ml, capsys):
    vanilla = str(synth_ml / "runs" / "v3" / "last_checkpoint.pth.tar")
    main.run(config.get_configs(ml_argv(synth_ml, "v3", "--epochs", "1", "--skip_eval")))
    capsys.readouterr()
    results = main.run(config.get_configs(ml_argv(
        synth_ml, "r3", "--epochs", "1", "--ft_ckpt", vanilla, "--recam",
        "--cam_branch", "softmax,sigmoid,recam", "--save_scoremaps", "--tta_scales", "1.0,0.5",
        "--seed_threshold", "0.3")))
    table = capsys.readouterr().out.strip()
    assert [(r["method"], r["branch"]) for r in results["rows"]] == [
        ("cam", "softmax"), ("gradcam", "softmax"), ("cam", "sigmoid"),
        ("gradcam", "sigmoid"), ("cam", "recam"), ("gradcam", "recam")]
    for row in results["rows"]:
        assert 0 <= row["mIoU"] <= 100 and row["num_images"] == 6
        assert row["mIoU (best t, chosen on GT)"] >= row["mIoU"]
    assert "mIoU (t=0.3)" in table.splitlines()[0]
    # --eval_only rebuilds the re-activation head from the checkpoint.
    again = main.run(config.get_configs(ml_argv(
        synth_ml, "r3", "--eval_only", "--cam_branch", "softmax,sigmoid,recam",
        "--tta_scales", "1.0,0.5", "--seed_threshold", "0.3")))
    assert [r["mIoU"] for r in again["rows"]] == [r["mIoU"] for r in results["rows"]]
    capsys.readouterr()
    # The saved seed maps, scored without a model, at the run's background score.
    saved = synth_ml / "seeds.json"
    assert evaluation.main(["--dataset_name", "SYNTH_ML", "--root", str(synth_ml / "runs"),
                            "--experiment_name", "r3", "--metadata_root",
                            str(synth_ml / "metadata"), "--mask_root",
                            str(synth_ml / "dataset"), "--split", "test",
                            "--output_json", str(saved)]) == 0
    scored = {(r["method"], r["branch"]): r for r in json.loads(saved.read_text())["rows"]}
    for row in results["rows"]:
        other = scored[(row["method"], row["branch"])]
        for key in ("mIoU", "mIoU (best t, chosen on GT)", "best t", "threshold",
                    "clamp_rule"):
            assert other[key] == row[key], key
    assert "seed_threshold 0.3: the run's" in capsys.readouterr().out


def test_recam_branch_needs_the_head(synth_ml):
    with pytest.raises(config.ConfigError, match="--cam_branch recam needs the re-activation"):
        config.get_configs(ml_argv(synth_ml, "x", "--cam_branch", "softmax,recam"))
    with pytest.raises(config.ConfigError, match="--split train is for the seed evaluation"):
        config.get_configs(["--dataset_name", "CUB", "--split", "train"])


def test_recam_augment_and_poly_schedule(synth_ml):
    from wsol.data.loaders import get_transforms
    transform = get_transforms("train", 40, 32, augment="recam", resize_long=(20, 60))
    torch.manual_seed(0)
    out = transform(Image.new("RGB", (48, 30), (200, 10, 10)))
    assert out.shape == (3, 32, 32)
    main.run(config.get_configs(ml_argv(
        synth_ml, "poly", "--epochs", "2", "--lr_schedule", "poly", "--train_augment", "recam",
        "--resize_long", "24", "48", "--skip_eval", "--momentum", "1e-4", "--nesterov", "FALSE")))
    schedule = json.loads(
        (synth_ml / "runs" / "poly" / "lr_schedule.json").read_text())
    steps = 3  # 24 images, batch 8
    first = schedule["groups"][0]["lr"]
    assert first[1] == pytest.approx(first[0] * (1 - steps / (2 * steps)) ** 0.9)


# Stands in for python: records each command line (one JSON list per line), so that the
# test parses them in its own process rather than importing torch once per command.
STUB = '''import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
'''


@pytest.mark.parametrize("script", ["run_voc.sh", "run_recam.sh"])
def test_the_recam_scripts_pass_flags_main_py_accepts(tmp_path, script):
    (tmp_path / "stub.py").write_text(STUB)
    log = tmp_path / "commands.jsonl"
    env = {**os.environ, "PYTHON": f"{sys.executable} {tmp_path / 'stub.py'}",
           "PYTHONPATH": REPO, "ROOT": str(tmp_path / "runs"), "STUB_LOG": str(log)}
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    parsed = [config.get_configs(argv[1:]) for argv in commands if argv[0] == "main.py"]
    assert [a.runtime.experiment_name for a in parsed] == [
        "cam_vanilla", "cam_b2", "recam_vanilla", "recam_b2"]
    assert [a.model.recam for a in parsed] == [False, False, True, True]
    assert commands[-1][0] == "scripts/recam_table.py"
