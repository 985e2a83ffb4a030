"""The trees a benchmark compares: this checkout and, when asked, a worktree of a baseline."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def compared_trees(root: Path, baseline: str | None) -> Iterator[dict[str, Path]]:
    """``{"baseline": <worktree of REF>, "this tree": root}``, or only this tree without a
    ``baseline``; the temporary worktree is removed afterwards."""
    if not baseline:
        yield {"this tree": root}
        return
    path = Path(tempfile.mkdtemp(prefix="pathgen-baseline-"))
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(path), baseline], check=True
    )
    try:
        yield {"baseline": path, "this tree": root}
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)])
        shutil.rmtree(path, ignore_errors=True)
