"""Standalone models to time on a device (table pieces and whole subnets), exported once and cached by content.

Latency depends on the architecture, not on the weights, so every model here is built with
random weights drawn from a torch generator seeded by the model's own description: the same
piece or arch always gives the same file. Exports are cached under
`<cache>/<format>/<sha256 of the description>.<ext>`, so a second device (or a resumed run)
reuses the files, and the store recognises their sha256.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from torch import nn

from edgenas.artifacts import atomic_write_text, sha256_file, sha256_json
from edgenas.errors import UsageError
from edgenas.export.onnx import export_onnx
from edgenas.latency.blocks import Piece
from edgenas.nn.static import ConvBNAct, MBConv
from edgenas.space import Arch, SearchSpace
from edgenas.supernet import Supernet

FORMATS = {  # (runtime, precision) -> export format
    ("onnxruntime", "fp32"): "onnx",
    ("tflite", "fp32"): "tflite",
    ("tflite", "int8"): "tflite-int8",
}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tflite-int8": ".tflite"}
# Bump when what a description builds changes, so stale cached files are not reused.
MODEL_VERSION = 1


def export_format(runtime: str, precision: str) -> str:
    """The export format for a runtime and precision, or UsageError naming the valid pairs."""
    try:
        return FORMATS[(runtime, precision)]
    except KeyError:
        pairs = ", ".join(f"{r}/{p}" for r, p in FORMATS)
        raise UsageError(f"runtime {runtime!r} with precision {precision!r} is not supported: choose from {pairs}") from None


class PieceModel(nn.Module):
    """A table piece as a standalone model with a fixed input size (what the device times)."""

    def __init__(self, piece: Piece) -> None:
        super().__init__()
        self.piece = piece
        p = piece
        if p.kind == "stem":
            self.body = nn.Sequential(
                ConvBNAct(p.cin, p.mid, 3, p.stride, act="hswish"),
                MBConv(p.mid, p.cout, 3, 1, mid=None, act="relu", se_mid=None, residual=p.residual),
            )
        elif p.kind == "head":
            self.final_expand = ConvBNAct(p.cin, p.mid, 1, act="hswish")
            self.feature_mix = ConvBNAct(p.mid, p.extra, 1, act="hswish", bn=False)
            self.classifier = nn.Linear(p.extra, p.cout)
        elif p.kind == "block":
            self.body = MBConv(p.cin, p.cout, p.kernel, p.stride, mid=p.mid, act=p.act, se_mid=p.se_mid or None,
                               residual=p.residual)
        else:
            raise ValueError(f"unknown piece kind {p.kind!r}: choose stem, block or head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.piece.kind == "head":
            x = self.final_expand(x).mean((2, 3), keepdim=True)
            return self.classifier(torch.flatten(self.feature_mix(x), 1))
        return self.body(x)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.piece.cin, self.piece.hw, self.piece.hw)

    def tflite_plan(self) -> list[tuple[str, nn.Module | str]]:
        """The layers `forward` applies, in order (what `edgenas.export.tflite_direct` writes without a converter)."""
        if self.piece.kind == "head":
            return [("final_expand", self.final_expand), ("pool", "mean"), ("feature_mix", self.feature_mix),
                    ("flatten", "flatten"), ("classifier", self.classifier)]
        return [("body", self.body)]


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics from a generator seeded by the model's description."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def piece_description(piece: Piece) -> dict:
    return {"kind": "piece", "piece": piece.to_dict(), "version": MODEL_VERSION}


def arch_description(space: SearchSpace, arch: Arch) -> dict:
    return {"kind": "arch", "space": space.to_dict(), "arch": arch.to_dict(), "version": MODEL_VERSION}


def build_model(description: dict) -> nn.Module:
    """The model a description names, with deterministic random weights (eval mode). The models built last are kept
    for the process (`BUILT_MB`): a run that calibrates two devices of one space exports the same models in two
    formats (the demo: 262 models, 2.4 CPU-s to build), and exporting reads a model, never changes it."""
    global _built_bytes
    key = sha256_json(description)
    kept = _BUILT.pop(key, None)
    if kept is not None:
        _built_bytes -= kept[1]
    else:
        seed = int(key[:15], 16)
        if description["kind"] == "piece":
            model = _randomise(PieceModel(Piece(**description["piece"])), seed)
        else:
            space = SearchSpace.from_dict(description["space"])
            model = _randomise(_supernet(space).extract(Arch.from_dict(description["arch"], space)), seed)
        kept = (model, _model_bytes(model))
    _BUILT[key] = kept  # the most recently used last
    _built_bytes += kept[1]
    while len(_BUILT) > 1 and _built_bytes > BUILT_MB * 1e6:
        _built_bytes -= _BUILT.pop(next(iter(_BUILT)))[1]
    return kept[0].eval()


# The most megabytes of weights the models kept for the process hold (the demo's 262 models: 99 MB).
BUILT_MB = 256
_BUILT: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()  # description hash -> (model, bytes)
_built_bytes = 0


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


_SUPERNETS: dict[str, nn.Module] = {}


def _supernet(space: SearchSpace):
    """One randomly initialised supernet per space, kept for the process (extracting is cheap, building is not)."""
    key = sha256_json(space.to_dict())
    if key not in _SUPERNETS:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # weights are re-drawn per model by _randomise; this only makes the build repeatable
            _SUPERNETS[key] = Supernet(space).eval()
    return _SUPERNETS[key]


def _example(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    shape = model.example_input().shape  # type: ignore[operator]
    return torch.randn(shape, generator=gen)


def _export_onnx(model: nn.Module, path: Path) -> None:
    export_onnx(model, path, example=_example(model), verify=False)


def _export_tflite(model: nn.Module, path: Path, int8: bool) -> None:
    try:
        # deferred: the [tflite] extra's converter loads only when a TFLite latency model is written
        from edgenas.export import tflite
    except ImportError as exc:
        raise UsageError(f"TFLite export is not available ({exc}): calibrate an onnxruntime device, or install "
                         "edgenas with the [tflite] extra") from None
    example = _example(model)
    if int8:
        # Random normal inputs are enough to pick quantisation ranges for a latency model. Its file is timed, never
        # used: the int8 writer's numeric check is skipped. On random weights, whose logits are near-tied, it failed
        # for 5 of 6 w1.2 subnets at 132-220 px (int8 noise against a small spread), and each went to litert-torch
        # for the same graph, 15-30 s more a subnet.
        gen = torch.Generator().manual_seed(1)
        calibration = torch.randn((8,) + tuple(example.shape[1:]), generator=gen).numpy()
        tflite.export_tflite(model, path, quantization="int8", calibration=calibration, example=example, check=False)
    else:
        tflite.export_tflite(model, path, example=example)


# int8 TFLite conversion (litert-torch) takes seconds per model and uses one core, so several missing int8 files
# are converted in worker processes; ONNX export and fp32 TFLite (written directly, edgenas.export.tflite_direct)
# take a fraction of a second, less than starting a worker.
PARALLEL_FORMATS = ("tflite-int8",)
PARALLEL_MIN_MODELS = 4


def _get_in_worker(root: str, description: dict, fmt: str) -> tuple[str, str]:
    torch.set_num_threads(1)
    path, sha = ModelCache(root).get(description, fmt)
    return str(path), sha


class ModelCache:
    """Exported latency models under `root`, keyed by the sha256 of their description and format."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _sha_path(self, description: dict, fmt: str) -> Path:
        path = self.path_for(description, fmt)
        return path.with_name(path.name + ".sha256")

    def known_sha256(self, description: dict, fmt: str) -> str | None:
        """The sha256 of the file `description` exported to, when it was exported here once (the file itself may
        have been removed since: its measurement, keyed by this hash, is what a re-run needs)."""
        sha_path = self._sha_path(description, fmt)
        return sha_path.read_text().strip() if sha_path.is_file() else None

    def size_bytes(self) -> int:
        """Bytes of exported model files the cache holds (not counting the small hash and description files)."""
        return sum(p.stat().st_size for p in self._model_files())

    def _model_files(self) -> list[Path]:
        suffixes = set(SUFFIX.values())
        out = []
        for fmt in SUFFIX:
            folder = self.root / fmt
            if folder.is_dir():
                out += [p for p in folder.iterdir() if p.suffix in suffixes and not p.name.startswith(".")]
        return out

    def trim(self, max_bytes: int, *, keep: Collection[Path] = ()) -> int:
        """Remove the least recently used model files (not those in `keep`) until the cache holds at most
        `max_bytes`; their hashes and descriptions stay, so a re-run finds their measurements in the store, and
        one that needs a file again exports it again. Returns the bytes removed."""
        files = []
        for p in self._model_files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_atime, p, st.st_size))
        total = sum(size for _, _, size in files)
        removed = 0
        keep = set(keep)
        for _, path, size in sorted(files, key=lambda f: (f[0], str(f[1]))):
            if total - removed <= max_bytes:
                break
            if path in keep:
                continue
            path.unlink(missing_ok=True)
            removed += size
        return removed

    def is_cached(self, description: dict, fmt: str) -> bool:
        """The file and its .sha256 (written last) are both there: the export finished."""
        return self.path_for(description, fmt).is_file() and self._sha_path(description, fmt).is_file()

    def get_many(self, descriptions: list[dict], fmt: str, *, workers: int | None = None,
                 on_done: Callable[[], None] | None = None) -> list[tuple[Path, str]]:
        """`get` for each description, in order; missing TFLite files are converted by `workers` processes
        (default: one per core, at most one per missing file). `on_done` is called once per description."""
        out: dict[int, tuple[Path, str]] = {}
        missing = [i for i, d in enumerate(descriptions) if not self.is_cached(d, fmt)]
        workers = min(workers or os.cpu_count() or 1, len(missing))
        if fmt in PARALLEL_FORMATS and len(missing) >= PARALLEL_MIN_MODELS and workers > 1:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_get_in_worker, str(self.root), descriptions[i], fmt): i for i in missing}
                for future in as_completed(futures):
                    path, sha = future.result()
                    out[futures[future]] = (Path(path), sha)
                    if on_done is not None:
                        on_done()
        for i, d in enumerate(descriptions):
            if i not in out:
                out[i] = self.get(d, fmt)
                if on_done is not None:
                    on_done()
        return [out[i] for i in range(len(descriptions))]

    def path_for(self, description: dict, fmt: str) -> Path:
        return self.root / fmt / (sha256_json({"description": description, "format": fmt}) + SUFFIX[fmt])

    def get(self, description: dict, fmt: str) -> tuple[Path, str]:
        """The exported file for `description` in `fmt` (exported now if missing) and its sha256."""
        path, sha_path = self.path_for(description, fmt), self._sha_path(description, fmt)
        if self.is_cached(description, fmt):
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))  # used now (access time): trimmed last
            return path, sha_path.read_text().strip()
        exporter: Callable[[nn.Module, Path], None]
        if fmt == "onnx":
            exporter = _export_onnx
        elif fmt in ("tflite", "tflite-int8"):
            def exporter(m: nn.Module, p: Path) -> None:
                _export_tflite(m, p, fmt == "tflite-int8")
        else:
            raise ValueError(f"unknown export format {fmt!r}: choose from {', '.join(SUFFIX)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
        try:
            exporter(build_model(description), tmp)
            sha = sha256_file(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(description, sort_keys=True))
        atomic_write_text(sha_path, sha + "\n")  # written last: its presence means the export is complete
        return path, sha
