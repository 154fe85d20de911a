"""``python tests/fault_driver.py <main.py flags>``: main.main with one fault
injected, described by the FAULT environment variable (JSON):

- ``{"kind": "signal", "step": n, "signal": "SIGTERM"}``: the process signals
  itself during training step n (1-based, counted over the whole run);
- ``{"kind": "ctrl_c", "step": n}``: KeyboardInterrupt at step n;
- ``{"kind": "signal_in_save", "signal": ...}``: during the first checkpoint save;
- ``{"kind": "signal_in_eval", "signal": ...}``: during the first evaluation batch;
- ``{"kind": "disk_full", "on": "checkpoint"|"json", "after": n}``: the disk
  is full after n successful writes of that kind;
- ``{"kind": "kill_worker"}``: a data-loading worker is killed (SIGKILL, as
  the out-of-memory killer does);
- ``{"kind": "stop_rank", "rank": r, "step": n}``: rank r stops itself
  (SIGSTOP, a stuck node) at step n.
"""
import errno
import json
import os
import signal
import sys

import torch

import main
import wsol.pipeline as pipeline
import wsol.results
import wsol.runtime.training as training
from wsol.data.loaders import WSOLImageLabelDataset

fault = json.loads(os.environ.get("FAULT") or "{}")
kind = fault.get("kind")
count = {"steps": 0, "saves": 0, "json": 0, "eval": 0}


def _signal(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, name))


original_loss = training.training_loss


def loss(*args, **kwargs):
    count["steps"] += 1
    if count["steps"] == fault.get("step"):
        if kind == "signal":
            _signal(fault["signal"])
        elif kind == "ctrl_c":
            raise KeyboardInterrupt
        elif kind == "stop_rank" and int(os.environ.get("RANK", "0")) == fault["rank"]:
            _signal("SIGSTOP")
    return original_loss(*args, **kwargs)


training.training_loss = loss

original_save = torch.save


def save(obj, f, *args, **kwargs):
    count["saves"] += 1
    if kind == "signal_in_save" and count["saves"] == 1:
        _signal(fault["signal"])
    if kind == "disk_full" and fault["on"] == "checkpoint" and count["saves"] > fault["after"]:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")
    return original_save(obj, f, *args, **kwargs)


torch.save = save


class _FullFile:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def open_json(path, *args, **kwargs):
    f = open(path, *args, **kwargs)
    if kind == "disk_full" and fault["on"] == "json" and str(path).endswith(".json.tmp"):
        count["json"] += 1
        if count["json"] > fault["after"]:
            return _FullFile(f)
    return f


wsol.results.open = open_json

original_cams = pipeline.compute_cams_per_branch


def cams(*args, **kwargs):
    count["eval"] += 1
    if kind == "signal_in_eval" and count["eval"] == 1:
        _signal(fault["signal"])
    return original_cams(*args, **kwargs)


pipeline.compute_cams_per_branch = cams

original_item = WSOLImageLabelDataset.__getitem__


def item(self, key):
    if kind == "kill_worker" and torch.utils.data.get_worker_info() is not None:
        _signal("SIGKILL")
    return original_item(self, key)


WSOLImageLabelDataset.__getitem__ = item

sys.exit(main.main(sys.argv[1:]))
