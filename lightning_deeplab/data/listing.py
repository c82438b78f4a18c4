"""Finding a dataset's files: list files, split folders, and errors that name what is missing.

Every reader checks that the files of a split exist when the split is opened (cheap: no file is
decoded), so a wrong root or a stale list fails before training starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

#: How many missing files an error lists before it only counts the rest.
SHOWN_PROBLEMS = 5


class MissingFiles(FileNotFoundError):
    """Files of a split are absent. Carries every problem and the split's samples (missing ones
    included), so a caller that checks the whole split can report these with its other findings."""

    def __init__(self, problems: Sequence[str], samples: Sequence = ()) -> None:
        self.problems = list(problems)
        self.samples = list(samples)
        shown = len(self.problems) - SHOWN_PROBLEMS
        more = f"\n... and {shown} more" if shown > 0 else ""
        super().__init__("\n".join(self.problems[:SHOWN_PROBLEMS]) + more)


def raise_if_missing(problems: Sequence[str], samples: Sequence = ()) -> None:
    """Raise :class:`MissingFiles` listing the first problems (one line each) and counting the
    rest; ``samples``: the split's samples, kept on the error."""
    if problems:
        raise MissingFiles(problems, samples)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder; otherwise raise FileNotFoundError naming ``what``."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a folder)")
    return path


def require_split_dir(parent: Path, split: str, what: str) -> Path:
    """``parent / split`` if it is a folder; otherwise a FileNotFoundError listing the splits
    (sub-folders of ``parent``) that are there."""
    folder = parent / split
    if not folder.is_dir():
        present = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise FileNotFoundError(
            f"{what} folder {folder} of split {split!r} not found; splits present: {present or 'none'}"
        )
    return folder


def read_list_lines(list_file: Path) -> list[tuple[int, list[str]]]:
    """The non-blank lines of a list file as ``(line number, whitespace-separated fields)``."""
    if not list_file.is_file():
        raise FileNotFoundError(f"list file {list_file} does not exist")
    lines = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split()
        if fields:
            lines.append((lineno, fields))
    return lines


def require_list_file(list_file: Path, what: str = "split list") -> Path:
    """``list_file`` if it is a file; otherwise FileNotFoundError naming the lists (splits)
    present beside it."""
    if not list_file.is_file():
        present = sorted(p.stem for p in list_file.parent.glob("*.txt"))
        raise FileNotFoundError(f"{what} {list_file} not found; splits present: {present or 'none'}")
    return list_file


def name_under(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` without its extension (POSIX separators), or its stem: the
    name its outputs get."""
    try:
        return path.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def read_path_list(list_file: Path) -> list[tuple[int, str, Path]]:
    """``(line number, name, path)`` of every path in a list file: one per line, relative to the
    list's folder or absolute; blank lines and ``#`` comments skipped; name as :func:`name_under`."""
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else list_file.parent / path))
        entries.append((lineno, name_under(path, list_file.parent), path))
    return entries


def require_samples(samples: Sequence, where: str) -> None:
    """Raise ValueError when a split turned out empty; ``where`` says what was searched."""
    if not samples:
        raise ValueError(f"empty split: {where}")


def missing_files(checks: Iterable[tuple[str, Path]]) -> list[str]:
    """``"<where> <path> does not exist"`` for each ``(where, path)`` whose file is absent
    (``where`` e.g. ``"train.txt:3: image"``)."""
    return [f"{where} {path} does not exist" for where, path in checks if not path.is_file()]
