"""The ``[recognition]`` section: detection, full-resolution coverage, matching and the
weighted vote (agent.vision.coverage, agent.vision.evidence, agent.vision.tracker)."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.sections import Section


class RecognitionConfig(Section):
    """Detection and matching parameters."""

    det_long_side: int = Field(
        640,
        ge=160,
        le=1920,
        multiple_of=32,
        description=(
            "Detector input size along the frame's long side; the short side follows the "
            "frame's aspect ratio (640 -> 640x384 for 16:9)."
        ),
    )
    det_threshold: float = Field(0.5, ge=0.05, le=0.99, description="Detector score threshold.")
    nms_threshold: float = Field(0.4, ge=0.1, le=0.9, description="Detector NMS IoU threshold.")
    match_threshold: float = Field(
        0.40,
        ge=0.0,
        le=1.0,
        description="Minimum cosine similarity between a face and a student's embedding.",
    )
    match_margin: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Minimum lead of the best student's score over the second-best student's.",
    )
    confirm_k: int = Field(
        2, ge=1, le=50, description="A face is recognised when it matched one student in k ..."
    )
    confirm_n: int = Field(
        3, ge=1, le=50, description="... of its last n analyses (one lucky frame is not enough)."
    )
    min_face_px: int = Field(
        16,
        ge=8,
        le=1000,
        description="Faces narrower than this (source pixels) are not recognised. Faces "
        "of 16-18 px are found at native resolution and match their student (genuine "
        "0.34-0.60, impostors at most 0.31 in the test photos); below, detection fails.",
    )
    candidate_threshold: float = Field(
        0.1,
        ge=0.01,
        le=0.99,
        description="Detector score above which a face on the shrunk frame is a candidate: "
        "small or unsure candidates are checked again at native resolution "
        "(agent.vision.coverage). At 0.1 the shrunk 1080p frame proposes 16-19 of 19 faces of "
        "16-28 px.",
    )
    refine_below_px: int = Field(
        64,
        ge=0,
        le=1000,
        description="Faces found on the shrunk frame narrower than this (source pixels) are "
        "re-detected at native resolution before they are aligned: the shrunk frame's "
        "landmarks are too coarse for them. 0: never.",
    )
    sweep_min_interval_s: float = Field(
        5.0,
        ge=0.5,
        le=3600,
        description="Full-resolution sweeps (tiles at native resolution, one per "
        "analysis) look for faces too small to be proposed, while the session has roster "
        "students not yet recognised; after a sweep that found someone new, the next "
        "starts this long after.",
    )
    sweep_max_interval_s: float = Field(
        60.0,
        ge=0.5,
        le=3600,
        description="After a sweep that finds nobody new the pause is 4 x "
        "sweep_min_interval_s, doubling after each such sweep up to this (a "
        "settled room is swept rarely: 24 cameras cost 0.05 of a core); a latecomer too "
        "small even to be proposed by the shrunk frame is found within about this long.",
    )
    full_weight_px: int = Field(
        32,
        ge=8,
        le=1000,
        description="Face width from which a match counts fully; a narrower face's vote "
        "weighs width / full_weight_px (at least 1/4), times its sharpness and detector "
        "score (agent.vision.evidence), so small faces need more agreeing analyses.",
    )
    small_face_margin: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="A vote from a face of weight w needs a score of at least "
        "match_threshold + small_face_margin x (1 - w): weak matches of tiny faces never "
        "add up to a student.",
    )
    track_iou: float = Field(
        0.3, ge=0.05, le=0.95, description="Box overlap that continues a face's track."
    )
    track_max_missed: int = Field(
        4, ge=0, le=100, description="Analyses a track survives without its face."
    )
    reembed_every: int = Field(
        8,
        ge=1,
        le=1000,
        description="A stranger's track (matching nobody) is re-checked every this many "
        "analyses, so a student who turns to the camera late is still found; new and "
        "uncertain tracks are embedded at every analysis.",
    )
    recheck_every: int = Field(
        32,
        ge=1,
        le=10_000,
        description="A recognised track is re-checked every this many analyses (in case "
        "the tracker swapped two faces); re-checking settled faces often was most of the "
        "recognizer's work on a busy box.",
    )
    instant_score: float = Field(
        0.6,
        ge=0.0,
        le=2.0,
        description="One match at least this strong (and with match_margin) recognises a "
        "student at once instead of k of n; different people stay far below it with "
        "ArcFace (about 0.2 at most in the test photos). Above 1.0: always k of n.",
    )
    stranger_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="A face is taken for a stranger (and re-checked only every "
        "reembed_every analyses) when its match scores stayed below the threshold minus "
        "this margin over confirm_n analyses; a face that came closer is embedded at "
        "every analysis until it is recognised.",
    )
    continuous_interval_s: float = Field(
        60.0,
        ge=1.0,
        le=86_400,
        description="CONTINUOUS mode: re-report a student seen again after this long.",
    )
    face_jpeg: bool = Field(
        False,
        description="Attach a small JPEG crop of the face to recognition events "
        "(kept only until delivered).",
    )

    @model_validator(mode="after")
    def _k_of_n(self) -> RecognitionConfig:
        if self.confirm_k > self.confirm_n:
            raise ValueError("confirm_k must not exceed confirm_n")
        if self.sweep_min_interval_s > self.sweep_max_interval_s:
            raise ValueError("sweep_min_interval_s must not exceed sweep_max_interval_s")
        return self
