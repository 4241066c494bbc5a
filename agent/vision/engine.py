"""The recognition engine: detect (SCRFD) -> align (5 points) -> embed (ArcFace).

InsightFace's model wrappers do the pre- and post-processing (anchors, NMS, the input
normalisation the recognizer was trained with) on sessions this module builds, so results
stay equivalent to InsightFace's reference pipeline while the sessions get the options and
the graph rewrite measured fastest here. The engine is immutable after construction and
safe to call from several worker threads at once (ONNX Runtime sessions are thread-safe).
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

from agent.config import ModelsConfig, RecognitionConfig
from agent.errors import ModelPackError
from agent.status.models import EngineInfo
from agent.vision.faces import DETECTOR_STRIDE, DetectedFace, Face, FloatArray, Image
from agent.vision.modelpack import ModelPack, read_verified
from agent.vision.onnx_sessions import ProviderReport, create_session, describe_error

log = logging.getLogger(__name__)

# insightface's norm_crop calls scikit-image's SimilarityTransform.estimate, deprecated in
# scikit-image 0.26 with an identical result; the warning would repeat on every face.
warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning)

STRIDE = DETECTOR_STRIDE
EMBED_BATCH = 4  # faces per recognizer call (see FaceEngine.embed)


def detector_input_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Detector input (w, h) that keeps the frame's aspect ratio, long side = ``long_side``.

    The frame is scaled exactly as a square ``long_side`` input would scale it, so the same
    faces are found, but no time is spent on padding: 1280x720 -> 640x384 (0.6 of 640x640).
    """
    if width <= 0 or height <= 0:
        raise ValueError("image has no pixels")
    if width >= height:
        short = math.ceil(long_side * height / width / STRIDE) * STRIDE
        return long_side, max(STRIDE, short)
    short = math.ceil(long_side * width / height / STRIDE) * STRIDE
    return max(STRIDE, short), long_side


class FaceEngine:
    """Detector + recognizer of one model pack, ready to run."""

    def __init__(
        self, pack: ModelPack, models: ModelsConfig, recognition: RecognitionConfig
    ) -> None:
        started = time.perf_counter()
        self.pack = pack
        self.recognition = recognition
        # create_session translates ONNX Runtime's own errors; the InsightFace wrappers
        # and the warm-up run may still raise anything (asserts, IndexError, ORT run
        # errors), so each step is translated here with the file it concerns.
        # The bytes that were hashed are the bytes loaded: a file swapped after the pack
        # was verified is refused, never loaded unchecked (the wrappers get no path).
        det_data = read_verified(pack.detector_path, pack.detector_sha256, pack.name)
        rec_data = read_verified(pack.recognizer_path, pack.recognizer_sha256, pack.name)
        det_session, det_report = create_session(
            pack.detector_path,
            det_data,
            models.providers,
            models.intra_op_threads,
            tensorrt_cache=models.tensorrt_cache_dir,
            pack=pack.name,
        )
        rec_session, rec_report = create_session(
            pack.recognizer_path,
            rec_data,
            models.providers,
            models.intra_op_threads,
            optimize_prelu=models.optimize_prelu,
            tensorrt_cache=models.tensorrt_cache_dir,
            pack=pack.name,
        )
        try:
            # No model_file: SCRFD would re-read it by path for its input size; the
            # session's own input shape is the same graph's.
            self._detector = SCRFD(None, session=det_session, static_shape_sessions=False)
            self._detector.nms_thresh = recognition.nms_threshold
        except Exception as exc:
            raise ModelPackError(
                pack.name,
                f"detector {pack.detector_path.name} is not a usable SCRFD model: "
                f"{describe_error(exc)}",
            ) from exc
        try:
            # ArcFaceONNX reads its graph (for input normalisation): from the same bytes.
            self._recognizer = ArcFaceONNX(io.BytesIO(rec_data), session=rec_session)
        except Exception as exc:
            raise ModelPackError(
                pack.name,
                f"recognizer {pack.recognizer_path.name} is not a usable ArcFace model: "
                f"{describe_error(exc)}",
            ) from exc
        if not self._detector.use_kps:
            raise ModelPackError(pack.name, "the detector has no keypoint outputs")
        self.providers: dict[str, ProviderReport] = {
            "detector": det_report,
            "recognizer": rec_report,
        }
        self._warm_up()
        self.load_seconds = time.perf_counter() - started

    @property
    def embedding_space(self) -> str:
        """Id stamped on every embedding this engine produces."""
        return self.pack.embedding_space

    @property
    def embedding_dim(self) -> int:
        """Length of each embedding."""
        return self.pack.embedding_dim

    def provider_warnings(self) -> list[str]:
        """'requested X, running on Y' sentences, one per degraded session."""
        return [
            f"{role}: {warning}"
            for role, report in self.providers.items()
            if (warning := report.warning()) is not None
        ]

    def _warm_up(self) -> None:
        # The first run of a session costs 100-400 ms (kernel selection); pay it at load.
        # It is also the first time each graph really runs, so a graph that loads but
        # cannot execute (bad shapes, a kernel failing) is caught here, not in a session.
        blank = np.zeros((STRIDE * 3, STRIDE * 4, 3), np.uint8)
        try:
            self.detect(blank)
        except Exception as exc:
            raise ModelPackError(
                self.pack.name,
                f"detector {self.pack.detector_path.name} fails its first run: "
                f"{describe_error(exc)}",
            ) from exc
        try:
            out = self.embed([np.zeros((112, 112, 3), np.uint8)])
        except Exception as exc:
            raise ModelPackError(
                self.pack.name,
                f"recognizer {self.pack.recognizer_path.name} fails its first run: "
                f"{describe_error(exc)}",
            ) from exc
        if out.shape != (1, self.embedding_dim) or not np.all(np.isfinite(out)):
            raise ModelPackError(
                self.pack.name,
                f"recognizer returned shape {out.shape}, expected (1, {self.embedding_dim})",
            )

    def detect(
        self, image: Image, *, long_side: int | None = None, threshold: float | None = None
    ) -> list[DetectedFace]:
        """Find faces in a BGR image; sorted by detector score, best first."""
        height, width = image.shape[:2]
        size = detector_input_size(width, height, long_side or self.recognition.det_long_side)
        boxes, kpss = self._detector.detect(
            image,
            input_size=size,
            det_thresh=self.recognition.det_threshold if threshold is None else threshold,
        )
        if kpss is None:
            return []
        return [
            DetectedFace(
                bbox=boxes[i, :4].astype(np.float32),
                score=float(boxes[i, 4]),
                kps=kpss[i].astype(np.float32),
            )
            for i in range(boxes.shape[0])
        ]

    def align(self, image: Image, faces: Sequence[DetectedFace]) -> list[Image]:
        """112x112 crops aligned on the five landmarks (ArcFace template)."""
        size = self._recognizer.input_size[0]
        return [face_align.norm_crop(image, landmark=f.kps, image_size=size) for f in faces]

    def embed(self, crops: Sequence[Image]) -> FloatArray:
        """L2-normalised embeddings of aligned crops, batched.

        Up to ``EMBED_BATCH`` faces go through the recognizer in one call; more are split
        into calls of that size, because bigger batches cost more per face on small CPUs
        (measured, 1 thread: 12-16 ms per face at batch 1-4, 23 ms at 16, 23 ms at 48).
        """
        if not crops:
            return np.zeros((0, self.embedding_dim), np.float32)
        chunks = [
            np.asarray(self._recognizer.get_feat(list(crops[i : i + EMBED_BATCH])), np.float32)
            for i in range(0, len(crops), EMBED_BATCH)
        ]
        raw: FloatArray = np.concatenate(chunks)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        normalised: FloatArray = raw / np.maximum(norms, 1e-12)
        return normalised

    def raw_embedding(self, crop: Image) -> FloatArray:
        """The recognizer's output for one aligned crop, before normalisation (self-tests)."""
        raw: FloatArray = np.asarray(self._recognizer.get_feat([crop]), dtype=np.float32)
        return raw.reshape(-1)

    def analyze(self, image: Image) -> list[Face]:
        """Detect, align and embed every face of a frame (all embeddings in one call)."""
        found = self.detect(image)
        embeddings = self.embed(self.align(image, found))
        return [
            Face(bbox=f.bbox, score=f.score, kps=f.kps, embedding=embeddings[i])
            for i, f in enumerate(found)
        ]

    def describe(self) -> EngineInfo:
        """Model state for status replies and logs (no weights, no embeddings)."""
        return EngineInfo(
            pack=self.pack.name,
            embedding_space=self.embedding_space,
            embedding_dim=self.embedding_dim,
            providers={role: list(r.active) for role, r in self.providers.items()},
            warnings=self.provider_warnings(),
            load_seconds=round(self.load_seconds, 3),
        )


def load_engine(
    models_dir_pack: ModelPack, models: ModelsConfig, recognition: RecognitionConfig
) -> FaceEngine:
    """Build an engine and log what it runs on."""
    engine = FaceEngine(models_dir_pack, models, recognition)
    log.info(
        "MODEL_LOADED pack=%s space=%s dim=%d providers=%s seconds=%.2f",
        engine.pack.name,
        engine.embedding_space,
        engine.embedding_dim,
        engine.providers["recognizer"].active[0],
        engine.load_seconds,
    )
    return engine
