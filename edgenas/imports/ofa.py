"""Once-for-All's published MobileNetV3 supernets (`ofa_mbv3_d234_e346_k357_w1.0` / `_w1.2`) as edgenas checkpoints.

Once-for-All's elastic layers compute what edgenas's do (a smaller kernel is the larger one's centre through
the `7to5` / `5to3` matrices, narrower expand ratios use the first hidden channels, squeeze-excite at
make_divisible(C // 4, 8), the same head), so the import is a renaming of its `state_dict` keys: every
subnet then gives Once-for-All's logits, in place and extracted. The width (1.0 or 1.2) is read from the
stem's shape; every other key and shape must be exactly those of that space, or the file is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from edgenas.artifacts import sha256_file, write_manifest
from edgenas.errors import UsageError
from edgenas.inputs import input_file
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.checkpoint import load_problem, save_checkpoint

# The stem's width tells the two published supernets apart.
PRESET_BY_STEM = {16: "mobilenetv3", 24: "mobilenetv3-w1.2"}
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
OPTIONAL = "num_batches_tracked"  # older files may lack it; a fresh BatchNorm's 0 is used then
WHAT = "a Once-for-All MobileNetV3 supernet file (ofa_mbv3_d234_e346_k357_w1.0 or _w1.2, {'state_dict': ...})"


def canonical_key(key: str) -> str:
    """One spelling for the names Once-for-All's versions used (as its `OFAMobileNetV3.load_state_dict`)."""
    if key.startswith("module."):
        key = key[len("module."):]
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    for long, short in ((".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear.")):
        key = key.replace(long, short)
    return key


def _bn(ofa: str, ours: str) -> dict[str, str]:
    return {f"{ofa}.{f}": f"{ours}.{f}" for f in BN_FIELDS}


def key_map(space: SearchSpace) -> dict[str, str]:
    """Once-for-All's (canonical) key → edgenas's key, for every weight of `space`'s supernet."""
    keys = {"first_conv.conv.weight": "stem.conv.weight", **_bn("first_conv.bn", "stem.bn"),
            "blocks.0.conv.depth_conv.conv.weight": "first.depthwise.conv.weight",
            **_bn("blocks.0.conv.depth_conv.bn", "first.depthwise.bn"),
            "blocks.0.conv.point_linear.conv.weight": "first.project.conv.weight",
            **_bn("blocks.0.conv.point_linear.bn", "first.project.bn")}
    kernels = space.kernels
    for i, slot in enumerate(space.block_slots(), start=1):
        ofa, ours = f"blocks.{i}.conv", f"stages.{slot.stage}.{slot.index}"
        keys[f"{ofa}.inverted_bottleneck.conv.weight"] = f"{ours}.expand_conv.weight"
        keys.update(_bn(f"{ofa}.inverted_bottleneck.bn", f"{ours}.expand_bn"))
        keys[f"{ofa}.depth_conv.conv.weight"] = f"{ours}.depthwise.weight"
        for small, large in zip(kernels[:-1], kernels[1:]):
            keys[f"{ofa}.depth_conv.conv.{large}to{small}_matrix"] = f"{ours}.depthwise.transforms.{small}"
        keys.update(_bn(f"{ofa}.depth_conv.bn", f"{ours}.depthwise_bn"))
        if slot.se:
            for part in ("reduce", "expand"):
                for f in ("weight", "bias"):
                    keys[f"{ofa}.depth_conv.se.fc.{part}.{f}"] = f"{ours}.se.{part}.{f}"
        keys[f"{ofa}.point_linear.conv.weight"] = f"{ours}.project_conv.weight"
        keys.update(_bn(f"{ofa}.point_linear.bn", f"{ours}.project_bn"))
    keys.update({"final_expand_layer.conv.weight": "final_expand.conv.weight",
                 **_bn("final_expand_layer.bn", "final_expand.bn"),
                 "feature_mix_layer.conv.weight": "feature_mix.conv.weight",
                 "classifier.linear.weight": "classifier.weight", "classifier.linear.bias": "classifier.bias"})
    return keys


def load_torch_file(path: str | Path, what: str, hint: str) -> tuple[Path, Any]:
    """A torch file's contents, loaded with `weights_only=True` (nothing in it runs); UsageError saying why not."""
    path = input_file(path, what, hint=hint)
    try:
        with warnings.catch_warnings():  # torch warns about a foreign file's pickle protocol before refusing it
            warnings.simplefilter("ignore")
            return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign pickle, a damaged zip, not a torch file at all ...
        raise UsageError(f"{path} is not {what}: {load_problem(exc, path)}") from None


def read_ofa_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Once-for-All checkpoint (canonical keys), loaded without unpickling code."""
    path, data = load_torch_file(path, WHAT, "download it from Once-for-All's model zoo")
    state = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not state:
        raise UsageError(f"{path} is not {WHAT}: it holds a {type(data).__name__}, not a state_dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UsageError(f"{path} is not {WHAT}: entry {str(bad[0])[:60]!r} is not a named tensor")
    out = {canonical_key(k): v for k, v in state.items()}
    if len(out) != len(state):
        raise UsageError(f"{path} is not {WHAT}: it spells some weights twice")
    return out


def space_of(state: dict[str, torch.Tensor], source: str) -> SearchSpace:
    """The preset whose supernet `state` is (w1.0 or w1.2, by the stem's width), with its class count."""
    stem = state.get("first_conv.conv.weight")
    if stem is None:
        raise UsageError(f"{source} is not {WHAT}: it has no first_conv.conv.weight (its first key is "
                         f"{next(iter(state))!r})")
    width = int(stem.shape[0])
    if width not in PRESET_BY_STEM or tuple(stem.shape[1:]) != (3, 3, 3):
        raise UsageError(f"{source}: first_conv.conv.weight has shape {list(stem.shape)}: Once-for-All's "
                         "MobileNetV3 supernets have [16, 3, 3, 3] (w1.0) or [24, 3, 3, 3] (w1.2)")
    classifier = state.get("classifier.linear.weight")
    if classifier is None or classifier.dim() != 2 or classifier.shape[0] < 2:
        shape = None if classifier is None else list(classifier.shape)
        raise UsageError(f"{source}: classifier.linear.weight is {shape}: expected [classes, features]")
    return SearchSpace.preset(PRESET_BY_STEM[width], num_classes=int(classifier.shape[0]))


def convert_state(state: dict[str, torch.Tensor], space: SearchSpace, source: str) -> dict[str, torch.Tensor]:
    """Once-for-All's weights under edgenas's names; UsageError naming the first key or shape that does not fit."""
    mapping = key_map(space)
    unknown = sorted(k for k in state if k not in mapping)
    if unknown:
        raise UsageError(f"{source}: unexpected entry {unknown[0]!r} for Once-for-All's '{space.name}' supernet "
                         f"(kernels {list(space.kernels)}, depth {space.stages[0].max_depth}): is it another network?")
    missing = [k for k in mapping if k not in state and not k.endswith(OPTIONAL)]
    if missing:
        raise UsageError(f"{source}: it lacks {missing[0]!r}, which Once-for-All's '{space.name}' supernet has")
    expected = Supernet(space).state_dict()
    out = {}
    for ofa, ours in mapping.items():
        want = expected[ours]
        tensor = state.get(ofa, want)
        if tuple(tensor.shape) != tuple(want.shape):
            raise UsageError(f"{source}: {ofa} has shape {list(tensor.shape)}, but Once-for-All's '{space.name}' "
                             f"supernet has {list(want.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"{source}: {ofa} holds NaN or infinite values: the file is damaged")
        out[ours] = tensor.to(want.dtype).clone()
    return out


def import_ofa_supernet(checkpoint: str | Path, out: str | Path, *, num_classes: int | None = None,
                        resolutions: tuple[int, ...] | None = None, dataset: Any = None) -> dict[str, Any]:
    """Write Once-for-All's supernet `checkpoint` as an edgenas supernet checkpoint at `out` (with its manifest).

    `num_classes` puts a new, untrained classifier on it (for fine-tuning on other data). `resolutions` narrows the
    input sizes its space offers (those of Once-for-All's Note10 tables, 160-224 px: what is calibrated, searched
    and exported follows the checkpoint's space; the weights do not depend on the size). `dataset` (a loaded
    `edgenas.data.Dataset`: its spec, fingerprint and class count) is the data the supernet is used with, recorded
    in the checkpoint as every later stage's data (the accuracy predictor's, the search's, the export's); its
    classes are the classifier's (a new one unless they are 1000).
    Returns a summary."""
    source = str(checkpoint)
    state = read_ofa_state(checkpoint)
    space = space_of(state, source)
    model = convert_state(state, space, source)
    data_spec, fingerprint = "imagenet", ""
    if dataset is not None:
        if num_classes is not None and num_classes != dataset.num_classes:
            raise UsageError(f"--num-classes {num_classes} but dataset {dataset.spec} has {dataset.num_classes} "
                             "classes: drop --num-classes (the dataset's count is used)")
        num_classes, data_spec, fingerprint = dataset.num_classes, dataset.spec, dataset.fingerprint
    new_head = num_classes is not None and num_classes != space.num_classes
    if num_classes is not None and num_classes < 2:
        raise UsageError(f"--num-classes {num_classes}: expected at least 2")
    if resolutions is not None:
        allowed = set(space.resolutions)
        bad = [r for r in resolutions if r not in allowed]
        if bad or not resolutions:
            raise UsageError(f"--resolutions {','.join(map(str, resolutions)) or '(none)'}: {bad[0] if bad else 'none'} "
                             f"is not an input size of Once-for-All's supernet; choose from "
                             f"{min(allowed)} to {max(allowed)} in steps of 4")
        space = space.replace(resolutions=tuple(sorted(set(resolutions))))
    if new_head:
        space = space.replace(num_classes=num_classes)
        fresh = Supernet(space).state_dict()  # the initialisation edgenas's training uses
        model["classifier.weight"], model["classifier.bias"] = fresh["classifier.weight"], fresh["classifier.bias"]
    sha = sha256_file(checkpoint)
    origin = {"format": "once-for-all", "file": Path(checkpoint).name, "sha256": sha,
              "width_mult": space.width_mult, "classifier": "new, untrained" if new_head else "Once-for-All's"}
    summary = {"imported_from": origin}
    path = save_checkpoint(out, {"space": space.to_dict(), "model": model, "dataset": data_spec,
                                 "dataset_fingerprint": fingerprint, "seed": 0, "config": {}, "complete": True,
                                 "summary": summary})
    write_manifest(path, kind="supernet-checkpoint", inputs={"once_for_all_checkpoint": str(checkpoint)},
                   config={"space": space.name, "num_classes": space.num_classes}, seed=0,
                   extra={"space": space.to_dict(), "complete": True, "summary": summary,
                          "imported_from": origin, "trained_here": False})
    return {"out": str(path), "space": space.name, "num_classes": space.num_classes, "new_classifier": new_head,
            "resolutions": list(space.resolutions), "dataset": data_spec,
            "source_sha256": sha, "weights": len(model)}
