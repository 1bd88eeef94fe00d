"""The accuracy predictor: an MLP from an arch's one-hot encoding to its top-1, trained with early stopping.

As Once-for-All's: the encoding of `space.encode`, three hidden layers of 400 ReLU units, the output
bias initialised to the mean accuracy so training starts from the right level. It is trained with
torch (Adam, MSE, early stopping on a validation split) but predicts in numpy, so a search neither
imports torch nor pays its per-call overhead: 100 archs take about 0.1 ms. Saved as a `.npz` of
weights (no pickle) with the space inside and a manifest beside it.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.accuracy.gp import GPAccuracyPredictor
from edgenas.artifacts import atomic_write_bytes, undefined_as_null, write_manifest
from edgenas.errors import UsageError
from edgenas.inputs import GIB, decode_text, input_file, is_int, one_line, parse_json, size_text, space_from_dict
from edgenas.space import Arch, SearchSpace

FORMAT_VERSION = 1
# How the MLP's output becomes a top-1: "logit" (fitted on log-odds, read through a sigmoid; the default) or
# "clip" (fitted on top-1 itself, clipped to [0, 1]; files written before). A clipped MLP extrapolates past 1.0
# for the larger subnets of a well-trained supernet, and the search then sees a plateau of 1.0 where the front
# should rise: measured in the demo, every candidate of the TFLite budgets predicted 1.000 and the search took
# subnets using 37-45 % of their budgets. "linear": the MLP's output as it is (an imported predictor trained on
# top-1 itself, such as Once-for-All's, read exactly as its authors read it).
OUTPUTS = ("logit", "clip", "linear")
# Ordinal features a fitted MLP reads beside the one-hot encoding: the resolution as log pixels scaled to [0, 1] over
# the space's range, and the width multiplier. With the resolution one-hot only, an MLP fitted to tens of archs spread
# over 8-25 resolutions learns each resolution's column from the few archs at it, and cannot tell that more pixels
# rank higher (one-hot columns are unordered): its resolution preference is noise. Files fitted before read none.
SCALARS = ("log_resolution", "width")


def scalar_features(space: SearchSpace, resolutions: Sequence[int], widths: Sequence[float],
                    names: Sequence[str]) -> np.ndarray:
    """(n, len(names)) float32 columns of `SCALARS` for archs at `resolutions` and `widths`, scaled by `space`."""
    res = np.asarray(resolutions, dtype=np.float64)
    cols = []
    for name in names:
        if name == "log_resolution":
            lo, hi = np.log(min(space.resolutions)), np.log(max(space.resolutions))
            cols.append((np.log(res) - lo) / (hi - lo) if hi > lo else np.zeros_like(res))
        elif name == "width":
            cols.append(np.asarray(widths, dtype=np.float64))
        else:
            raise ValueError(f"unknown predictor feature {name!r}: choose from {', '.join(SCALARS)}")
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(res), 0), dtype=np.float32)


@dataclass(frozen=True)
class FitConfig:
    """How the MLP is trained (Once-for-All: 3 × 400 hidden units)."""

    hidden: tuple[int, ...] = (400, 400, 400)
    val_fraction: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 1000
    patience: int = 60  # epochs without a better validation RMSE before stopping
    scalars: tuple[str, ...] = SCALARS  # ordinal features beside the one-hot encoding (see SCALARS)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"validation fraction {self.val_fraction} must be between 0 and 1")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden layer sizes {self.hidden} must be positive")


@dataclass(frozen=True)
class FitReport:
    """How training went: sizes, epochs, and the best validation RMSE and Kendall tau."""

    train_size: int
    val_size: int
    epochs: int
    best_epoch: int
    val_rmse: float
    val_kendall_tau: float
    mean_accuracy: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_cores() -> int:
    """Cores not busy with other work (1-minute load average), at least 1: more torch threads than free
    cores make small kernels many times slower (measured: 8x for a subnet's forward pass at load 8 on 2 cores)."""
    try:  # the cores this process may run on (taskset, cgroups' cpusets), not all the machine's
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round((os.cpu_count() or cores) - busy)))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float32), 1e-3, 1.0 - 1e-3)
    return np.log(q / (1.0 - q)).astype(np.float32)


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def kendall_tau(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Kendall's tau-b between predicted and actual values (how well the predictor ranks archs); NaN (undefined)
    for fewer than two archs, as scipy gives it, without its warning."""
    if len(predicted) < 2:
        return float("nan")
    # deferred: scipy loads only when this runs, not on import
    from scipy.stats import kendalltau

    return float(kendalltau(predicted, actual).statistic)


class AccuracyPredictor:
    """Predicts top-1 accuracy (in [0, 1]) of archs of one space; any search takes it via `.predict(archs)`."""

    def __init__(self, space: SearchSpace, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], *,
                 info: dict[str, Any] | None = None, output: str = "logit", scalars: Sequence[str] = ()) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown predictor output {output!r}: choose from {', '.join(OUTPUTS)}")
        if len(weights) != len(biases) or not weights:
            raise ValueError("an accuracy predictor needs one bias per weight matrix")
        self.scalars = tuple(scalars)
        if weights[0].shape[0] != space.encoding_size + len(self.scalars):
            raise ValueError(f"the predictor's input size {weights[0].shape[0]} does not match the "
                             f"'{space.name}' space's encoding size {space.encoding_size}"
                             + (f" and {len(self.scalars)} ordinal features" if self.scalars else ""))
        self.space = space
        self.weights = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.ascontiguousarray(b, dtype=np.float32) for b in biases]
        self.info = dict(info or {})
        self.output = output

    def features(self, archs: Sequence[Arch] | Arch) -> np.ndarray:
        encode = getattr(archs, "encode", None)  # an ArchBatch of the search encodes its genomes directly
        codec = getattr(archs, "codec", None)
        if callable(encode) and codec is not None:
            x = None
            if codec.space == self.space:
                x = encode()
            elif codec.space.common_resolutions(self.space) == codec.space:  # a search over some of its resolutions
                x = self._widen(encode(), codec.space.resolutions)
            if x is not None:
                if not self.scalars:
                    return x
                genomes = archs.genomes
                return self._with_scalars(x, codec.resolutions[genomes[:, 0]], codec.arch_widths(genomes))
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        offered = self.space.resolutions
        bad = sorted({a.resolution for a in archs} - set(offered))
        if bad:  # the encoding has no slot for it: refused, never rounded to a neighbour
            raise UsageError(f"resolution {bad[0]} has no slot in the accuracy predictor's encoding: choose from "
                             f"{', '.join(map(str, offered))}")
        x = self.space.encode(archs)
        if not self.scalars:
            return x
        return self._with_scalars(x, [a.resolution for a in archs], [a.width for a in archs])

    def _with_scalars(self, x: np.ndarray, resolutions: Sequence[int], widths: Sequence[float]) -> np.ndarray:
        return np.concatenate([x, scalar_features(self.space, resolutions, widths, self.scalars)], axis=1)

    def _widen(self, x: np.ndarray, resolutions: tuple[int, ...]) -> np.ndarray:
        """Features of a space offering only `resolutions` of this one, as this space's encoding."""
        own = self.space.resolutions
        out = np.zeros((len(x), self.space.encoding_size), dtype=np.float32)
        out[:, len(own):] = x[:, len(resolutions):]
        out[:, [own.index(r) for r in resolutions]] = x[:, :len(resolutions)]
        return out

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        out = (h @ self.weights[-1] + self.biases[-1])[:, 0].astype(np.float64)
        if self.output == "logit":
            return 1.0 / (1.0 + np.exp(-out))
        if self.output == "linear":
            return out
        return np.clip(out, 0.0, 1.0)

    def predict(self, archs: Sequence[Arch] | Arch) -> np.ndarray:
        """Predicted top-1 of each arch, shape (n,), in [0, 1]."""
        return self.predict_features(self.features(archs))

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, space: SearchSpace, archs: Sequence[Arch], accuracies: Sequence[float], *, seed: int = 0,
            config: FitConfig | None = None) -> tuple[AccuracyPredictor, FitReport]:
        """Train on (arch, accuracy) pairs: a `val_fraction` split (drawn with `seed`) stops training
        when its RMSE stops improving, and the best epoch's weights are kept."""
        # deferred: torch loads only when this runs, not on import
        import torch

        cfg = config or FitConfig()
        threads = torch.get_num_threads()
        torch.set_num_threads(free_cores())
        try:
            return cls._fit(space, archs, accuracies, seed=seed, cfg=cfg)
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _fit(cls, space: SearchSpace, archs: Sequence[Arch], accuracies: Sequence[float], *, seed: int,
             cfg: FitConfig) -> tuple[AccuracyPredictor, FitReport]:
        # deferred: torch loads only when this runs, not on import
        import torch
        from torch import nn

        y = np.asarray(accuracies, dtype=np.float32).reshape(-1)
        if len(y) != len(archs):
            raise ValueError(f"got {len(archs)} archs but {len(y)} accuracies")
        if len(y) < 10:
            raise UsageError(f"an accuracy predictor needs at least 10 evaluated archs, got {len(y)}: "
                             "evaluate more (--samples)")
        if not np.all((y >= 0) & (y <= 1)):
            raise UsageError("accuracies must be fractions in [0, 1] (top-1 of 0.93 is 0.93, not 93)")
        archs = list(archs)
        x = np.concatenate([space.encode(archs), scalar_features(space, [a.resolution for a in archs],
                                                                 [a.width for a in archs], cfg.scalars)], axis=1)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y))
        n_val = max(1, int(round(len(y) * cfg.val_fraction)))
        val, train = order[:n_val], order[n_val:]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sizes = (x.shape[1], *cfg.hidden, 1)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            linear = nn.Linear(sizes[i], sizes[i + 1])
            bound = 1.0 / np.sqrt(sizes[i])  # PyTorch's default init, drawn from our generator
            with torch.no_grad():
                linear.weight.uniform_(-bound, bound, generator=gen)
                linear.bias.uniform_(-bound, bound, generator=gen)
            layers += [linear, nn.ReLU()]
        mlp = nn.Sequential(*layers[:-1])
        mean = float(y[train].mean())
        z = _logit(y)  # trained on log-odds, read through a sigmoid: never a plateau at 0 or 1 (see OUTPUTS)
        with torch.no_grad():
            mlp[-1].bias.fill_(float(_logit(np.float32(mean))))  # start at the mean accuracy (Once-for-All's base_acc)
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(z[train])
        xv, yv = torch.from_numpy(x[val]), y[val]
        opt = torch.optim.Adam(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = (np.inf, 0, [p.detach().clone() for p in mlp.parameters()])
        t0 = time.perf_counter()
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
            mlp.train()
            perm = torch.randperm(len(train), generator=gen)
            for i in range(0, len(train), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                loss = ((mlp(xt[idx])[:, 0] - yt[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                pv = 1.0 / (1.0 + np.exp(-mlp(xv)[:, 0].numpy().astype(np.float64)))
            err = rmse(pv, yv)
            if err < best[0]:
                best = (err, epoch, [p.detach().clone() for p in mlp.parameters()])
            elif epoch - best[1] >= cfg.patience:
                break
        params = [p.numpy() for p in best[2]]
        weights = [params[i].T for i in range(0, len(params), 2)]
        biases = [params[i] for i in range(1, len(params), 2)]
        predictor = cls(space, weights, biases, scalars=cfg.scalars)
        pv = predictor.predict_features(x[val])
        report = FitReport(train_size=len(train), val_size=len(val), epochs=epoch, best_epoch=best[1],
                           val_rmse=rmse(pv, yv), val_kendall_tau=kendall_tau(pv, yv), mean_accuracy=mean,
                           seconds=time.perf_counter() - t0)
        predictor.info = {"fit": report.to_dict(), "config": {**asdict(cfg), "hidden": list(cfg.hidden),
                                                              "scalars": list(cfg.scalars)}, "seed": seed}
        return predictor, report

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None, seed: int | None = None) -> Path:
        """Write the predictor (`.npz`, no pickle) and its manifest beside it."""
        path = Path(path)
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)} | {f"b{i}": b for i, b in enumerate(self.biases)}
        info = _undefined_as_null(self.info)  # a rank correlation of one test arch (or of ties) is NaN: written as null
        header = {"format": "edgenas-accuracy-predictor", "version": FORMAT_VERSION, "space": self.space.to_dict(),
                  "layers": len(self.weights), "output": self.output, "info": info}
        if self.scalars:
            header["scalars"] = list(self.scalars)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        write_manifest(path, kind="accuracy_predictor", inputs=inputs, seed=seed,
                       config={"space": self.space.name, "hidden": [w.shape[1] for w in self.weights[:-1]]},
                       extra={"fit": info.get("fit"), "test": info.get("test")})
        return path


_undefined_as_null = undefined_as_null  # the old name (files and callers use it)


def load_accuracy_predictor(path: str | os.PathLike) -> AccuracyPredictor:
    """Load a predictor saved by `AccuracyPredictor.save` (a `.npz` file, or the folder holding
    `accuracy_predictor.npz`, e.g. a checkpoint's folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "accuracy_predictor.npz"
    if not path.is_file():
        raise UsageError(f"accuracy predictor {path} does not exist: fit one with "
                         "'edgenas predictor fit --supernet CKPT'")
    check_npz(path, "accuracy predictor")
    source = f"accuracy predictor {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            header = parse_json(decode_text(bytes(data["header"]), source), source)
            if isinstance(header, dict) and header.get("format") == "edgenas-accuracy-gp":
                space = space_from_dict(header.get("space"), source, ACCURACY_REMEDY)
                return GPAccuracyPredictor.from_arrays(space, header, data, source)  # type: ignore[return-value]
            n = header.get("layers") if isinstance(header, dict) else None
            if not is_int(n) or not 1 <= n <= 64:
                raise UsageError(f"{source}: layers = {n!r}: expected an integer from 1 to 64; {ACCURACY_REMEDY}")
            weights = [data[f"w{i}"] for i in range(n)]
            biases = [data[f"b{i}"] for i in range(n)]
    except (OSError, ValueError, KeyError, EOFError, TypeError) as exc:
        if isinstance(exc, UsageError):
            raise
        why = one_line(str(exc))[:100]
        if "pickle" in why or "Object arrays" in why:  # numpy's words name an unsafe option: say what is wrong
            why = "it holds Python objects, not plain arrays, and edgenas does not unpickle them"
        raise UsageError(f"{path} is not an edgenas accuracy predictor ({why}); fit a new one") from None
    if header.get("format") != "edgenas-accuracy-predictor" or header.get("version") != FORMAT_VERSION:
        raise UsageError(f"{path} has format {header.get('format')} version {header.get('version')}, "
                         f"this edgenas reads version {FORMAT_VERSION}: fit it again")
    space = space_from_dict(header.get("space"), source, ACCURACY_REMEDY)
    scalars = header.get("scalars", [])  # files fitted before read the one-hot encoding only
    if not isinstance(scalars, list) or not all(isinstance(s, str) and s in SCALARS for s in scalars) \
            or len(set(scalars)) != len(scalars):
        raise UsageError(f"{source}: scalars = {scalars!r}: expected a list of distinct names from "
                         f"{', '.join(SCALARS)}; {ACCURACY_REMEDY}")
    check_mlp(weights, biases, space.encoding_size + len(scalars), source)
    if not isinstance(header.get("info", {}), dict):
        raise UsageError(f"{source}: info is not a table; {ACCURACY_REMEDY}")
    output = header.get("output", "clip")  # files written before the log-odds output read as they were fitted
    if output not in OUTPUTS:
        raise UsageError(f"{source}: output = {output!r}: expected one of {', '.join(OUTPUTS)}; {ACCURACY_REMEDY}")
    return AccuracyPredictor(space, weights, biases, info=header.get("info"), output=output, scalars=scalars)


# ---- the accuracy predictor (.npz) --------------------------------------------------------------------

ACCURACY_REMEDY = "fit a new one with `edgenas predictor fit --supernet CKPT`"


def check_npz(path: str | os.PathLike, what: str, *, limit: int = GIB) -> Path:
    """A .npz must be a regular file whose members unpack to at most `limit` bytes (no zip bomb)."""
    p = input_file(path, what, hint=ACCURACY_REMEDY)
    try:
        with zipfile.ZipFile(p) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{p} is not an edgenas {what}: not a .npz file ({one_line(str(exc))[:80]}); {ACCURACY_REMEDY}"
                         ) from None
    total = sum(m.file_size for m in members)
    if len(members) > 1000 or total > limit:
        raise UsageError(f"{what} {p} unpacks to {size_text(total)} in {len(members)} arrays: too large for an accuracy "
                         f"predictor; {ACCURACY_REMEDY}")
    return p


def check_mlp(weights: list[Any], biases: list[Any], input_size: int, source: str) -> None:
    """Weight matrices (in, out) that chain from `input_size` to one output, matching biases, finite floats."""
    width = input_size
    for i, (w, b) in enumerate(zip(weights, biases)):
        for name, a, ndim in ((f"w{i}", w, 2), (f"b{i}", b, 1)):
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.ndim != ndim:
                shown = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise UsageError(f"{source}: {name} is a {shown}: expected a {ndim}-D float array; {ACCURACY_REMEDY}")
            if not np.isfinite(a).all():
                raise UsageError(f"{source}: {name} holds NaN or infinite values; {ACCURACY_REMEDY}")
        if w.shape[0] != width or b.shape[0] != w.shape[1]:
            raise UsageError(f"{source}: layer {i} has weights of shape {list(w.shape)} and {b.shape[0]} biases after "
                             f"{width} inputs: the layers do not fit together; {ACCURACY_REMEDY}")
        width = w.shape[1]
    if width != 1:
        raise UsageError(f"{source}: the last layer has {width} outputs: expected 1 (the accuracy); {ACCURACY_REMEDY}")
