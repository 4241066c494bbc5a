"""Model packs: a folder holding one detector and one recognizer ONNX file plus a manifest.

A pack is what a field technician drops into ``models/``. Its ``manifest.json`` names the
files, their sha256 and the **embedding space** of the recognizer: an id derived from the
recognizer's sha256, stamped on every embedding the pack produces, so that embeddings from
different recognizers are never compared. A pack without a manifest is accepted and gets
one computed from its files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ModelPackError
from agent.vision.onnx_sessions import describe_error

MANIFEST_NAME = "manifest.json"
SCRFD_KPS_OUTPUTS = (9, 15)  # 3 or 5 strides x (scores, boxes, keypoints)

Role = Literal["detector", "recognizer"]


class ManifestFile(BaseModel):
    """One model file of a pack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = Field(min_length=1, description="File name inside the pack folder.")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Expected sha256 (hex); checked at load."
    )


class PackManifest(BaseModel):
    """The content of ``manifest.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, description="Pack name (normally the folder name).")
    detector: ManifestFile
    recognizer: ManifestFile
    embedding_dim: int | None = Field(None, alias="embeddingDim", ge=16, le=4096)
    embedding_space: str | None = Field(None, alias="embeddingSpace")
    license: str | None = Field(None, description="License of the weights, for the record.")
    source: str | None = Field(None, description="Where the files came from.")


@dataclass(frozen=True)
class ModelPack:
    """A verified pack: absolute paths and hashes that match the files on disk."""

    name: str
    path: Path
    detector_path: Path
    detector_sha256: str
    recognizer_path: Path
    recognizer_sha256: str
    embedding_dim: int
    embedding_space: str
    manifest_computed: bool

    def manifest(self) -> PackManifest:
        """The manifest describing this pack (as written to ``manifest.json``)."""
        return PackManifest(
            name=self.name,
            detector=ManifestFile(file=self.detector_path.name, sha256=self.detector_sha256),
            recognizer=ManifestFile(file=self.recognizer_path.name, sha256=self.recognizer_sha256),
            embedding_dim=self.embedding_dim,
            embedding_space=self.embedding_space,
        )


def embedding_space_id(recognizer_sha256: str) -> str:
    """The embedding-space id of a recognizer: a short, stable prefix of its sha256."""
    return f"arcface-{recognizer_sha256[:16]}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


@dataclass(frozen=True)
class OnnxSignature:
    """What a pack needs to know about one ONNX graph."""

    role: Role | None
    inputs: list[list[int | None]]
    outputs: list[list[int | None]]
    problem: str | None = None


def read_verified(path: Path, sha256: str, pack: str) -> bytes:
    """The bytes of a pack file, checked against the sha256 it was verified with. The engine
    hands these very bytes to ONNX Runtime, so a file swapped after ``read_pack`` hashed it
    is refused (ModelPackError) instead of loaded unchecked."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelPackError(pack, f"{path.name} cannot be read: {describe_error(exc)}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelPackError(
            pack,
            f"{path.name} changed after it was verified (sha256 {digest[:12]}..., verified "
            f"{sha256[:12]}...): copy the pack into a new folder instead of over a file",
        )
    return data


def inspect_onnx(path: Path, data: bytes | None = None) -> OnnxSignature:
    """Classify an ONNX file as detector or recognizer by its input and output shapes
    (``data``: its bytes, when already read).

    A detector is SCRFD with keypoints (9 or 15 outputs, NCHW 3-channel input). A recognizer
    takes ``[N, 3, 112, 112]`` and returns one ``[N, D]`` embedding.
    """
    try:
        if data is not None:
            model = onnx.load_model_from_string(data)
        else:
            model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        # DecodeError, OSError, the onnx library's own errors: no common base class.
        return OnnxSignature(
            None, [], [], f"{path.name} is not a readable ONNX file ({describe_error(exc)})"
        )
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_dims(i) for i in model.graph.input if i.name not in initializers]
    outputs = [_dims(o) for o in model.graph.output]
    if len(inputs) != 1 or len(inputs[0]) != 4 or inputs[0][1] != 3:
        return OnnxSignature(
            None, inputs, outputs, f"{path.name} does not take one NCHW 3-channel image"
        )
    if len(outputs) in SCRFD_KPS_OUTPUTS:
        return OnnxSignature("detector", inputs, outputs)
    if len(outputs) == 1 and inputs[0][2:] == [112, 112] and len(outputs[0]) == 2:
        return OnnxSignature("recognizer", inputs, outputs)
    return OnnxSignature(
        None,
        inputs,
        outputs,
        f"{path.name} is neither an SCRFD detector with keypoints ({len(outputs)} outputs) "
        "nor a 112x112 recognizer with one [N, D] output",
    )


def _read_manifest(folder: Path) -> PackManifest | None:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelPackError(
            folder.name, f"{MANIFEST_NAME} cannot be read: {describe_error(exc)}"
        ) from exc
    try:
        return PackManifest.model_validate_json(content)
    except (ValidationError, ValueError) as exc:
        raise ModelPackError(folder.name, f"{MANIFEST_NAME} is invalid: {exc}") from exc


def _discover_files(folder: Path) -> tuple[Path, Path]:
    """Find the detector and recognizer of a pack without a manifest, by graph shape."""
    found: dict[Role, list[Path]] = {"detector": [], "recognizer": []}
    problems = []
    for onnx_path in sorted(folder.glob("*.onnx")):
        sig = inspect_onnx(onnx_path)
        if sig.role is None:
            problems.append(sig.problem or onnx_path.name)
        else:
            found[sig.role].append(onnx_path)
    for role in ("detector", "recognizer"):
        if len(found[role]) != 1:
            detail = f"; {'; '.join(problems)}" if problems else ""
            raise ModelPackError(
                folder.name,
                f"expected exactly one {role} ONNX file, found {len(found[role])}{detail}",
            )
    return found["detector"][0], found["recognizer"][0]


def _pack_file(folder: Path, name: str, role: Role) -> Path:
    """The path of a manifest's file name, refused when it leaves the pack folder (an
    absolute name, ``..``, or a link pointing out): a pack is exactly its folder."""
    path = folder / name
    inside = (
        not Path(name).is_absolute()
        and ".." not in Path(name).parts
        and path.resolve().is_relative_to(folder.resolve())
    )
    if not inside:
        raise ModelPackError(
            folder.name,
            f"{role} file {name!r} is outside the pack folder: the manifest must name a "
            "file inside it (a plain file name such as det.onnx)",
        )
    return path


def _check_file(folder: Path, entry: ManifestFile, role: Role) -> tuple[Path, str]:
    path = _pack_file(folder, entry.file, role)
    if not path.is_file():
        raise ModelPackError(folder.name, f"{role} file {entry.file!r} is missing")
    try:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
    except OSError as exc:  # removed or unreadable while being hashed
        raise ModelPackError(
            folder.name, f"{role} file {entry.file!r} cannot be read: {describe_error(exc)}"
        ) from exc
    if entry.sha256 is not None and digest != entry.sha256:
        raise ModelPackError(
            folder.name,
            f"sha256 of {entry.file} is {digest[:12]}..., manifest says {entry.sha256[:12]}... "
            "(file corrupt or incompletely copied)",
        )
    sig = inspect_onnx(path, data)
    if sig.problem is not None:
        raise ModelPackError(folder.name, sig.problem)
    if sig.role != role:
        raise ModelPackError(folder.name, f"{entry.file} looks like a {sig.role}, not a {role}")
    return path, digest


def read_pack(folder: Path) -> ModelPack:
    """Verify a pack folder and describe it.

    Checks: the manifest (or the files, when it is absent) names one detector and one
    recognizer; each file's sha256 matches the manifest when listed; each graph has the
    shapes its role needs. Raises :class:`ModelPackError` with the reason otherwise (also
    for any unexpected error while reading the folder, chained to it). Loading the graphs
    into ONNX Runtime is the engine's job.
    """
    try:
        return _verify_pack(folder)
    except ModelPackError:
        raise
    except Exception as exc:
        # A folder being copied or removed, odd permissions, a file system error: the
        # caller handles one exception type for every way a pack can be unusable.
        raise ModelPackError(
            folder.name, f"the pack folder cannot be read: {describe_error(exc)}"
        ) from exc


def _verify_pack(folder: Path) -> ModelPack:
    if not folder.is_dir():
        raise ModelPackError(folder.name, f"folder {folder} does not exist")
    manifest = _read_manifest(folder)
    if manifest is None:
        det_file, rec_file = _discover_files(folder)
        manifest = PackManifest(
            name=folder.name,
            detector=ManifestFile(file=det_file.name),
            recognizer=ManifestFile(file=rec_file.name),
        )
        computed = True
    else:
        computed = False
    det_path, det_sha = _check_file(folder, manifest.detector, "detector")
    rec_path, rec_sha = _check_file(folder, manifest.recognizer, "recognizer")
    rec_sig = inspect_onnx(rec_path)
    graph_dim = rec_sig.outputs[0][1]
    dim = manifest.embedding_dim or graph_dim
    if dim is None:
        raise ModelPackError(folder.name, "embedding dimension unknown: set embeddingDim")
    if graph_dim is not None and graph_dim != dim:
        raise ModelPackError(
            folder.name, f"manifest says embeddingDim {dim}, recognizer outputs {graph_dim}"
        )
    space = embedding_space_id(rec_sha)
    if manifest.embedding_space is not None and manifest.embedding_space != space:
        raise ModelPackError(
            folder.name,
            f"manifest embeddingSpace {manifest.embedding_space!r} does not match the "
            f"recognizer file ({space!r})",
        )
    return ModelPack(
        name=manifest.name,
        path=folder.resolve(),
        detector_path=det_path.resolve(),
        detector_sha256=det_sha,
        recognizer_path=rec_path.resolve(),
        recognizer_sha256=rec_sha,
        embedding_dim=dim,
        embedding_space=space,
        manifest_computed=computed,
    )


def write_manifest(
    pack: ModelPack,
    *,
    name: str | None = None,
    license: str | None = None,
    source: str | None = None,
) -> Path:
    """Write ``manifest.json`` for a verified pack (atomically: temp file, then rename)."""
    manifest = pack.manifest().model_copy(
        update={"name": name or pack.name, "license": license, "source": source}
    )
    target = pack.path / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    text = json.dumps(manifest.model_dump(by_alias=True, exclude_none=True), indent=2)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def list_pack_dirs(models_dir: Path) -> list[Path]:
    """Sub-folders of ``models_dir`` that may hold a pack (hidden and temp folders skipped)."""
    if not models_dir.is_dir():
        return []
    return sorted(
        p
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and not p.name.endswith(".tmp")
    )


def select_pack(models_dir: Path, configured: str) -> ModelPack:
    """Choose and verify the active pack.

    Rule: the configured pack when ``configured`` is set; otherwise the only valid pack, or
    the newest valid pack by folder modification time when there are several.
    """
    if configured:
        return read_pack(models_dir / configured)
    candidates = list_pack_dirs(models_dir)
    if not candidates:
        raise ModelPackError("(none)", f"no model pack folder in {models_dir}")
    errors = []
    for folder in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            return read_pack(folder)
        except ModelPackError as exc:
            errors.append(exc.message)
    raise ModelPackError("(none)", "no valid pack: " + "; ".join(errors))


@dataclass(frozen=True)
class PackCheck:
    """The verdict of ``models verify`` on one pack folder."""

    folder: str
    pack: ModelPack | None  # None when the folder is not a usable pack
    reason: str | None  # why not

    def line(self) -> str:
        """The line ``models verify`` prints for this folder."""
        if self.pack is None:
            return f"INVALID {self.folder}: {self.reason}"
        origin = "computed" if self.pack.manifest_computed else "manifest"
        return (
            f"OK {self.pack.name}: space {self.pack.embedding_space}, "
            f"dim {self.pack.embedding_dim} ({origin})"
        )


def verify_packs(models_dir: Path, pack: str = "") -> list[PackCheck]:
    """Verify one pack folder (``pack``) or every pack folder of ``models_dir`` (blocking:
    it hashes the files). An empty list means no pack folder was found."""
    folders = [models_dir / pack] if pack else list_pack_dirs(models_dir)
    checks = []
    for folder in folders:
        try:
            checks.append(PackCheck(folder.name, read_pack(folder), None))
        except ModelPackError as exc:
            checks.append(PackCheck(folder.name, None, exc.reason))
    return checks
