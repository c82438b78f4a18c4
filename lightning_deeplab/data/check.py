"""Checking a split's files before training: what the file headers tell, for every sample.

PIL's ``Image.open`` reads only a file's header (format, mode, size), so opening every image
and label of a split is cheap, and done in a thread pool it takes seconds for VOC. Every
problem of every sample is collected, so one error lists them all (file and list line).
Pixel values (class ids out of range, truncated data) are only seen when a sample is decoded;
those errors name the file too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, UnidentifiedImageError

from .files import INDEX_LABEL_MODES, LabelledImage

#: Splits of at least this many samples show a progress bar while they are checked.
PROGRESS_MIN_SAMPLES = 2000
#: Threads that open file headers (I/O bound: more than the cores pays off on network disks).
CHECK_THREADS = 16

#: Label files read by other means than PIL (their header tells nothing cheap): existence only.
NON_IMAGE_LABEL_SUFFIXES = (".mat",)


class BadSamples(ValueError):
    """Samples of one or more splits failed the header check; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} problem(s) found in the data before training (fix them, or "
            "turn the check off with --data.check_files false for a trusted dataset):\n" + "\n".join(self.problems)
        )


def _open_header(path: Path, kind: str, prefix: str) -> tuple[Optional[Image.Image], Optional[str]]:
    try:
        return Image.open(path), None
    except FileNotFoundError:
        return None, f"{prefix}{kind} {path} does not exist"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, f"{prefix}{kind} {path} is not a readable image: {err}"


def sample_problems(sample: LabelledImage, labelled: bool = True) -> list[str]:
    """What is wrong with ``sample`` as far as its files' headers tell (empty: nothing)."""
    prefix = f"{sample.where}: " if sample.where else ""
    problems: list[str] = []
    image, problem = _open_header(sample.image, "image", prefix)
    if problem:
        problems.append(problem)
    try:
        if not labelled:
            return problems
        if sample.label.suffix.lower() in NON_IMAGE_LABEL_SUFFIXES:
            if not sample.label.is_file():
                problems.append(f"{prefix}label {sample.label} does not exist")
            return problems
        label, problem = _open_header(sample.label, "label", prefix)
        if problem:
            problems.append(problem)
            return problems
        with label:
            if label.mode not in INDEX_LABEL_MODES:
                problems.append(
                    f"{prefix}label {sample.label} has PIL mode {label.mode!r}; expected a palette ('P') "
                    "or grayscale ('L') PNG whose pixel values are class indices"
                )
            if image is not None and label.size != image.size:
                problems.append(
                    f"{prefix}label {sample.label} is {label.size[1]}x{label.size[0]} (HxW) but its image "
                    f"{sample.image} is {image.size[1]}x{image.size[0]}"
                )
        return problems
    finally:
        if image is not None:
            image.close()


def split_problems(samples: Sequence[LabelledImage], what: str, labelled: bool = True) -> list[str]:
    """The problems of every sample of a split, in list order; ``what`` names the split on
    the progress bar (shown for splits of at least :data:`PROGRESS_MIN_SAMPLES` samples)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=min(CHECK_THREADS, max(1, len(samples)))) as pool:
        found = pool.map(lambda s: sample_problems(s, labelled), samples)
        found = tqdm(
            found,
            total=len(samples),
            desc=f"checking {what}",
            unit="sample",
            disable=len(samples) < PROGRESS_MIN_SAMPLES,
        )
        return [problem for problems in found for problem in problems]
