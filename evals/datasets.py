"""Dataset loaders: benchmark folder layouts and CSV lists, as `Category` objects of `Sample`s.

Layouts (`LAYOUTS`; `detect_layout` picks one, `--layout` forces it):

- ``folder`` (alias ``mvtec``): ``<root>/<category>/{train/good, test/<type>, ground_truth/<type>}``,
  the MVTec AD tree. A mask is ``ground_truth/<type>/<stem>_mask.<ext>`` or ``<stem>.<ext>``, so
  VisA after its 1-class split script (``test/bad``, ``ground_truth/bad/<stem>.png``) loads too.
- ``mvtec_loco``: as ``folder`` but each mask is a folder ``ground_truth/<type>/<stem>/*.png``
  whose masks are merged (union) into one.
- ``mvtec_3d``: MVTec 3D-AD, RGB only: ``test/<type>/rgb/*.png`` with masks in ``test/<type>/gt/``.
- ``visa``: VisA as downloaded, split by its ``split_csv/1cls.csv`` (columns object, split, label,
  image, mask; label "normal" or "anomaly").
- ``csv``: a CSV list with columns ``path, label`` and optionally ``category, mask, split,
  defect_type, fold`` (paths relative to the CSV's folder; ``split=train`` normal rows become references).

Folds: a ``fold`` column (e.g. ``dev`` / ``test``) splits the test images so that settings are chosen on
one part and reported on the other. The ``csv`` layout reads it from its list; a folder tree reads it
from an ``index.csv`` beside the category folders (same columns) when there is one. `load_dataset(...,
fold="dev")` keeps only the test images of that fold (the references are unchanged).

A root may also be one category folder (it has ``test/``); its name is the category.
The test folder named ``good`` holds normal images; every other test folder holds anomalies.
"""

from __future__ import annotations

import csv
import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agent.errors import UserInputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = ("auto", "folder", "mvtec", "mvtec_loco", "mvtec_3d", "visa", "csv")
NORMAL_NAMES = ("good", "normal", "ok")
_TRUE_LABELS = ("1", "anomalous", "anomaly", "abnormal", "bad", "defect", "defective", "ng", "true")
_FALSE_LABELS = ("0", "normal", "good", "ok", "false")


class DatasetError(UserInputError):
    """A dataset that cannot be loaded as asked; the message names the path and the fix."""


@dataclass(frozen=True)
class Sample:
    """One test image.

    Attributes:
        path: image file path (absolute).
        category: category name.
        label: 0 normal, 1 anomalous.
        defect_type: the test folder's name ("good" for normal images).
        mask_path: ground-truth mask, a 0/255 (or 0/k) PNG at the image's size, or a folder of such
            masks merged by union (MVTec LOCO); None when there is none (normal images, or no masks).
        fold: the image's fold ("dev", "test", ...) from a ``fold`` column; None when not given.
    """

    path: str
    category: str
    label: int
    defect_type: str
    mask_path: str | None = None
    fold: str | None = None


@dataclass
class Category:
    """One category: its normal training images (references) and its test samples.

    Attributes:
        name: category name.
        train_good: normal reference image paths, sorted by name.
        test: test samples, sorted by (defect_type, path).
    """

    name: str
    train_good: list[str] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        """True when any anomalous test sample has a ground-truth mask."""
        return any(s.mask_path for s in self.test if s.label == 1)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_category_dir(path: Path) -> bool:
    return (path / "test").is_dir()


def _category_dirs(root: Path) -> list[Path]:
    if _is_category_dir(root):
        return [root]
    return [d for d in _subdirs(root) if _is_category_dir(d)]


def detect_layout(root: str | Path) -> str:
    """Guess the layout of `root` (one of `LAYOUTS` except "auto").

    Raises:
        DatasetError: nothing recognisable at `root`.
    """
    root = Path(root)
    if not root.exists():
        msg = f"dataset root {root} not found. Fix: check the path"
        raise DatasetError(msg)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        msg = f"{root} is a file but not a .csv list. Fix: pass a dataset folder or a CSV list"
        raise DatasetError(msg)
    if (root / "split_csv" / "1cls.csv").is_file():
        return "visa"
    cats = _category_dirs(root)
    if not cats:
        msg = (
            f"no category folders with a test/ subfolder under {root}. Fix: pass the dataset root "
            "(<root>/<category>/test/...), a category folder, or a CSV list (--layout csv)"
        )
        raise DatasetError(msg)
    for cat in cats:
        for type_dir in _subdirs(cat / "test"):
            if (type_dir / "rgb").is_dir():
                return "mvtec_3d"
        for type_dir in _subdirs(cat / "ground_truth"):
            if _subdirs(type_dir):
                return "mvtec_loco"
    return "folder"


def _folder_mask(gt_dir: Path, stem: str) -> str | None:
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_EXTS:
            cand = gt_dir / f"{name}{ext}"
            if cand.is_file():
                return str(cand)
    return None


def _load_tree(cat_dir: Path, layout: str) -> Category:
    name = cat_dir.name
    if layout == "mvtec_3d":
        train = _images(cat_dir / "train" / "good" / "rgb")
    else:
        train = _images(cat_dir / "train" / "good")
    test: list[Sample] = []
    for type_dir in _subdirs(cat_dir / "test"):
        dtype = type_dir.name
        label = 0 if dtype.lower() in NORMAL_NAMES else 1
        img_dir = type_dir / "rgb" if layout == "mvtec_3d" else type_dir
        for img in _images(img_dir):
            mask = None
            if label == 1:
                if layout == "mvtec_3d":
                    mask = _folder_mask(type_dir / "gt", img.stem)
                elif layout == "mvtec_loco":
                    mdir = cat_dir / "ground_truth" / dtype / img.stem
                    mask = str(mdir) if _images(mdir) else None
                else:
                    mask = _folder_mask(cat_dir / "ground_truth" / dtype, img.stem)
            test.append(Sample(str(img), name, label, dtype, mask))
    return Category(name=name, train_good=[str(p) for p in train], test=test)


def _parse_label(value: str, where: str) -> int:
    v = str(value).strip().lower()
    if v in _TRUE_LABELS:
        return 1
    if v in _FALSE_LABELS:
        return 0
    msg = f"{where}: label {value!r} is neither normal nor anomalous. Fix: use 0/1 (or normal/anomalous)"
    raise DatasetError(msg)


def _resolve(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def _load_csv(csv_path: Path) -> list[Category]:
    base = csv_path.parent
    cats: dict[str, Category] = {}
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        for need in ("path", "label"):
            if need not in fields:
                msg = (
                    f"{csv_path}: missing column {need!r} (found {', '.join(fields) or 'none'}). "
                    "Fix: the header must have path,label and optionally category,mask,split,defect_type"
                )
                raise DatasetError(msg)
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{csv_path}:{lineno}"
            label = _parse_label(row["label"], where)
            cat_name = row.get("category") or csv_path.stem
            cat = cats.setdefault(cat_name, Category(name=cat_name))
            path = _resolve(base, row["path"])
            split = row.get("split", "test").lower() or "test"
            if split in ("train", "validation", "val"):
                if label == 0 and split == "train":
                    cat.train_good.append(path)
                continue
            mask = _resolve(base, row["mask"]) if row.get("mask") else None
            dtype = row.get("defect_type") or ("good" if label == 0 else "anomalous")
            cat.test.append(Sample(path, cat_name, label, dtype, mask, row.get("fold") or None))
    return list(cats.values())


def read_folds(csv_path: Path) -> dict[str, str]:
    """Resolved image path -> fold, from a CSV list's ``path`` and ``fold`` columns ({} without them)."""
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if "path" not in fields or "fold" not in fields:
            return {}
        return {
            _resolve(csv_path.parent, row[fields["path"]].strip()): row[fields["fold"]].strip()
            for row in reader
            if (row.get(fields["fold"]) or "").strip()
        }


def _tree_folds(root: Path, cats: list[Category]) -> list[Category]:
    """Attach folds from an ``index.csv`` beside the category folders (root, or its parent for one category)."""
    for where in (root, root.parent):
        index = where / "index.csv"
        if index.is_file():
            folds = read_folds(index)
            if folds:
                for cat in cats:
                    cat.test = [
                        dataclasses.replace(s, fold=folds.get(str(Path(s.path).resolve()))) for s in cat.test
                    ]
            break
    return cats


def select_fold(cats: list[Category], fold: str, source: str) -> list[Category]:
    """Keep only the test samples of `fold`; categories left without test images are dropped.

    Raises:
        DatasetError: no sample has a fold, or none has this one (the message lists those found).
    """
    found = sorted({s.fold for c in cats for s in c.test if s.fold})
    if not found:
        msg = (
            f"--fold {fold}: {source} has no fold column. Fix: add a 'fold' column to its CSV list "
            "(or an index.csv beside the category folders), or leave out --fold"
        )
        raise DatasetError(msg)
    if fold not in found:
        msg = f"--fold {fold}: no test image of {source} is in fold {fold!r}. Fix: use one of {', '.join(found)}"
        raise DatasetError(msg)
    out = []
    for cat in cats:
        test = [s for s in cat.test if s.fold == fold]
        if test:
            out.append(Category(name=cat.name, train_good=cat.train_good, test=test))
    return out


def _load_visa(root: Path) -> list[Category]:
    split_csv = root / "split_csv" / "1cls.csv"
    cats: dict[str, Category] = {}
    with split_csv.open(newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            where = f"{split_csv}:{lineno}"
            try:
                name, split, label_s, image = row["object"], row["split"], row["label"], row["image"]
            except KeyError as exc:
                msg = f"{where}: missing column {exc}. Fix: use VisA's split_csv/1cls.csv unchanged"
                raise DatasetError(msg) from None
            cat = cats.setdefault(name, Category(name=name))
            label = _parse_label(label_s, where)
            path = _resolve(root, image)
            if split.strip().lower() == "train":
                if label == 0:
                    cat.train_good.append(path)
                continue
            mask = _resolve(root, row["mask"]) if (row.get("mask") or "").strip() else None
            cat.test.append(Sample(path, name, label, "good" if label == 0 else "bad", mask))
    return list(cats.values())


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) from the header, without decoding."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        msg = f"image {path} not found. Fix: check the dataset (or the CSV's paths)"
        raise DatasetError(msg) from None
    except OSError as exc:
        msg = f"cannot read {path} ({exc}). Fix: re-copy the file or remove it from the dataset"
        raise DatasetError(msg) from None


def _mask_files(mask_path: str) -> list[str]:
    p = Path(mask_path)
    if p.is_dir():
        files = [str(f) for f in _images(p)]
        if not files:
            msg = f"mask folder {p} holds no PNG masks. Fix: check the ground_truth folder"
            raise DatasetError(msg)
        return files
    return [mask_path]


def check_masks(category: Category) -> None:
    """Check that every mask exists and has its image's size (header reads only).

    Raises:
        DatasetError: a missing mask file or a size mismatch, naming both files.
    """
    for s in category.test:
        if not s.mask_path:
            continue
        size = _image_size(s.path)
        for mf in _mask_files(s.mask_path):
            msize = _image_size(mf)
            if msize != size:
                msg = (
                    f"mask {mf} is {msize[0]}x{msize[1]} but its image {s.path} is {size[0]}x{size[1]}. "
                    "Fix: regenerate the mask at the image's size or remove it"
                )
                raise DatasetError(msg)


def load_mask(mask_path: str | None, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as HxW bool (a folder of masks is merged by union).

    Pixels above 127 are anomalous for 0/255 masks; masks whose maximum is <= 127 (VisA's 0/1
    class-index masks) count every non-zero pixel. `mask_path=None` gives an all-False mask of
    `size_hw` (normal images).
    """
    if mask_path is None:
        if size_hw is None:
            msg = "load_mask(None) needs size_hw"
            raise ValueError(msg)
        return np.zeros(size_hw, dtype=bool)
    out: np.ndarray | None = None
    for mf in _mask_files(mask_path):
        with Image.open(mf) as im:
            arr = np.asarray(im.convert("L"))
        binary = arr > (127 if arr.max() > 127 else 0)
        out = binary if out is None else (out | binary)
    assert out is not None
    return out


def load_dataset(
    root: str | Path,
    layout: str = "auto",
    categories: Iterable[str] | None = None,
    check: bool = True,
    fold: str | None = None,
) -> list[Category]:
    """Load a dataset's categories.

    Args:
        root: dataset folder, one category folder, or a CSV file (a folder with ``index.csv`` for
            ``layout="csv"``).
        layout: one of `LAYOUTS`; "auto" detects it.
        categories: keep only these (None: all), in the order given.
        check: verify masks against image sizes (header reads only).
        fold: keep only the test images of this fold (see the module docstring); None: all.

    Returns:
        Categories sorted by name (or in the order of `categories`), each with >= 1 test image.

    Raises:
        DatasetError: unknown layout, unknown category, an empty category, or a bad mask.
    """
    root = Path(root).expanduser().absolute()
    if layout not in LAYOUTS:
        msg = f"unknown layout {layout!r}. Fix: use one of {', '.join(LAYOUTS)}"
        raise DatasetError(msg)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "mvtec":
        layout = "folder"
    if layout == "csv":
        csv_path = root / "index.csv" if root.is_dir() else root
        if not csv_path.is_file():
            msg = f"CSV list {csv_path} not found. Fix: pass the CSV file itself"
            raise DatasetError(msg)
        cats = _load_csv(csv_path)
    elif layout == "visa":
        if not (root / "split_csv" / "1cls.csv").is_file():
            msg = f"{root} has no split_csv/1cls.csv. Fix: pass VisA's root folder, or --layout folder after its split script"
            raise DatasetError(msg)
        cats = _load_visa(root)
    else:
        dirs = _category_dirs(root)
        if not dirs:
            msg = f"no category folders with a test/ subfolder under {root}. Fix: check the path or --layout"
            raise DatasetError(msg)
        cats = _tree_folds(root, [_load_tree(d, layout) for d in dirs])
    if fold is not None:
        cats = select_fold(cats, fold, str(root))
    by_name = {c.name: c for c in cats}
    if categories:
        wanted = list(dict.fromkeys(categories))
        unknown = [c for c in wanted if c not in by_name]
        if unknown:
            msg = f"unknown category {', '.join(unknown)} in {root}. Fix: use one of {', '.join(sorted(by_name))}"
            raise DatasetError(msg)
        cats = [by_name[c] for c in wanted]
    else:
        cats = sorted(cats, key=lambda c: c.name)
    for cat in cats:
        cat.train_good.sort()
        cat.test.sort(key=lambda s: (s.defect_type, s.path))
        if not cat.test:
            msg = f"category {cat.name!r} has no test images (layout {layout}, root {root}). Fix: check its test/ folder or exclude it with --category"
            raise DatasetError(msg)
        if check:
            check_masks(cat)
    return cats


def _rng(seed: int, repeat: int) -> random.Random:
    """The generator of one (seed, repeat) draw; distinct seeds never share a repeat's draw."""
    return random.Random(f"shots/{seed}/{repeat}")


def select_references(train_good: list[str], shots: int, seed: int | None = None, repeat: int = 0) -> list[str]:
    """Pick `shots` normal references: the first K sorted by name, or a seeded random draw.

    Args:
        train_good: candidate paths.
        shots: K (0: zero-shot, no references).
        seed: None for the first K by name; else a random draw seeded by (seed, repeat).
        repeat: repeat index (different draws per repeat).

    Raises:
        DatasetError: fewer candidates than K.
    """
    if shots <= 0:
        return []
    pool = sorted(train_good)
    if len(pool) < shots:
        msg = f"--shots {shots} needs {shots} normal training images but only {len(pool)} exist. Fix: lower --shots"
        raise DatasetError(msg)
    if seed is None:
        return pool[:shots]
    return sorted(_rng(seed, repeat).sample(pool, shots))


def select_anomaly_shots(test: list[Sample], m: int, seed: int | None = None, repeat: int = 0) -> list[Sample]:
    """Pick `m` labelled anomalies per defect type round-robin (first by name, or seeded random).

    The chosen samples go to memory and must be excluded from the test set.
    """
    if m <= 0:
        return []
    anomalies = [s for s in test if s.label == 1]
    if len(anomalies) < m:
        msg = f"--anomaly-shots {m} needs {m} anomalous test images but only {len(anomalies)} exist. Fix: lower --anomaly-shots"
        raise DatasetError(msg)
    by_type: dict[str, list[Sample]] = {}
    for s in anomalies:
        by_type.setdefault(s.defect_type, []).append(s)
    rng = _rng(seed, repeat) if seed is not None else None
    queues = []
    for dtype in sorted(by_type):
        items = sorted(by_type[dtype], key=lambda s: s.path)
        if rng is not None:
            rng.shuffle(items)
        queues.append(items)
    picked: list[Sample] = []
    while len(picked) < m:
        for q in queues:
            if q and len(picked) < m:
                picked.append(q.pop(0))
    return picked
