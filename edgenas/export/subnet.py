"""Export one subnet for deployment: extract (BN recalibrated), optionally fine-tune, write every format, verify, check, card.

The steps, each writing into one output folder:

1. the static subnet, BatchNorm statistics re-estimated on training images (`prepare_subnet`);
2. optional fine-tuning with distillation from the supernet's largest network (`edgenas.export.subnet_finetune`);
3. each format: `model.onnx`, `model_fp32.tflite`, `model_int8.tflite` (int8 calibrated on training images),
   each with a JSON manifest;
4. verification of every file against PyTorch on the validation images (`edgenas.export.verify`); an int8
   file's accuracy drop is judged on the holdout images too (every image the run may use for it, paired);
5. for int8 files, the TFLite Micro check and the real arena size (`edgenas.export.micro`);
6. the SRAM and flash budgets, the latency on a device when one is given, and the model card.

A failed check or budget raises `ExportCheckError` after the card is written, so every file stays
on disk for inspection.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgenas.artifacts import atomic_write_text, manifest_path, read_manifest, sha256_file, write_manifest
from edgenas.cost import arch_stats
from edgenas.errors import UsageError, did_you_mean
from edgenas.export.card import build_card, file_entry, write_card
from edgenas.export.contract import LABELS_TXT, NormalisedInput, file_io, input_contract, labels_text, to_file_input
from edgenas.export.formats import DEPLOYED_FORMATS, FILE_NAMES, FORMATS, deployed_format  # noqa: F401,E402
from edgenas.export.micro import MicroCheck, check_micro
from edgenas.export.model_metadata import write_onnx_metadata, write_tflite_metadata
from edgenas.export.onnx import export_onnx, onnx_weight_bytes
from edgenas.export.subnet_finetune import finetune
from edgenas.export.tflite import TFLiteConversionError, export_tflite
from edgenas.export.verify import (
    DEFAULT_ATOL,
    DEFAULT_MAX_DROP_POINTS,
    DEFAULT_MIN_AGREEMENT,
    Check,
    compare,
    file_logits,
    torch_logits,
)
from edgenas.micro_memory import board_fit
from edgenas.micro_memory import predict as predict_memory
from edgenas.space import Arch, SearchSpace
from edgenas.train.bn import recalibrate_bn

TFLITE_VERSIONS = ("torch", "numpy", "litert-torch", "ai-edge-litert", "tflite-micro")


class ExportCheckError(RuntimeError):
    """A verification, TFLite Micro check or memory budget failed; the files are kept, and `result` (the
    `ExportResult`, card included) says what was written and what failed."""

    def __init__(self, message: str, result: ExportResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"onnx,tflite"` -> ("onnx", "tflite"), validated and deduplicated in the given order."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        hint = did_you_mean(bad[0], FORMATS) if bad else ""
        raise UsageError(f"unknown export format(s) {', '.join(bad) or repr(text)}{hint}: choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class ExportOptions:
    """How to export: formats, fine-tuning, calibration, checks and budgets (defaults are what the CLI uses)."""

    formats: tuple[str, ...] = FORMATS
    finetune_epochs: int = 0
    calibration_images: int = 200
    bn_batches: int = 8
    batch_size: int = 64
    verify: bool = True
    micro: bool = True
    int8_io: bool = False
    channels_last: bool = True
    # a directly written int8 file that fails its check is converted again with litert-torch (15-30 s), whose
    # observers round differently, and that file ships if it passes
    litert_fallback: bool = True
    atol: float = DEFAULT_ATOL
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS
    target_sram_kb: float | None = None
    target_flash_kb: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if self.finetune_epochs < 0:
            raise UsageError(f"--finetune-epochs {self.finetune_epochs} must be 0 or more")
        if self.calibration_images < 1:
            raise UsageError(f"calibration images {self.calibration_images} must be at least 1 (a few hundred is right)")
        if not 0 <= self.max_drop_points <= 100:
            raise UsageError(f"--max-int8-drop {self.max_drop_points:g} must be between 0 and 100 points (default "
                             f"{DEFAULT_MAX_DROP_POINTS:g})")
        for name in ("target_sram_kb", "target_flash_kb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} {value:g} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class ExportResult:
    """What `export_subnet` wrote and measured."""

    out_dir: Path
    files: dict[str, Path]
    checks: list[Check]
    micro: MicroCheck | None
    conversion_seconds: dict[str, float]
    card: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the problems in a few words each (no paths), for summaries

    @property
    def ok(self) -> bool:
        return not self.problems


def dataset_arrays(dataset: Any, split: str, resolution: int, *, limit: int | None = None, shuffle: bool = False,
                   seed: int = 0, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Images (NCHW float32, resized to `resolution`, no augmentation) and labels of a split, as numpy."""
    loader = dataset.loader(split, batch_size=batch_size, resolution=resolution, shuffle=shuffle, seed=seed)
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x.numpy())
        ys.append(y.numpy())
        n += len(y)
        if limit is not None and n >= limit:
            break
    x, y = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
    return np.ascontiguousarray(x, dtype=np.float32), y


VERIFY_IMAGES = 2000  # per split: the int8 check's images (2 000 at 224 px hold 1.2 GB; a 50 000-image split, 30)


def verification_images(dataset: Any, split: str, resolution: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A split's images for the files' checks: all of them, in order, up to `VERIFY_IMAGES`; of a larger split, that
    many drawn at random (seeded), so memory stays bounded whatever the dataset's size."""
    if dataset.size(split) <= VERIFY_IMAGES:
        return dataset_arrays(dataset, split, resolution)
    return dataset_arrays(dataset, split, resolution, limit=VERIFY_IMAGES, shuffle=True, seed=seed)


def recalibrate(model: nn.Module, dataset: Any, resolution: int, *, bn_batches: int = 8, batch_size: int = 64,
                seed: int = 0) -> nn.Module:
    """Re-estimate `model`'s BatchNorm statistics on `bn_batches` training batches at `resolution`; eval mode."""
    loader = dataset.loader("train", batch_size=batch_size, resolution=resolution, shuffle=True, seed=seed)
    recalibrate_bn(model, [batch for _, batch in zip(range(bn_batches), loader)])
    return model.eval()


def prepare_subnet(supernet: nn.Module, arch: Arch, dataset: Any, *, bn_batches: int = 8, batch_size: int = 64,
                   seed: int = 0) -> nn.Module:
    """The static subnet of `arch` with BatchNorm statistics re-estimated on training images (eval mode)."""
    return recalibrate(supernet.extract(arch).cpu(), dataset, arch.resolution, bn_batches=bn_batches,
                       batch_size=batch_size, seed=seed)


def _export_format(fmt: str, model: nn.Module, path: Path, options: ExportOptions,
                   calibration: np.ndarray, converter: str = "auto",
                   contract: Mapping[str, Any] | None = None) -> tuple[float, str]:
    """Write one format, with `contract` in its metadata when given: (seconds, the converter that wrote it)."""
    if fmt == "onnx":
        result = export_onnx(model, path, verify=False)
        seconds, by = result.seconds, result.exporter
    else:
        result = export_tflite(model, path, quantization="int8" if fmt == "tflite-int8" else None,
                               calibration=calibration if fmt == "tflite-int8" else None, int8_io=options.int8_io,
                               channels_last=options.channels_last, converter=converter)
        seconds, by = result.seconds, result.converter
    if contract is not None:
        write_file_metadata(fmt, path, contract)
    return seconds, by


def write_file_metadata(fmt: str, path: Path, contract: Mapping[str, Any]) -> None:
    """The contract into one file's own metadata: ONNX `metadata_props`, TFLite Support metadata."""
    io_ = file_io(fmt, path)
    if fmt == "onnx":
        write_onnx_metadata(path, contract, io_)
    else:
        write_tflite_metadata(path, contract, io_)


def _int8_by_litert(model: nn.Module, path: Path, options: ExportOptions, calibration: np.ndarray,
                    images: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, failed: Check,
                    seconds: dict[str, float], log: Callable[[str], None],
                    contract: Mapping[str, Any] | None = None) -> Check:
    """The directly written int8 file failed its check: convert with litert-torch (its own observers round
    differently) and ship that file if it passes; else keep the direct one and its failed check."""
    log(f"verify: {path.name} (written directly) failed ({failed.message.split(': ', 1)[-1]}); "
        "converting with litert-torch instead ...")
    other = path.with_name(f".{path.stem}.litert{path.suffix}")
    try:
        extra, _ = _export_format("tflite-int8", model, other, options, calibration, converter="litert-torch",
                                  contract=contract)
    except (TFLiteConversionError, ImportError) as exc:
        log(f"verify: litert-torch could not convert it either ({exc})")
        return failed
    check = compare("tflite-int8", path, file_logits("tflite-int8", other, images), reference, labels,
                    quantized=True, atol=options.atol, min_agreement=options.min_agreement,
                    max_drop_points=options.max_drop_points)
    if not check.passed:  # the direct file stays (the graph memory was predicted on); the summary names both
        other.unlink(missing_ok=True)
        also = f"; litert-torch's file failed too: {check.problem}"
        return dataclasses.replace(failed, message=failed.message + also, problem=failed.problem + also)
    os.replace(other, path)
    seconds["tflite-int8"] += extra
    return check


def _without_int8_that_cannot_fit(options: ExportOptions, memory: Any, log: Callable[[str], None]) -> ExportOptions:
    """Options without the int8 file and its TFLite Micro check when the predicted arena (exact to the byte on the
    host) clearly exceeds the board's SRAM (`--target-sram-kb`; see `micro_memory.board_fit`): the answer comes in
    seconds, not after a conversion and an arena search; the SRAM check then fails on the prediction."""
    if options.target_sram_kb is None or "tflite-int8" not in options.formats:
        return options
    if board_fit(memory, options.target_sram_kb * 1024) is not False:
        return options
    log(f"micro: does not fit this board: predicted TFLite Micro arena {memory.arena / 1024:.1f} KiB "
        f"({memory.board_arena / 1024:.1f} KiB on a 32-bit board, {memory.head / 1024:.1f} KiB of it tensors) "
        f"against --target-sram-kb {options.target_sram_kb:g}; tflite-int8 not converted")
    narrowed = copy.copy(options)  # not dataclasses.replace: no format may be left, which the CLI refuses
    object.__setattr__(narrowed, "formats", tuple(f for f in options.formats if f != "tflite-int8"))
    return narrowed


def export_subnet(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    space: SearchSpace,
    arch: Arch,
    calibration: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray | None,
    options: ExportOptions | None = None,
    lineage: Mapping[str, Any] | None = None,
    device: Any = None,
    predicted_latency_ms: float | None = None,
    name: str = "model",
    log: Callable[[str], None] = print,
    kept: ExportResult | None = None,
    measured: Sequence[Mapping[str, Any]] | None = None,
    raise_on_problems: bool = True,
    holdout_images: np.ndarray | None = None,
    holdout_labels: np.ndarray | None = None,
    contract: Mapping[str, Any] | None = None,
    write_card_now: bool = True,
    reference_logits: dict[str, np.ndarray] | None = None,
) -> ExportResult:
    """Write every requested format of `model` (a static subnet of `arch`) into `out_dir`, check it, and card it.

    `calibration` are training images for int8 calibration and `val_images`/`val_labels` the validation
    images for verification (NCHW float32 at the arch's resolution); `holdout_images`/`holdout_labels`, when
    given, join them for the int8 file's accuracy-drop check (paired, on every image the run may use for it).
    `device` (an `edgenas` Device) is used to measure the latency of the files its runtime runs; `measured` are latency entries
    (`measurement_entry`) already taken of these files, used instead. `kept` is an earlier export of the
    same prepared `model` with the same options: its files are copied byte for byte (not converted again)
    and its checks kept, so a file measured before shipping is the file shipped. When a check or budget
    fails, the card is written and `ExportCheckError` (holding the result) raised, or, with
    `raise_on_problems=False`, the result returned with its `problems`. `contract`
    (`edgenas.export.contract.input_contract`) goes into every file's metadata, labels.txt and the card.
    With `write_card_now=False` the card is only returned (`result.card`), for a caller that writes it once,
    after its pick (the deploy stage). `reference_logits` keeps PyTorch's logits of `model` on the validation
    (`"val"`) and holdout (`"holdout"`) images across exports of the same model and images (`PreparedExport.logits`):
    each is computed once, where it is missing.
    """
    options = options or ExportOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lineage = dict(lineage or {})
    model = model.eval().cpu()
    stats = arch_stats(space, arch)

    # the TFLite Micro arena and int8 file size the search constrained (with the normalisation the file applies)
    memory = predict_memory(space, arch, normalised_input=isinstance(model, NormalisedInput))

    def manifest(fmt: str, path: Path) -> None:
        write_manifest(path, kind=f"model-{fmt}", inputs={"supernet": lineage.get("supernet")},
                       config={"arch": arch.to_dict(), "space": space.name, **options.to_dict()}, seed=options.seed,
                       versions=TFLITE_VERSIONS if fmt.startswith("tflite") else ("torch", "numpy", "onnx", "onnxruntime"))

    options = _without_int8_that_cannot_fit(options, memory, log)
    files, seconds, converters = _write_files(model, out_dir, options, calibration, kept, manifest, log, contract)
    found = _Problems()
    logits = {} if reference_logits is None else reference_logits

    def reference_of(split: str, images: np.ndarray) -> np.ndarray:
        if split not in logits:
            logits[split] = torch_logits(model, images)
        return logits[split]

    reference = reference_of("val", val_images)
    reference_acc = _accuracy(reference, val_labels)
    checks, file_accuracy = [], {}
    if options.verify:
        kept_formats = {c.format for c in kept.checks} if kept is not None else set()
        checked_now = any(fmt.endswith("int8") and fmt not in kept_formats for fmt in files)
        # the int8 check's images (val + holdout, and their PyTorch logits): only where an int8 file is checked now
        int8_set = _int8_check_images(val_images, val_labels, reference, holdout_images, holdout_labels,
                                      lambda images: reference_of("holdout", images)) \
            if checked_now else (val_images, reference, val_labels)
        checks, file_accuracy = _verify_files(model, files, options, calibration, (val_images, reference, val_labels),
                                              int8_set, kept, converters, seconds, manifest, found, log, contract)
    micro = _memory_checks(files, options, kept, stats, memory, val_images, found, log)

    latency: dict[str, Any] = {"predicted_ms": predicted_latency_ms, "measured": []}
    if measured is not None:
        latency["measured"] = [dict(m) for m in measured]
        if measured:
            latency["device"] = measured[0]["device"]
    elif device is not None:
        latency["device"] = device.name
        latency["measured"] = measure_on_device(device, files, log=log)

    entries = [file_entry(path, fmt) for fmt, path in files.items()]
    if contract is not None:
        atomic_write_text(out_dir / LABELS_TXT, labels_text(contract))
    card = build_card(
        name=name, arch=arch.to_dict(), arch_str=str(arch), space=space.name, stats=stats.to_dict(),
        files=entries, contract=contract,
        accuracy={"split": "val", "images": int(len(val_images)), "pytorch": reference_acc, "files": file_accuracy},
        verification=[c.to_dict() for c in checks],
        sram={"analytic_peak_int8_bytes": stats.peak_activation_int8,
              "analytic_peak_fp32_bytes": stats.peak_activation_fp32,
              "tflm_arena_bytes": None if micro is None else micro.arena_bytes,
              "tflm": None if micro is None else micro.to_dict()},
        latency=latency, conversion_seconds=seconds, memory=memory.to_dict(),
        lineage=plain_lineage({**lineage, "finetune_epochs": options.finetune_epochs, "seed": options.seed,
                               "calibration_images": int(len(calibration))}, out_dir),
    )
    if found.messages:
        card["problems"] = found.messages
    if write_card_now:
        write_card(out_dir, card)
    result = ExportResult(out_dir, files, checks, micro, seconds, card, found.messages, found.reasons)
    if found.messages and raise_on_problems:
        raise ExportCheckError(f"export to {out_dir} failed: " + "; ".join(found.messages), result)
    return result


@dataclass
class _Problems:
    """What failed in an export: each problem's full message and the same in a few words."""

    messages: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def add(self, message: str, reason: str | None = None) -> None:
        self.messages.append(message)
        self.reasons.append(reason or message)


def _write_files(model: nn.Module, out_dir: Path, options: ExportOptions, calibration: np.ndarray,
                 kept: ExportResult | None, manifest: Callable[[str, Path], None], log: Callable[[str], None],
                 contract: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, Path], dict[str, float], dict[str, str]]:
    """Each format's file (copied from `kept` where it holds it): the files, conversion seconds and converters."""
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    converters: dict[str, str] = {}
    kept_files = dict(kept.files) if kept is not None else {}
    for fmt in options.formats:
        path = out_dir / FILE_NAMES[fmt]
        if fmt in kept_files:
            files[fmt] = _copy_exported(kept_files[fmt], path)
            seconds[fmt] = kept.conversion_seconds.get(fmt, 0.0)
            continue
        log(f"export: writing {path.name} ...")
        seconds[fmt], converters[fmt] = _export_format(fmt, model, path, options, calibration, contract=contract)
        files[fmt] = path
        manifest(fmt, path)
    return files, seconds, converters


_Images = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # images, PyTorch's logits, labels


def _verify_files(model: nn.Module, files: dict[str, Path], options: ExportOptions, calibration: np.ndarray,
                  val_set: _Images, int8_set: _Images, kept: ExportResult | None, converters: dict[str, str],
                  seconds: dict[str, float], manifest: Callable[[str, Path], None], found: _Problems,
                  log: Callable[[str], None], contract: Mapping[str, Any] | None = None,
                  ) -> tuple[list[Check], dict[str, float]]:
    """Check every file against PyTorch (fp32 files on `val_set`, int8 files on `int8_set`): the checks and each
    file's accuracy on the validation images. A directly written int8 file that fails is converted again by
    litert-torch (`options.litert_fallback`)."""
    val_images, _, val_labels = val_set
    kept_checks = {c.format: c for c in kept.checks} if kept is not None else {}
    checks: list[Check] = []
    file_accuracy: dict[str, float] = {}
    for fmt, path in files.items():
        quantized = fmt.endswith("int8")
        images, ref, labels = int8_set if quantized else val_set
        if fmt in kept_checks:  # the same bytes checked against the same model: the check stands
            check = dataclasses.replace(kept_checks[fmt], path=str(path))
            val_accuracy = kept.card["accuracy"]["files"].get(Path(kept.files[fmt]).name)
        else:
            logits = file_logits(fmt, path, images)
            check = compare(fmt, path, logits, ref, labels, quantized=quantized, atol=options.atol,
                            min_agreement=options.min_agreement, max_drop_points=options.max_drop_points)
            val_accuracy = _accuracy(logits[: len(val_images)], val_labels)
        if not check.passed and fmt == "tflite-int8" and converters.get(fmt) == "direct" and options.litert_fallback:
            check = _int8_by_litert(model, path, options, calibration, images, ref, labels, check, seconds, log,
                                    contract)
            if check.passed:
                manifest(fmt, path)
                val_accuracy = _accuracy(file_logits(fmt, path, val_images), val_labels)
        checks.append(check)
        if val_accuracy is not None:  # the card's accuracy is on the validation images, for every file alike
            file_accuracy[path.name] = val_accuracy
        log(f"verify: {check.message}" if check.passed else f"verify: FAILED {check.message}")
        if not check.passed:
            found.add(check.message, f"{fmt}: {check.problem}")
    return checks, file_accuracy


def _memory_checks(files: dict[str, Path], options: ExportOptions, kept: ExportResult | None, stats: Any,
                   memory: Any, val_images: np.ndarray, found: _Problems, log: Callable[[str], None]) -> MicroCheck | None:
    """The TFLite Micro check of the int8 file (kept from `kept` where it holds that file) and the SRAM and flash
    budgets of `options`; returns the TFLite Micro check (None when not run)."""
    micro = None
    if options.micro and kept is not None and "tflite-int8" in kept.files and kept.micro is not None:
        micro = kept.micro
    elif options.micro and "tflite-int8" in files:
        micro = check_micro(files["tflite-int8"], images=val_images[:1], analytic_peak_bytes=stats.peak_activation_int8,
                            predicted_arena_bytes=memory.arena)
    if micro is not None:
        log(f"micro: {micro.summary()}")
        if not micro.ok:
            found.add(micro.summary())
    if options.target_sram_kb is not None:
        need = micro.arena_bytes if micro is not None and micro.ok else memory.arena
        source = "TFLite Micro arena" if micro is not None and micro.ok else "predicted TFLite Micro arena"
        if need / 1024 > options.target_sram_kb:
            found.add(f"SRAM need {need / 1024:.1f} KiB ({source}) exceeds --target-sram-kb {options.target_sram_kb:g}",
                      f"SRAM {need / 1024:.1f} KiB over {options.target_sram_kb:g}")
    if options.target_flash_kb is not None:
        fmt = "tflite-int8" if "tflite-int8" in files else next(iter(files))
        # int8: the .tflite file is what a board's flash holds (the search predicts its size); fp32: the weights, as
        # the search's fp32 flash limit counts them (an ONNX file's names and graph add 18-24 KB, not weights)
        weights_only = fmt == "onnx"
        size = onnx_weight_bytes(files[fmt]) if weights_only else files[fmt].stat().st_size
        what = f"{files[fmt].name} holds {size / 1024:.1f} KiB of weights" if weights_only else \
            f"{files[fmt].name} is {size / 1024:.1f} KiB"
        if size / 1024 > options.target_flash_kb:
            found.add(f"{what}, more than --target-flash-kb {options.target_flash_kb:g}",
                      f"flash {size / 1024:.1f} KiB over {options.target_flash_kb:g}")
    return micro


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())


def _int8_check_images(val_images: np.ndarray, val_labels: np.ndarray | None, reference: np.ndarray,
                       holdout_images: np.ndarray | None, holdout_labels: np.ndarray | None,
                       holdout_logits: Callable[[np.ndarray], np.ndarray],
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The images an int8 file is judged on, their PyTorch logits and labels: the validation images, and the
    holdout images after them when given (with labels on both sides; `holdout_logits` gives PyTorch's logits)."""
    if holdout_images is None or len(holdout_images) == 0 or val_labels is None or holdout_labels is None:
        return val_images, reference, val_labels
    return (np.concatenate([val_images, holdout_images]), np.concatenate([reference, holdout_logits(holdout_images)]),
            np.concatenate([val_labels, holdout_labels]))


def _copy_exported(source: Path, path: Path) -> Path:
    """Copy an exported file and its manifest to `path` (nothing to do when it is already there)."""
    if Path(source).resolve() != path.resolve():
        shutil.copyfile(source, path)
        if manifest_path(source).is_file():
            shutil.copyfile(manifest_path(source), manifest_path(path))
    return path


def measurement_entry(device_name: str, path: Path, m: Any) -> dict[str, Any]:
    """A card's latency entry for one file's `Measurement` on a device."""
    return {"device": device_name, "file": path.name, "runtime": m.runtime, "latency_ms": m.latency_ms,
            "median_ms": m.median_ms, "cv": m.cv, "runs": m.runs, "timing": m.timing, "ok": m.ok,
            "error": m.error, "error_message": m.error_message}


def measure_on_device(device: Any, files: Mapping[str, Path], *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Latency of each exported file the device's runtime runs (ONNX Runtime: .onnx, TFLite: .tflite), timed
    interleaved over one window: the figure budgets are judged by (`latency_ms`), the median run, and how far
    to trust the figure (`timing`)."""
    suffix = ".onnx" if device.runtime == "onnxruntime" else ".tflite"
    paths = [p for p in files.values() if p.suffix == suffix]
    if getattr(device, "kind", None) == "mcu":  # a microcontroller board runs the int8 model only
        paths = [p for fmt, p in files.items() if fmt == "tflite-int8"]
    if not paths:
        log(f"measure: device {device.name} runs {device.runtime}, and no exported file is for it")
        return []
    out = []
    for path, m in zip(paths, device.measure([str(p) for p in paths])):
        entry = measurement_entry(device.name, path, m)
        log(f"measure: {path.name} on {device.name}: " +
            (f"{m.latency_ms:.3g} ms ({m.trust_line() or 'interleaved'})" if m.ok
             else f"failed ({m.error}: {m.error_message})"))
        out.append(entry)
    return out


@dataclass
class PreparedExport:
    """A subnet ready to export: the BN-recalibrated (optionally fine-tuned) static model, the images its export
    reads (int8 calibration, verification) and its lineage. Exporting it twice gives the same files."""

    arch: Arch
    model: nn.Module
    calibration: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    lineage: dict[str, Any]
    predicted_latency_ms: float | None = None
    holdout_images: np.ndarray | None = None  # joined to the validation images for the int8 check
    holdout_labels: np.ndarray | None = None
    contract: dict[str, Any] | None = None  # the input contract every file carries (`edgenas.export.contract`)
    # PyTorch's logits of the exported model on the files' validation and holdout images ("val", "holdout"), kept
    # from the first export that computed them: a candidate's export, its holdout accuracy and its shipping read
    # the same logits (a deploy computed them up to three times)
    logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def holdout_correct(self) -> list[bool] | None:
        """Per holdout image, in the split's order, whether the prepared model classifies it right, from the kept
        logits (computed here when missing); None where the files take other input than the model (normalised
        inside) or there are no holdout images."""
        if self.holdout_images is None or self.holdout_labels is None or \
                (self.contract is not None and self.contract.get("normalised_inside")):
            return None
        if "holdout" not in self.logits:
            self.logits["holdout"] = torch_logits(self.model, self.holdout_images)
        return [bool(v) for v in self.logits["holdout"].argmax(1) == self.holdout_labels]


def prepare_export(supernet: nn.Module, arch: Arch, dataset: Any, *, options: ExportOptions, info: Mapping[str, Any],
                   search: Mapping[str, Any] | None = None, dataset_spec: str | None = None,
                   log: Callable[[str], None] = print) -> PreparedExport:
    """Extract `arch` from `supernet` with BN statistics re-estimated (and fine-tuned when `options` ask), and
    gather its calibration and validation images. `info` is the checkpoint's (`OpenedCheckpoint.info`),
    `search` a search result's JSON (`load_search_result`) recorded in the lineage."""
    search = dict(search or {})
    model = prepare_subnet(supernet, arch, dataset, bn_batches=options.bn_batches, batch_size=options.batch_size,
                           seed=options.seed)
    tuned: dict[str, float] = {}
    if options.finetune_epochs:
        teacher, teacher_res = teacher_of(supernet)
        tuned = finetune(model, teacher, dataset, epochs=options.finetune_epochs, resolution=arch.resolution,
                         teacher_resolution=teacher_res, batch_size=options.batch_size, seed=options.seed)
        # running averages lag the last weights: re-estimate BatchNorm statistics exactly
        model = recalibrate(model, dataset, arch.resolution, bn_batches=options.bn_batches,
                            batch_size=options.batch_size, seed=options.seed)
    calibration, _ = dataset_arrays(dataset, "train", arch.resolution, limit=options.calibration_images, shuffle=True,
                                    seed=options.seed)
    val_x, val_y = verification_images(dataset, "val", arch.resolution, options.seed)
    hold_x, hold_y = verification_images(dataset, "holdout", arch.resolution, options.seed) \
        if dataset.size("holdout") else (None, None)
    lineage: dict[str, Any] = {
        "supernet": {"path": str(info["path"]), "sha256": info["sha256"]},
        "dataset": {"spec": dataset_spec or info["dataset"], "fingerprint": dataset.fingerprint,
                    "checkpoint_dataset": info["dataset"]},
        "training_seed": info.get("seed"),
    }
    gate = (info.get("summary") or {}).get("gate") or {}
    if gate.get("gap") is not None:  # the training check and how far its smallest subnet trailed the largest
        lineage["training_check"] = (f"{'passed' if gate.get('passed') else 'FAILED'}; the smallest subnet trails the "
                                     f"largest by {100 * gate['gap']:.1f} points (allowed {100 * gate['allowed_gap']:.1f})")
    if search:
        lineage["search"] = {k: search.get(k) for k in ("algorithm", "device", "constraints", "config") if k in search}
        if "_file" in search:
            lineage["search"].update(result=search["_file"], inputs=search.get("_inputs"))
    if tuned:
        lineage["finetune"] = tuned

    return PreparedExport(arch, model, calibration, val_x, val_y, lineage, predicted_latency(search), hold_x, hold_y,
                          input_contract(dataset, arch.resolution))


def export_prepared(prepared: PreparedExport, out_dir: str | os.PathLike, *, space: SearchSpace,
                    options: ExportOptions, device: Any = None, kept: ExportResult | None = None,
                    measured: Sequence[Mapping[str, Any]] | None = None, raise_on_problems: bool = True,
                    log: Callable[[str], None] = print, write_card_now: bool = True) -> ExportResult:
    """`export_subnet` of a prepared subnet (see there for `device`, `kept`, `measured`, `raise_on_problems`).

    Its files take the prepared contract's input: where the network normalises per channel, the files hold
    `NormalisedInput` around it and are checked on the images as a client feeds them."""
    contract, model = prepared.contract, prepared.model
    if contract is not None and contract.get("normalised_inside"):
        model = NormalisedInput(model, contract).eval()

    def feed(images: np.ndarray | None) -> np.ndarray | None:
        return to_file_input(images, contract) if contract is not None else images

    return export_subnet(model, out_dir, space=space, arch=prepared.arch, calibration=feed(prepared.calibration),
                         val_images=feed(prepared.val_images), val_labels=prepared.val_labels, options=options,
                         lineage=prepared.lineage, device=device, predicted_latency_ms=prepared.predicted_latency_ms,
                         name=f"edgenas {prepared.arch}", log=log, kept=kept, measured=measured,
                         raise_on_problems=raise_on_problems, holdout_images=feed(prepared.holdout_images),
                         holdout_labels=prepared.holdout_labels, contract=contract, write_card_now=write_card_now,
                         reference_logits=prepared.logits)


def plain_lineage(value: Any, out_dir: Path) -> Any:
    """Lineage as plain JSON values: absolute paths made relative to the folder the card is in (`out_dir`), tuples
    as lists, anything else that is not JSON as its string."""
    if isinstance(value, Mapping):
        return {str(k): plain_lineage(v, out_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_lineage(v, out_dir) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value)):
        return Path(os.path.relpath(Path(value).resolve(), out_dir.resolve())).as_posix()
    if isinstance(value, str) and ":" in value and os.path.isabs(value.split(":", 1)[1]):  # a dataset SPEC
        kind, path = value.split(":", 1)
        return f"{kind}:{plain_lineage(path, out_dir)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def load_search_result(value: str) -> dict[str, Any]:
    """The JSON of an arch file when it is a search result (for predicted latency and lineage), else {}."""
    path = Path(value)
    if value.strip().startswith("{") or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or "arch" not in data:
        return {}

    manifest = read_manifest(path) or {}
    # the predictors and tables the search used, with their hashes, come from the result's manifest
    return {**data, "_file": {"path": str(path), "sha256": sha256_file(path)}, "_inputs": manifest.get("inputs")}


def predicted_latency(result: Mapping[str, Any]) -> float | None:
    """The predicted latency (ms) of a search result's winner, when it holds one."""
    predicted = (result.get("best") or {}).get("predicted") or result.get("predicted") or {}
    value = predicted.get("latency_ms") if isinstance(predicted, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def teacher_of(supernet: nn.Module) -> tuple[nn.Module, int]:
    """The supernet's largest network as a distillation teacher, and its input resolution."""
    largest = supernet.space.largest()
    return supernet.extract(largest).eval(), largest.resolution

