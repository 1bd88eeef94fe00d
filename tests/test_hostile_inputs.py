"""Hostile and careless inputs to every command and every file kind: each is refused with exit status 2, one
line on stderr naming the problem, no traceback, no advice to load unsafely, and no code from a data file runs.

Every file here is built from scratch in the test (no binary files in the repository): crafted pickles whose
`__reduce__` would create a sentinel file, deeply nested JSON and TOML, NaN and negative latencies, symlinks to
/dev/zero and to folders, truncated and binary files, sparse files of many GiB. The CLI runs in-process
(`edgenas.cli.main`), so the whole suite takes seconds.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgenas.cli import main
from edgenas.space import SearchSpace

SPACE = SearchSpace.preset("tiny")
DEEP = 100_000  # levels of nesting: far past any recursion limit


# ---- artifacts made once: a valid checkpoint, predictors and a table to spoil ------------------------------

@dataclass
class Artifacts:
    root: Path
    checkpoint: Path
    state: dict
    accuracy: Path
    latency: Path  # a valid latency predictor for the built-in device "local"
    table_predictor: dict  # a valid table predictor's JSON, to spoil

    def arch(self) -> str:
        return json.dumps(SPACE.smallest().to_dict())


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Artifacts:
    import torch

    from edgenas.accuracy.predictor import AccuracyPredictor
    from edgenas.latency.blocks import block_index
    from edgenas.latency.predictors import MacsPredictor, TablePredictor
    from edgenas.supernet import Supernet
    from edgenas.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    state = {"space": SPACE.to_dict(), "model": Supernet(SPACE).state_dict(), "dataset": "digits",
             "dataset_fingerprint": "0" * 32, "seed": 0, "config": {}, "complete": True}
    checkpoint = save_checkpoint(root / "supernet.pt", state)
    rng = np.random.default_rng(0)
    sizes = [SPACE.encoding_size, 8, 1]
    weights = [rng.normal(0, 0.1, (a, b)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    biases = [np.full(b, 0.5, np.float32) for b in sizes[1:]]
    accuracy = AccuracyPredictor(SPACE, weights, biases).save(root / "accuracy_predictor.npz")
    ident = dict(device="local", runtime="onnxruntime", precision="fp32", space=SPACE)
    latency = MacsPredictor(weights=[0.2, 0.01], **ident).save(root / "latency.json")
    table = TablePredictor(table={k: 0.05 for k in block_index(SPACE).keys}, **ident).to_dict()
    return Artifacts(root, checkpoint, {k: v for k, v in state.items()}, accuracy, latency, table)


@dataclass
class Ctx:
    tmp: Path
    art: Artifacts
    sentinel: Path

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path

    def link(self, name: str, target: str | Path) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path

    def sparse(self, name: str, size: int) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        return path


@pytest.fixture
def ctx(tmp_path, art, monkeypatch) -> Ctx:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGENAS_LATENCY_TABLES", str(work / "latency_tables"))
    monkeypatch.setenv("EDGENAS_STORE", str(work / "store.sqlite"))
    monkeypatch.delenv("EDGENAS_DEBUG", raising=False)
    return Ctx(work, art, tmp_path / "SENTINEL")


# ---- payloads --------------------------------------------------------------------------------------------

class _Call:
    """Pickles as a call of `fn(*args)`: what an attacker puts in a data file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(sentinel: Path) -> dict[str, object]:
    return {
        "os.system": _Call(os.system, f"touch {sentinel}"),
        "builtins.exec": _Call(exec, f"open({str(sentinel)!r}, 'w').close()"),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(sentinel)]),
        "builtins.open": _Call(open, str(sentinel), "w"),
        "numpy.save": _Call(np.save, str(sentinel), np.zeros(1)),  # an allowed module, but not an allowed name
    }


def deep_json(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


def deep_toml(levels: int = DEEP) -> str:
    return "x = " + "[" * levels + "]" * levels + "\n"


# ---- datasets ------------------------------------------------------------------------------------------------

def cifar_batch(n: int = 20, extra: dict | None = None, **changes) -> dict:
    """A CIFAR-10 batch as the real ones are (bytes keys); `changes` replace fields, `extra` adds keys."""
    d = {b"batch_label": b"training batch 1 of 5", b"data": np.zeros((n, 3072), np.uint8),
         b"labels": [i % 10 for i in range(n)], b"filenames": [b"x.png"] * n}
    d.update({k.encode(): v for k, v in changes.items()})
    d.update(extra or {})
    return d


def cifar_folder(ctx: Ctx, *, train: bytes | None = None, test: bytes | None = None, meta: bytes | None = None) -> str:
    folder = ctx.tmp / "cifar"
    ok = pickle.dumps(cifar_batch(), protocol=2)
    ctx.write("cifar/data_batch_1", ok if train is None else train)
    ctx.write("cifar/test_batch", ok if test is None else test)
    if meta is not None:
        ctx.write("cifar/batches.meta", meta)
    return f"cifar10:{folder}"


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def idx_folder(ctx: Ctx, **files: bytes) -> str:
    good = {"train-images-idx3-ubyte": idx_bytes(np.zeros((20, 8, 8))),
            "train-labels-idx1-ubyte": idx_bytes(np.arange(20) % 2),
            "t10k-images-idx3-ubyte": idx_bytes(np.zeros((10, 8, 8))),
            "t10k-labels-idx1-ubyte": idx_bytes(np.arange(10) % 2)}
    for name, data in {**good, **{k.replace("_", "-"): v for k, v in files.items()}}.items():
        ctx.write(f"idx/{name}", data)
    return f"idx:{ctx.tmp / 'idx'}"


def swap(ctx: Ctx, name: str, by: str | bytes) -> None:
    """Replace the file `name` of a dataset by a folder, a link to /dev/zero, or other bytes."""
    path = ctx.tmp / name
    path.unlink()
    if by == "folder":
        path.mkdir()
    elif by == "/dev/zero":
        path.symlink_to(by)
    else:
        path.write_bytes(by)


def train(ctx: Ctx, spec: str) -> list[str]:
    return ["train", "--dataset", spec, "--out", str(ctx.tmp / "run"), "--steps", "1", "--no-progress"]


CASES: dict[str, tuple] = {}


def case(name: str, *, runs_code: bool = False):
    """Register a hostile case: `fn(ctx)` builds it and returns (argv, a substring the error line must hold)."""
    def wrap(fn):
        assert name not in CASES
        CASES[name] = (fn, runs_code)
        return fn
    return wrap


for _name in ("os.system", "builtins.exec", "subprocess.Popen", "builtins.open", "numpy.save"):
    @case(f"cifar10 batch calling {_name}", runs_code=True)
    def _cifar_exploit(ctx, _name=_name):
        batch = cifar_batch(extra={b"x": payloads(ctx.sentinel)[_name]})
        return train(ctx, cifar_folder(ctx, train=pickle.dumps(batch, protocol=2))), "data_batch_1"


@case("cifar10 test batch as a bare os.system pickle", runs_code=True)
def _(ctx):
    return train(ctx, cifar_folder(ctx, test=pickle.dumps(payloads(ctx.sentinel)["os.system"]))), "test_batch"


@case("cifar10 metadata calling builtins.exec", runs_code=True)
def _(ctx):
    meta = pickle.dumps({b"label_names": [b"a"] * 10, b"x": payloads(ctx.sentinel)["builtins.exec"]})
    return train(ctx, cifar_folder(ctx, meta=meta)), "batches.meta"


@case("cifar10 batch with an object array holding a call", runs_code=True)
def _(ctx):
    obj = np.array([payloads(ctx.sentinel)["os.system"], 1], dtype=object)
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(data=obj)))), "data_batch_1"


@case("cifar10 batch empty file")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=b"")), "data_batch_1"


@case("cifar10 batch truncated")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch())[:500])), "data_batch_1"


@case("cifar10 batch of binary garbage")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=np.random.default_rng(1).bytes(4096))), "data_batch_1"


@case("cifar10 batch is a list, not a dict")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps([1, 2, 3]))), "data_batch_1"


@case("cifar10 batch with rows of the wrong size")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(data=np.zeros((20, 100), np.uint8))))), "3072"


@case("cifar10 batch with a label out of range")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(labels=[42] * 20)))), "labels"


@case("cifar10 batch with NaN labels")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(labels=[float("nan")] * 20)))), "labels"


@case("cifar10 batch with float pixels")
def _(ctx):
    data = np.full((20, 3072), np.inf)
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(data=data)))), "data"


@case("cifar10 batch with no images")
def _(ctx):
    empty = cifar_batch(0)
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(empty))), "no images"


@case("cifar10 batch with more labels than images")
def _(ctx):
    return train(ctx, cifar_folder(ctx, train=pickle.dumps(cifar_batch(labels=[1] * 21)))), "labels"


@case("cifar10 batch nested 100 000 lists deep")
def _(ctx):
    # pickle.dumps itself would recurse: write the opcodes by hand, DEEP empty lists each appended to the last.
    body = b"\x80\x02" + b"]" * DEEP + b"a" * (DEEP - 1) + b"."
    return train(ctx, cifar_folder(ctx, train=body)), "data_batch_1"


@case("cifar10 batch is a folder")
def _(ctx):
    spec = cifar_folder(ctx)
    swap(ctx, "cifar/data_batch_1", "folder")
    return train(ctx, spec), "folder"


@case("cifar10 batch is a symlink to /dev/zero")
def _(ctx):
    spec = cifar_folder(ctx)
    swap(ctx, "cifar/data_batch_1", "/dev/zero")
    return train(ctx, spec), "not a regular file"


@case("cifar10 batch is a sparse 5 GiB file")
def _(ctx):
    spec = cifar_folder(ctx)
    ctx.sparse("cifar/data_batch_1", 5 << 30)
    return train(ctx, spec), "larger than"


@case("cifar10 path is a file, not a folder")
def _(ctx):
    return train(ctx, f"cifar10:{ctx.write('cifar.tar.gz', b'x')}"), "not a folder"


@case("cifar10 metadata with 3 class names")
def _(ctx):
    return train(ctx, cifar_folder(ctx, meta=pickle.dumps({b"label_names": [b"a", b"b", b"c"]}))), "label_names"


@case("idx images with zero images")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=idx_bytes(np.zeros((0, 28, 28))),
                                 train_labels_idx1_ubyte=idx_bytes(np.zeros(0)))), "no images"


@case("idx images with a bad magic number")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=b"\x12\x34\x56\x78" + bytes(100))), "magic"


@case("idx images truncated in the header")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=bytes([0, 0, 8, 3, 0, 0]))), "truncated"


@case("idx images shorter than the header says")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=idx_bytes(np.zeros((20, 8, 8)))[:-50])), "header says"


@case("idx header claiming 2^32 x 2^32 x 2^32 images")
def _(ctx):
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(64)
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=data)), "header says"


@case("idx header with 0 dimensions")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_images_idx3_ubyte=bytes([0, 0, 8, 0]))), "dimensions"


def idx_gz(ctx: Ctx, data: bytes) -> str:
    """The IDX folder with its training images gzipped as `data`."""
    spec = idx_folder(ctx)
    (ctx.tmp / "idx" / "train-images-idx3-ubyte").rename(ctx.tmp / "idx" / "train-images-idx3-ubyte.gz")
    (ctx.tmp / "idx" / "train-images-idx3-ubyte.gz").write_bytes(data)
    return spec


case("idx gz file that is not gzip")(lambda ctx: (train(ctx, idx_gz(ctx, b"not gzip at all")), "gzip"))
case("idx gz file truncated")(lambda ctx: (train(ctx, idx_gz(ctx, gzip.compress(bytes(2000))[:30])), "truncated"))


@case("idx images and labels of different counts")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_labels_idx1_ubyte=idx_bytes(np.arange(7) % 2))), "do not match"


@case("idx labels of one class only")
def _(ctx):
    return train(ctx, idx_folder(ctx, train_labels_idx1_ubyte=idx_bytes(np.zeros(20)),
                                 t10k_labels_idx1_ubyte=idx_bytes(np.zeros(10)))), "2 classes"


@case("idx images symlink to /dev/zero")
def _(ctx):
    spec = idx_folder(ctx)
    swap(ctx, "idx/train-images-idx3-ubyte", "/dev/zero")
    return train(ctx, spec), "not a regular file"


@case("folder dataset with a garbage .png")
def _(ctx):
    for c in ("a", "b"):
        ctx.write(f"imgs/{c}/1.png", b"\x89PNG garbage")
    return train(ctx, f"folder:{ctx.tmp / 'imgs'}"), "1.png"


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


@case("folder dataset with a folder named x.png")
def _(ctx):
    ctx.write("imgs/a/1.png", png())
    (ctx.tmp / "imgs" / "b" / "x.png").mkdir(parents=True)
    return train(ctx, f"folder:{ctx.tmp / 'imgs'}"), "x.png"


@case("folder dataset with a .png symlink to /dev/zero")
def _(ctx):
    ctx.link("imgs/a/1.png", "/dev/zero")
    ctx.link("imgs/b/1.png", "/dev/zero")
    return train(ctx, f"folder:{ctx.tmp / 'imgs'}"), "not a regular file"


@case("folder dataset with one class")
def _(ctx):
    ctx.write("imgs/a/1.png", png())
    return train(ctx, f"folder:{ctx.tmp / 'imgs'}"), "at least 2"


@case("dataset spec empty")
def _(ctx):
    return train(ctx, ""), "empty"


@case("dataset spec of an unknown kind")
def _(ctx):
    return train(ctx, "mnist:/data"), "unknown dataset"


@case("dataset shapes of 100 000 pixels a side")
def _(ctx):
    return train(ctx, "shapes:image_size=100000"), "image_size"


@case("dataset shapes with a negative sample count")
def _(ctx):
    return train(ctx, "shapes:samples=-5"), "samples"


# ---- checkpoints ---------------------------------------------------------------------------------------------

def ev(ckpt: Path | str, *extra: str) -> list[str]:
    return ["eval", "--supernet", str(ckpt), *extra]


def spoiled_checkpoint(ctx: Ctx, **changes) -> Path:
    import torch

    state = {"format": "edgenas-supernet", "version": 1, **ctx.art.state}
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    path = ctx.tmp / "bad.pt"
    torch.save(state, path)
    return path


for _name in ("os.system", "builtins.exec", "subprocess.Popen"):
    @case(f"checkpoint calling {_name}", runs_code=True)
    def _ckpt_exploit(ctx, _name=_name):
        return ev(spoiled_checkpoint(ctx, model=payloads(ctx.sentinel)[_name])), "nothing in it was run"


@case("checkpoint as a bare pickle calling os.system", runs_code=True)
def _(ctx):
    return ev(ctx.write("bad.pt", pickle.dumps(payloads(ctx.sentinel)["os.system"]))), "bad.pt"


@case("checkpoint in torch's legacy format calling os.system", runs_code=True)
def _(ctx):
    import torch

    buf = io.BytesIO()
    torch.save({"x": payloads(ctx.sentinel)["os.system"]}, buf, _use_new_zipfile_serialization=False)
    return ev(ctx.write("bad.pt", buf.getvalue())), "bad.pt"


@case("checkpoint missing")
def _(ctx):
    return ev(ctx.tmp / "nothing.pt"), "does not exist"


@case("checkpoint empty file")
def _(ctx):
    return ev(ctx.write("bad.pt", b"")), "bad.pt"


@case("checkpoint of binary garbage")
def _(ctx):
    return ev(ctx.write("bad.pt", np.random.default_rng(2).bytes(10_000))), "bad.pt"


@case("checkpoint truncated")
def _(ctx):
    data = ctx.art.checkpoint.read_bytes()
    return ev(ctx.write("bad.pt", data[: len(data) // 2])), "bad.pt"


@case("checkpoint lacking its weights")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, model=None)), "missing field model"


@case("checkpoint lacking its dataset")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, dataset=None)), "missing field dataset"


@case("checkpoint whose space has 5 classes but weights for 10")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, space={**SPACE.to_dict(), "num_classes": 5})), "classifier"


@case("checkpoint whose space has wider stages than its weights")
def _(ctx):
    space = SPACE.to_dict()
    space["stages"][0]["width"] = 40
    return ev(spoiled_checkpoint(ctx, space=space)), "shape"


@case("checkpoint with a space that is a string")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, space="tiny")), "space"


@case("checkpoint with a space of a billion parameters")
def _(ctx):
    space = SPACE.to_dict()
    for s in space["stages"]:
        s["width"], s["depths"] = 8192, [32]
    return ev(spoiled_checkpoint(ctx, space=space)), "parameters"


@case("checkpoint with NaN weights")
def _(ctx):
    model = dict(ctx.art.state["model"])
    model["classifier.weight"] = model["classifier.weight"].clone().fill_(float("nan"))
    return ev(spoiled_checkpoint(ctx, model=model)), "NaN"


@case("checkpoint with a seed that is a string")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, seed="zero")), "seed"


@case("checkpoint whose config has bn_batches as a string")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, config={"bn_batches": "eight"})), "bn_batches"


@case("checkpoint with a seed of 10^12")
def _(ctx):
    return ev(spoiled_checkpoint(ctx, seed=10**12)), "seed"


@case("checkpoint of another program (no format tag)")
def _(ctx):
    import torch

    path = ctx.tmp / "other.pt"
    torch.save({"state_dict": {}}, path)
    return ev(path), "not an edgenas supernet checkpoint"


@case("checkpoint is a folder")
def _(ctx):
    (ctx.tmp / "ckpt.pt").mkdir()
    return ev(ctx.tmp / "ckpt.pt"), "folder"


@case("checkpoint symlink to /dev/zero")
def _(ctx):
    return ev(ctx.link("zero.pt", "/dev/zero")), "not a regular file"


@case("checkpoint symlink loop")
def _(ctx):
    ctx.link("loop.pt", ctx.tmp / "loop.pt")
    return ev(ctx.tmp / "loop.pt"), "loop.pt"


# ---- archs ---------------------------------------------------------------------------------------------------

@case("eval --arch empty")
def _(ctx):
    return ev(ctx.art.checkpoint, "--arch", ""), "--arch"


@case("eval --arch of broken JSON")
def _(ctx):
    return ev(ctx.art.checkpoint, "--arch", "{\"resolution\": 32,"), "JSON"


@case("eval --arch nested 100 000 levels")
def _(ctx):
    return ev(ctx.art.checkpoint, "--arch", "{\"a\": " + deep_json() + "}"), "levels"


@case("export --arch file nested 100 000 levels")
def _(ctx):
    path = ctx.write("arch.json", deep_json())
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", str(path), "--formats", "onnx", "--out",
            str(ctx.tmp / "exp")], "arch.json"


@case("eval --arch with NaN resolution")
def _(ctx):
    arch = {**SPACE.smallest().to_dict(), "resolution": float("nan")}
    return ev(ctx.art.checkpoint, "--arch", json.dumps(arch)), "NaN"


@case("eval --arch with an integer of 5000 digits")
def _(ctx):
    return ev(ctx.art.checkpoint, "--arch", "{\"resolution\": " + "9" * 5000 + "}"), "JSON"


@case("eval --arch with a kernel the space lacks")
def _(ctx):
    arch = SPACE.smallest().to_dict()
    arch["kernels"][0] = 4
    return ev(ctx.art.checkpoint, "--arch", json.dumps(arch)), "kernel"


@case("eval --arch with depths as a string")
def _(ctx):
    return ev(ctx.art.checkpoint, "--arch", json.dumps({**SPACE.smallest().to_dict(), "depths": "111"})), "depths"


@case("export --arch file symlink to /dev/zero")
def _(ctx):
    path = ctx.link("arch.json", "/dev/zero")
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", str(path), "--formats", "onnx", "--out",
            str(ctx.tmp / "exp")], "not a regular file"


@case("export --arch file of binary garbage")
def _(ctx):
    path = ctx.write("arch.json", b"\xff\xfe\x00garbage")
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", str(path), "--formats", "onnx", "--out",
            str(ctx.tmp / "exp")], "arch.json"


@case("export --arch file in UTF-16")
def _(ctx):
    path = ctx.write("arch.json", ctx.art.arch().encode("utf-16"))
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", str(path), "--formats", "onnx", "--out",
            str(ctx.tmp / "exp")], "arch.json"


# ---- device files --------------------------------------------------------------------------------------------

SSH_DEVICE = 'kind = "ssh"\nruntime = "onnxruntime"\n[ssh]\nhost = "{host}"\nuser = "{user}"\nidentity_file = "k"\n'


def check(path: Path) -> list[str]:
    return ["devices", "check", str(path)]


for _host in ("pi; rm -rf ~", "$(touch /tmp/x)", "pi`id`", "-oProxyCommand=sh", "pi\\nHost *", "a b"):
    @case(f"device host {_host!r}")
    def _host_case(ctx, _host=_host):
        return check(ctx.write("dev.toml", SSH_DEVICE.format(host=_host, user="pi"))), "host"


LOCAL_DEVICE = 'kind = "local"\nruntime = "onnxruntime"\n'
DEVICE_FILES = {  # what is wrong -> (the file's content, what the error must name)
    "user with shell metacharacters": (SSH_DEVICE.format(host="pi.local", user="pi;reboot"), "user"),
    "file nested 100 000 arrays deep": (deep_toml(), "dev.toml"),
    "file nested in 40 dotted tables": (LOCAL_DEVICE + ".".join(["a"] * 40) + " = 1\n", "levels"),
    "timeout of nan": (LOCAL_DEVICE + "[timeouts]\nconnect = nan\n", "nan"),
    "timeout of inf": (LOCAL_DEVICE + "[timeouts]\nmodel = inf\n", "inf"),
    "threads of -3": (LOCAL_DEVICE + "threads = -3\n", "threads"),
    "port of 70000": (SSH_DEVICE.format(host="pi.local", user="pi") + "port = 70000\n", "port"),
    "work_dir with a line break": (LOCAL_DEVICE + 'work_dir = "/tmp/x\\nrm -rf /"\n', "work_dir"),
    "file of binary garbage": (np.random.default_rng(3).bytes(2000), "dev.toml"),
    "file in UTF-16": (LOCAL_DEVICE.encode("utf-16"), "dev.toml"),
    "file empty": ("", "kind"),
}
for _what, (_data, _expected) in DEVICE_FILES.items():
    case(f"device {_what}")(lambda ctx, d=_data, e=_expected: (check(ctx.write("dev.toml", d)), e))


@case("device file of 2 MiB")
def _(ctx):
    return check(ctx.write("dev.toml", "# " + "x" * (2 << 20) + "\n")), "larger than"


@case("device file symlink to /dev/zero")
def _(ctx):
    return check(ctx.link("dev.toml", "/dev/zero")), "not a regular file"


@case("device file is a folder")
def _(ctx):
    (ctx.tmp / "dev.toml").mkdir()
    return check(ctx.tmp / "dev.toml"), "folder"


@case("device NAME with a slash and dots")
def _(ctx):
    return check("../../etc/passwd.toml"), "passwd"


# ---- run configs ---------------------------------------------------------------------------------------------

RUN = """out = "out"
[train]
dataset = "digits"
[[devices]]
name = "local"
budgets_ms = [2.0]
"""


def run(ctx: Ctx, text: str, *extra: str) -> list[str]:
    return ["run", str(ctx.write("run.toml", text)), *extra]


@case("run config whose last device is unknown (found before training)")
def _(ctx):
    return run(ctx, RUN + '[[devices]]\nname = "no-such-device"\nbudgets_ms = [1.0]\n'), "no-such-device"


@case("run config whose second device runs ONNX Runtime at int8")
def _(ctx):
    return run(ctx, RUN + '[[devices]]\nname = "local"\nprecision = "int8"\nbudgets_ms = [1.0]\n'), "int8"


@case("run config whose dataset folder is missing")
def _(ctx):
    return run(ctx, RUN.replace('"digits"', '"cifar10:nowhere"')), "nowhere"


@case("run config whose checkpoint is garbage")
def _(ctx):
    ctx.write("junk.pt", b"junk")
    return run(ctx, RUN.replace("[train]\n", "[train]\ncheckpoint = \"junk.pt\"\n")), "junk.pt"


RUN_CONFIGS = {  # what is wrong -> (the file's text, what the error must name)
    "nested 100 000 arrays deep": (deep_toml(), "run.toml"),
    "with a NaN budget": (RUN.replace("[2.0]", "[nan]"), "budgets_ms"),
    "with a negative seed": ("seed = -1\n" + RUN, "seed"),
    "with a seed of 10^30": ("seed = 1000000000000000000000000000000\n" + RUN, "seed"),
    "with a batch size that is a string": (RUN.replace("[train]\n", "[train]\nbatch_size = \"32\"\n"), "batch_size"),
}
for _what, (_text, _expected) in RUN_CONFIGS.items():
    case(f"run config {_what}")(lambda ctx, t=_text, e=_expected: (run(ctx, t), e))


@case("run config symlink to /dev/zero")
def _(ctx):
    return ["run", str(ctx.link("run.toml", "/dev/zero"))], "not a regular file"


@case("run config is a folder")
def _(ctx):
    (ctx.tmp / "cfg").mkdir()
    return ["run", str(ctx.tmp / "cfg")], "folder"


@case("run --out names an existing file")
def _(ctx):
    return run(ctx, RUN, "--out", str(ctx.write("taken", "x"))), "existing file"


@case("run with a damaged stages.json in its folder")
def _(ctx):
    ctx.write("out/stages.json", "{not json")
    return run(ctx, RUN), "stages.json"


@case("run config in Latin-1")
def _(ctx):
    return run(ctx, ("# café\n" + RUN).encode("latin-1")), "UTF-8"


# ---- training configs ----------------------------------------------------------------------------------------

def train_cfg(ctx: Ctx, text: str | bytes) -> list[str]:
    return ["train", "--config", str(ctx.write("train.toml", text)), "--out", str(ctx.tmp / "run")]


TRAINING_CONFIGS = {  # what is wrong -> (the file's text, what the error must name)
    "nested 100 000 arrays deep": (deep_toml(), "train.toml"),
    "with batch_size as a string": ('batch_size = "32"\n', "batch_size"),
    "with epochs = inf": ('[[phases]]\nname = "full"\nepochs = inf\n', "inf"),
    "with a negative learning rate": ('[[phases]]\nname = "full"\nlr = -0.1\n', "lr"),
    "with phases as a number": ("phases = 3\n", "phases"),
    "with a seed of 10^20": ("seed = 100000000000000000000\n", "seed"),
}
for _what, (_text, _expected) in TRAINING_CONFIGS.items():
    case(f"training config {_what}")(lambda ctx, t=_text, e=_expected: (train_cfg(ctx, t), e))


@case("train --out names an existing file")
def _(ctx):
    return ["train", "--out", str(ctx.write("taken", "x"))], "existing file"


@case("train --epochs-scale inf")
def _(ctx):
    return ["train", "--epochs-scale", "inf", "--out", str(ctx.tmp / "run")], "--epochs-scale"


@case("train --threads -5")
def _(ctx):
    return ["train", "--threads", "-5", "--out", str(ctx.tmp / "run")], "--threads"


# ---- latency predictors and tables ---------------------------------------------------------------------------

def search(ctx: Ctx, latency: Path | str, *extra: str) -> list[str]:
    return ["search", "--supernet", str(ctx.art.checkpoint), "--device", "local", "--latency-predictor", str(latency),
            "--max-latency-ms", "5", "--no-verify", "--population", "8", "--generations", "2", *extra]


def latency_file(ctx: Ctx, **changes) -> Path:
    d = json.loads(ctx.art.latency.read_text())
    d.update(changes)
    return ctx.write("latency.json", json.dumps(d))


def table_predictor(ctx: Ctx, value: float | str) -> Path:
    d = json.loads(json.dumps(ctx.art.table_predictor))
    key = sorted(d["table"])[3]
    d["table"][key] = value
    return ctx.write("latency.json", json.dumps(d).replace('"NAN"', "NaN"))


@case("latency predictor made for another device")
def _(ctx):
    return search(ctx, latency_file(ctx, device="pi4")), "pi4"


@case("latency predictor with a negative piece latency")
def _(ctx):
    return search(ctx, table_predictor(ctx, -1.0)), "> 0"


@case("latency predictor with a NaN piece latency")
def _(ctx):
    return search(ctx, table_predictor(ctx, "NAN")), "NaN"


@case("latency predictor with a NaN weight")
def _(ctx):
    return search(ctx, ctx.write("latency.json", ctx.art.latency.read_text().replace("0.2,", "NaN,", 1))), "NaN"


@case("latency predictor predicting negative latencies")
def _(ctx):
    return search(ctx, latency_file(ctx, weights=[-5.0, 0.001])), "predicts"


@case("latency predictor with one weight for two features")
def _(ctx):
    return search(ctx, latency_file(ctx, weights=[0.2])), "weights"


@case("latency predictor of another runtime name")
def _(ctx):
    return search(ctx, latency_file(ctx, runtime="tensorrt")), "runtime"


@case("latency predictor for a 100-class space")
def _(ctx):
    return search(ctx, latency_file(ctx, space={**SPACE.to_dict(), "num_classes": 100})), "space"


@case("latency predictor nested 100 000 levels")
def _(ctx):
    return search(ctx, ctx.write("latency.json", deep_json())), "latency.json"


@case("latency predictor symlink to /dev/zero")
def _(ctx):
    return search(ctx, ctx.link("latency.json", "/dev/zero")), "not a regular file"


@case("latency predictor of binary garbage")
def _(ctx):
    return search(ctx, ctx.write("latency.json", np.random.default_rng(4).bytes(3000))), "latency.json"


@case("latency predictor with a space whose width is a string")
def _(ctx):
    space = SPACE.to_dict()
    space["stages"][1]["width"] = "wide"
    return search(ctx, latency_file(ctx, space=space)), "width"


@case("calibrate --transfer-from a predictor of negative latencies")
def _(ctx):
    path = latency_file(ctx, weights=[-5.0, 0.001])
    return ["calibrate", "--device", "local", "--space", "tiny", "--transfer-from", str(path), "--tables",
            str(ctx.tmp / "t"), "--store", str(ctx.tmp / "s.sqlite"), "--quiet"], "predicts"


def calibrate_with_table(ctx: Ctx, entry: dict | str) -> list[str]:
    from edgenas.latency.table import TABLE_SCHEMA

    table = {"schema": TABLE_SCHEMA, "device": "local", "runtime": "onnxruntime", "precision": "fp32",
             "entries": {"stem": entry if isinstance(entry, dict) else {"latency_ms": entry}}}
    text = json.dumps(table).replace('"NAN"', "NaN")
    ctx.write("t/local/onnxruntime-fp32.json", text)
    return ["calibrate", "--device", "local", "--space", "tiny", "--tables", str(ctx.tmp / "t"), "--store",
            str(ctx.tmp / "s.sqlite"), "--quiet"]


@case("latency table with -1 ms entries")
def _(ctx):
    return calibrate_with_table(ctx, {"latency_ms": -1.0, "median_ms": -1.0, "runs": 5}), "latency_ms"


@case("latency table with a NaN entry")
def _(ctx):
    return calibrate_with_table(ctx, "NAN"), "NaN"


@case("latency table with zero runs")
def _(ctx):
    return calibrate_with_table(ctx, {"latency_ms": 1.0, "runs": 0}), "runs"


@case("latency table is a folder")
def _(ctx):
    (ctx.tmp / "t" / "local" / "onnxruntime-fp32.json").mkdir(parents=True)
    return ["calibrate", "--device", "local", "--space", "tiny", "--tables", str(ctx.tmp / "t"), "--store",
            str(ctx.tmp / "s.sqlite"), "--quiet"], "folder"


@case("calibrate --space file nested 100 000 levels")
def _(ctx):
    return ["calibrate", "--device", "local", "--space", str(ctx.write("space.json", deep_json())), "--store",
            str(ctx.tmp / "s.sqlite")], "space.json"


@case("calibrate --space file with a negative stride")
def _(ctx):
    space = SPACE.to_dict()
    space["stages"][0]["stride"] = -2
    return ["calibrate", "--device", "local", "--space", str(ctx.write("space.json", json.dumps(space))), "--store",
            str(ctx.tmp / "s.sqlite")], "stride"


# ---- accuracy predictors -------------------------------------------------------------------------------------

def npz(ctx: Ctx, **arrays) -> Path:
    with np.load(ctx.art.accuracy) as data:
        base = {k: data[k] for k in data.files}
    base.update(arrays)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in base.items() if v is not None})
    return ctx.write("acc.npz", buf.getvalue())


def header(**changes) -> np.ndarray:
    h = {"format": "edgenas-accuracy-predictor", "version": 1, "space": SPACE.to_dict(), "layers": 2, "info": {}}
    h.update(changes)
    return np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)


def search_acc(ctx: Ctx, path: Path) -> list[str]:
    return search(ctx, ctx.art.latency, "--predictor", str(path))


@case("accuracy predictor holding a pickled call", runs_code=True)
def _(ctx):
    return search_acc(ctx, npz(ctx, w0=np.array([payloads(ctx.sentinel)["os.system"]], dtype=object))), "acc.npz"


@case("accuracy predictor with NaN weights")
def _(ctx):
    return search_acc(ctx, npz(ctx, w1=np.full((8, 1), np.nan, np.float32))), "NaN"


@case("accuracy predictor whose layers do not chain")
def _(ctx):
    return search_acc(ctx, npz(ctx, w1=np.zeros((5, 1), np.float32))), "layer"


@case("accuracy predictor lacking a layer")
def _(ctx):
    return search_acc(ctx, npz(ctx, w1=None)), "acc.npz"


@case("accuracy predictor with 10^9 layers")
def _(ctx):
    return search_acc(ctx, npz(ctx, header=header(layers=10**9))), "layers"


@case("accuracy predictor with a header nested 100 000 levels")
def _(ctx):
    return search_acc(ctx, npz(ctx, header=np.frombuffer(deep_json().encode(), np.uint8))), "acc.npz"


@case("accuracy predictor of binary garbage")
def _(ctx):
    return search_acc(ctx, ctx.write("acc.npz", np.random.default_rng(5).bytes(500))), "acc.npz"


@case("accuracy predictor claiming to unpack to 4 GiB")
def _(ctx):
    path = npz(ctx)
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")  # the first central-directory entry: patch its uncompressed size
    data[at + 24:at + 28] = struct.pack("<I", 0xFFFFFFF0)
    return search_acc(ctx, ctx.write("acc.npz", bytes(data))), "acc.npz"


# ---- the store, outputs, models, numbers ----------------------------------------------------------------------

@case("--store of binary garbage")
def _(ctx):
    return search(ctx, ctx.art.latency, "--store", str(ctx.write("s.sqlite", b"garbage" * 100))), "SQLite"


@case("--store is a folder")
def _(ctx):
    (ctx.tmp / "s.sqlite").mkdir()
    return ["predictor", "fit", "--supernet", str(ctx.art.checkpoint), "--store", str(ctx.tmp / "s.sqlite")], "folder"


@case("search --out names an existing file")
def _(ctx):
    return search(ctx, ctx.art.latency, "--out", str(ctx.write("taken", "x"))), "existing file"


@case("export --out names an existing file")
def _(ctx):
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", ctx.art.arch(), "--formats", "onnx", "--out",
            str(ctx.write("taken", "x"))], "existing file"


@case("export --out below an existing file")
def _(ctx):
    return ["export", "--supernet", str(ctx.art.checkpoint), "--arch", ctx.art.arch(), "--formats", "onnx", "--out",
            str(ctx.write("taken", "x") / "sub")], "is a file"


@case("train --out where no folder can be made")
def _(ctx):
    return ["train", "--out", "/proc/edgenas-cannot-be-here"], "cannot make the folder"


@case("run config whose out lies below a file")
def _(ctx):
    ctx.write("taken", "x")
    return run(ctx, RUN.replace('out = "out"', 'out = "taken/out"')), "is a file"


@case("predictor fit --out names a folder")
def _(ctx):
    return ["predictor", "fit", "--supernet", str(ctx.art.checkpoint), "--out", str(ctx.tmp)], "folder"


@case("demo --out names an existing file")
def _(ctx):
    return ["demo", "--out", str(ctx.write("taken", "x"))], "existing file"


@case("search --max-latency-ms -1")
def _(ctx):
    return search(ctx, ctx.art.latency, "--max-latency-ms", "-1"), "--max-latency-ms"


@case("search --max-latency-ms nan")
def _(ctx):
    return search(ctx, ctx.art.latency, "--max-latency-ms", "nan"), "finite"


@case("eval --seed -1")
def _(ctx):
    return ev(ctx.art.checkpoint, "--sample", "2", "--seed", "-1"), "--seed"


@case("eval --sample 10^12")
def _(ctx):
    return ev(ctx.art.checkpoint, "--sample", str(10**12)), "--sample"


@case("measure a garbage .onnx file")
def _(ctx):
    return ["measure", "--device", "local", str(ctx.write("m.onnx", b"garbage"))], "ONNX"


@case("measure a .tflite symlink to /dev/zero")
def _(ctx):
    return ["measure", "--device", "local", str(ctx.link("m.tflite", "/dev/zero"))], "not a regular file"


@case("measure a file that is not a model")
def _(ctx):
    return ["measure", "--device", "local", str(ctx.write("m.txt", "hello"))], ".onnx or .tflite"


UNSAFE_ADVICE = ("weights_only=False", "weights_only", "allow_pickle=True", "allow_pickle", "trust_remote_code")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_refused_in_one_line(name, ctx, capsys):
    build, runs_code = CASES[name]
    argv, expected = build(ctx)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("edgenas: error: "), err
    assert expected.lower() in lines[0].lower(), lines[0]
    assert not any(advice in err for advice in UNSAFE_ADVICE), err
    if runs_code:
        assert not ctx.sentinel.exists(), f"code from the data file ran: {ctx.sentinel} was created"


def test_at_least_sixty_cases_across_every_file_kind():
    kinds = ("cifar10", "idx", "folder", "dataset", "checkpoint", "arch", "device", "run", "training config",
             "latency predictor", "latency table", "accuracy predictor", "--store", "--out", "measure")
    assert len(CASES) >= 60
    for kind in kinds:
        assert any(kind in name for name in CASES), kind
    assert sum(runs_code for _, runs_code in CASES.values()) >= 10


def test_the_payloads_do_run_when_unpickled_plainly(tmp_path):
    """The code-execution cases prove something: the same bytes run their code through plain pickle.loads."""
    sentinel = tmp_path / "ran"
    for name, payload in payloads(sentinel).items():
        if name == "numpy.save":
            continue
        made = pickle.loads(pickle.dumps(cifar_batch(extra={b"x": payload}), protocol=2))[b"x"]
        if name == "subprocess.Popen":
            made.wait(timeout=30)
        elif name == "builtins.open":
            made.close()
        assert sentinel.exists(), name
        sentinel.unlink()


def test_one_bad_device_file_does_not_hide_the_others(ctx, capsys):
    ctx.write("devices/good.toml", LOCAL_DEVICE)
    ctx.write("devices/deep.toml", deep_toml())
    ctx.link("devices/zero.toml", "/dev/zero")
    (ctx.tmp / "devices" / "dir.toml").mkdir()
    ctx.write("devices/evil.toml", SSH_DEVICE.format(host="pi;reboot", user="pi"))
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "INVALID" not in rows["good"] and "local" in rows["good"]
    for name in ("deep", "zero", "dir", "evil"):
        assert "INVALID" in rows[name], out
    assert main(["devices", "list", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["good"]["error"] is None and all(listed[n]["error"] for n in ("deep", "zero", "dir", "evil"))


def test_run_refuses_a_late_device_before_any_stage(ctx, capsys):
    argv = run(ctx, RUN + '[[devices]]\nname = "no-such-device"\nbudgets_ms = [1.0]\n')
    assert main(argv) == 2
    assert "no-such-device" in capsys.readouterr().err
    assert not (ctx.tmp / "out" / "supernet").exists() and not (ctx.tmp / "out" / "stages.json").exists()


def test_debug_prints_the_traceback_and_still_exits_2(ctx, capsys):
    assert main(["--debug", "eval", "--supernet", str(ctx.tmp / "nothing.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("edgenas: error: checkpoint")


def test_a_refused_search_result_records_nothing(ctx, capsys):
    """A predictor made for another device stops the search before it writes a result."""
    out = ctx.tmp / "result"
    assert main(search(ctx, latency_file(ctx, device="pi4"), "--out", str(out))) == 2
    assert "pi4" in capsys.readouterr().err and not list(out.rglob("*"))


@pytest.mark.parametrize("kind", ["devzero", "folder", "binary", "utf16", "sparse", "nan", "negative", "empty"])
def test_a_hostile_latency_csv_is_one_line(tmp_path, kind):
    """The latency CSV (`tools/bench/latency_transfer.py --csv`) is read through the same layer."""
    from edgenas.errors import UsageError
    from edgenas.latency.transfer import read_latency_csv

    path = tmp_path / "lat.csv"
    good = "idx,arch_str,pi_ms\n0,a|b,1.5\n"
    if kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(5 << 30)
    else:
        data = {"binary": np.random.default_rng(6).bytes(500), "utf16": good.encode("utf-16"),
                "nan": good.replace("1.5", "nan").encode(), "negative": good.replace("1.5", "-2").encode(),
                "empty": b""}[kind]
        path.write_bytes(data)
    with pytest.raises(UsageError) as refused:
        read_latency_csv(path)
    assert "\n" not in str(refused.value) and "lat.csv" in str(refused.value)
