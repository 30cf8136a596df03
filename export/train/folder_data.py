"""Read an ImageFolder-layout directory (one sub-folder per class) into resized uint8 images.

Each file is decoded and resized by service.preprocess with the model's own config, exactly as the
server will; normalisation is applied later (`FolderData.inputs`), after augmentation. Counts are
checked before anything is decoded: at most MAX_CLASSES classes and MAX_IMAGES images, each file at
most MAX_FILE_BYTES, so a wrong --data path (a home directory) fails at once instead of reading it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.config import PreprocessingConfig
from service.preprocess import convert_color, decode_image, normalize, resize_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MAX_CLASSES = 1000
MAX_IMAGES = 100_000
MAX_FILE_BYTES = 20 * 1024 * 1024


class FolderDataError(ValueError):
    """The folder is not an ImageFolder layout this command can train on."""


@dataclass(frozen=True)
class FolderData:
    """Resized uint8 images [N, H, W, C], labels [N] (indices into `classes`), and their config."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    preprocessing: PreprocessingConfig

    def inputs(self, images: np.ndarray | None = None) -> np.ndarray:
        """Normalised NCHW float32 model inputs of `images` (default: this set's own)."""
        images = self.images if images is None else images
        return np.stack([normalize(image, self.preprocessing) for image in images])

    def subset(self, index: np.ndarray) -> FolderData:
        return replace(self, images=self.images[index], labels=self.labels[index])


def _class_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise FolderDataError(f"{root}: not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2 or len(folders) > MAX_CLASSES:
        raise FolderDataError(f"{root}: needs 2 to {MAX_CLASSES} class sub-folders, found {len(folders)}")
    files = {f.name: sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise FolderDataError(f"{root}: class folder(s) without images: {', '.join(empty)}")
    total = sum(map(len, files.values()))
    if total > MAX_IMAGES:
        raise FolderDataError(f"{root}: {total} images, more than the {MAX_IMAGES} this command reads")
    return files


def read_image_folder(root: Path, preprocessing: PreprocessingConfig) -> FolderData:
    """Decode and resize every image under `root`; labels follow the sorted folder names."""
    images, labels = [], []
    files = _class_files(Path(root))
    for label, paths in enumerate(files.values()):
        for path in paths:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise FolderDataError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
            decoded = decode_image(path.read_bytes(), preprocessing)
            resized, _ = resize_image(convert_color(decoded, "bgr", preprocessing.color_order), preprocessing)
            images.append(resized.reshape(resized.shape[0], resized.shape[1], -1))
            labels.append(label)
    return FolderData(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(files), preprocessing)


def stratified_split(data: FolderData, heldout_fraction: float, seed: int) -> tuple[FolderData, FolderData]:
    """Hold out round(fraction × n) images of every class (at least one, leaving at least one)."""
    if not 0 < heldout_fraction < 1:
        raise FolderDataError(f"held-out fraction must be between 0 and 1, not {heldout_fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in range(len(data.classes)):
        index = rng.permutation(np.flatnonzero(data.labels == label))
        if len(index) < 2:
            raise FolderDataError(f"class '{data.classes[label]}' has {len(index)} image; a split needs 2")
        cut = min(len(index) - 1, max(1, round(heldout_fraction * len(index))))
        held.extend(index[:cut])
        train.extend(index[cut:])
    return data.subset(np.sort(train)), data.subset(np.sort(held))
