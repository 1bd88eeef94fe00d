"""Datasets for training and evaluating supernets: loading, train/val/holdout splits, normalisation and batching.

A dataset is chosen by a SPEC string:

- `digits`: scikit-learn's bundled 8×8 handwritten digits (1 797 images, grey; no download).
- `shapes[:image_size=N,samples=M]`: a seeded synthetic set of coloured geometric shapes (10 classes)
  with clutter and noise, generated on load at any resolution.
- `folder:PATH`: one sub-folder per class holding PNG/JPEG images (read with Pillow).
- `imagenet:PATH`: ImageNet's layout, `train/` and `val/`, each with one sub-folder per class.
- `cifar10:PATH`: the CIFAR-10 "python version" batches folder (`data_batch_1..5`, `test_batch`).
- `idx:PATH`: a folder of MNIST-family IDX files (`train-images-idx3-ubyte[.gz]`, ...), gzipped or not.

The small sets (digits, shapes, CIFAR-10, IDX, and folders of images of at most 64 px) are held in memory as
uint8 NCHW (`memory.Dataset`), normalised with the training split's mean and standard deviation. Folders of
photos are streamed from disk (`stream.StreamingDataset`): only the file list is held, DataLoader workers decode
and crop each image at the resolution the step trains at, normalised as Once-for-All (ImageNet's statistics).
`holdout` is carved from the training data (as Once-for-All's validation subset) and is what the accuracy predictor
is fitted on; `val` is the official validation split where a format has one, else a stratified part of the data.
"""

from edgenas.data.load import DATASET_KINDS, AnyDataset, check_dataset_spec, load_dataset, parse_spec
from edgenas.data.memory import BatchLoader, Dataset, augment_batch
from edgenas.data.shapes import SHAPE_CLASSES, make_shapes
from edgenas.data.splits import SPLITS
from edgenas.data.stream import StepResolutions, StreamingDataset, StreamLoader

__all__ = ["DATASET_KINDS", "SHAPE_CLASSES", "SPLITS", "AnyDataset", "BatchLoader", "Dataset", "StepResolutions",
           "StreamLoader", "StreamingDataset", "augment_batch", "check_dataset_spec", "load_dataset", "make_shapes",
           "parse_spec"]
