"""Synthetic classroom videos made from real face photos, with per-frame ground truth.

``make_classroom_frames`` writes JPEG frames ``%04d.jpg`` (what the RTSP camera of the demo
and the tests serves): a fixed, deterministic classroom-like background (gradient,
board, desks, texture) with each person's face photo composited at a chosen size, moving at a
constant velocity during a time window. The returned ``ClassroomPlan`` says, for each frame,
who is on it and where their face box is.

Photos are read in place. A person's ``face_box`` (the face in the photo) sets the scale and
the ground-truth box; get it with ``face_box_of(photo, engine)``, which runs the project's
detector. Without a face box the whole photo is pasted and counts as the face.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from agent.vision.engine import FaceEngine

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2

JPEG_QUALITY = 92


@dataclass(frozen=True)
class Person:
    """One person walking through the scene.

    ``start_xy``: centre of the face box at ``enter_s``, in frame pixels.
    ``velocity_xy``: pixels per second (10 px/s at 10 fps = 1 px per frame).
    ``face_width``: width of the face box in the frame, in pixels (>= ~100 at 640x480 for
    reliable recognition); the height follows the photo's aspect ratio.
    ``face_box``: the face in the photo (x1, y1, x2, y2), e.g. from ``face_box_of``; None uses
    the whole photo. ``margin``: context kept around the face box on each side, as a fraction
    of its size, blended into the background with a soft elliptical edge.
    Visible for ``enter_s <= t < leave_s``.
    """

    name: str
    photo: Path
    enter_s: float
    leave_s: float
    start_xy: tuple[float, float]
    velocity_xy: tuple[float, float] = (0.0, 0.0)
    face_width: int = 120
    face_box: Box | None = None
    margin: float = 0.6

    def centre_at(self, t: float) -> tuple[float, float]:
        """Face-box centre at time ``t`` (seconds from the start of the clip)."""
        dt = t - self.enter_s
        return (
            self.start_xy[0] + self.velocity_xy[0] * dt,
            self.start_xy[1] + self.velocity_xy[1] * dt,
        )

    def visible_at(self, t: float) -> bool:
        """Whether the person is in the scene at ``t``."""
        return self.enter_s <= t < self.leave_s


@dataclass(frozen=True)
class Appearance:
    """A person on one frame: the face box in frame pixels (may extend past the edges)."""

    name: str
    box: Box
    fully_inside: bool

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the face box."""
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def width(self) -> float:
        """Width of the face box in pixels."""
        return self.box[2] - self.box[0]


@dataclass
class ClassroomPlan:
    """What was written: frame files, timing, and the ground truth of every frame."""

    frames_dir: Path
    fps: int
    size: tuple[int, int]  # width, height
    people: tuple[Person, ...]
    frames: list[list[Appearance]] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        """Number of frames written."""
        return len(self.frames)

    @property
    def duration_s(self) -> float:
        """Length of the clip in seconds."""
        return self.n_frames / self.fps

    def path(self, index: int) -> Path:
        """The JPEG file of frame ``index``."""
        return self.frames_dir / f"{index:04d}.jpg"

    def image(self, index: int) -> Image:
        """The frame as written (decoded from its JPEG file), BGR."""
        img = cv2.imread(str(self.path(index)), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(self.path(index))
        return np.asarray(img, dtype=np.uint8)

    def time_of(self, index: int) -> float:
        """Time of frame ``index`` from the start of the clip, in seconds."""
        return index / self.fps

    def index_at(self, t: float) -> int:
        """Frame shown at ``t`` seconds (the clip loops)."""
        return math.floor(t * self.fps + 1e-9) % self.n_frames

    def visible(self, index: int) -> list[Appearance]:
        """Who is on frame ``index`` (the clip loops), and where."""
        return self.frames[index % self.n_frames]

    def names_at(self, index: int) -> set[str]:
        """Names of the people on frame ``index``."""
        return {a.name for a in self.visible(index)}

    def frames_with(self, *names: str, fully_inside: bool = True) -> list[int]:
        """Indexes of the frames where all ``names`` are visible (fully inside by default)."""
        wanted = set(names)
        return [
            i
            for i, apps in enumerate(self.frames)
            if wanted <= {a.name for a in apps if a.fully_inside or not fully_inside}
        ]


@dataclass(frozen=True)
class _Sprite:
    """A person's scaled photo crop, its blend mask, and the face box offset inside it."""

    image: npt.NDArray[np.float32]  # h x w x 3
    alpha: npt.NDArray[np.float32]  # h x w x 1, 0..1
    face_offset: tuple[float, float]  # face-box top-left inside the sprite
    face_size: tuple[float, float]  # face-box width, height in the sprite


def read_photo(path: Path) -> Image:
    """A photo as a BGR image (alpha dropped); FileNotFoundError when unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read photo {path}")
    return np.asarray(img, dtype=np.uint8)


def _make_sprite(person: Person) -> _Sprite:
    photo = read_photo(person.photo)
    ph, pw = photo.shape[:2]
    if person.face_box is None:
        fx1, fy1, fx2, fy2 = 0.0, 0.0, float(pw), float(ph)
        margin = 0.0
    else:
        fx1, fy1, fx2, fy2 = (float(v) for v in person.face_box)
        margin = person.margin
    fw, fh = fx2 - fx1, fy2 - fy1
    if fw <= 1 or fh <= 1:
        raise ValueError(f"{person.name}: face box {person.face_box} is empty")
    # Crop region: the face box grown by the margin, clipped to the photo.
    cx1 = max(0, math.floor(fx1 - margin * fw))
    cy1 = max(0, math.floor(fy1 - margin * fh))
    cx2 = min(pw, math.ceil(fx2 + margin * fw))
    cy2 = min(ph, math.ceil(fy2 + margin * fh))
    crop = photo[cy1:cy2, cx1:cx2]
    scale = person.face_width / fw
    out_w = max(1, round(crop.shape[1] * scale))
    out_h = max(1, round(crop.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(crop, (out_w, out_h), interpolation=interp).astype(np.float32)
    if margin > 0:
        # Soft ellipse inscribed in the crop: the face and some hair/neck, no hard photo edge.
        mask = np.zeros((out_h, out_w), np.float32)
        cv2.ellipse(
            mask,
            (out_w // 2, out_h // 2),
            (max(1, int(out_w * 0.47)), max(1, int(out_h * 0.47))),
            0,
            0,
            360,
            1.0,
            -1,
        )
        k = max(3, (min(out_w, out_h) // 8) | 1)
        mask = np.asarray(cv2.GaussianBlur(mask, (k, k), 0), dtype=np.float32)
        # Keep the face box itself fully opaque whatever the blur did.
        ox, oy = (fx1 - cx1) * scale, (fy1 - cy1) * scale
        mask[int(oy) : math.ceil(oy + fh * scale), int(ox) : math.ceil(ox + fw * scale)] = 1.0
    else:
        mask = np.ones((out_h, out_w), np.float32)
    return _Sprite(
        image=resized,
        alpha=mask[:, :, None],
        face_offset=((fx1 - cx1) * scale, (fy1 - cy1) * scale),
        face_size=(fw * scale, fh * scale),
    )


def classroom_background(size: tuple[int, int], seed: int = 0) -> Image:
    """A deterministic, textured classroom-like backdrop (wall, board, desks, noise)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    bg = np.empty((height, width, 3), np.float32)
    bg[:, :, 0] = 150 + 40 * ys + 10 * xs  # B
    bg[:, :, 1] = 170 + 25 * ys - 15 * xs  # G
    bg[:, :, 2] = 185 - 20 * ys + 15 * xs  # R
    img = bg.clip(0, 255).astype(np.uint8)
    # Board on the back wall.
    cv2.rectangle(
        img,
        (int(width * 0.2), int(height * 0.05)),
        (int(width * 0.8), int(height * 0.3)),
        (60, 80, 50),
        -1,
    )
    cv2.rectangle(
        img,
        (int(width * 0.2), int(height * 0.05)),
        (int(width * 0.8), int(height * 0.3)),
        (90, 110, 130),
        4,
    )
    # Window-like panes on the side.
    for i in range(3):
        x = int(width * 0.03)
        y = int(height * (0.08 + 0.12 * i))
        cv2.rectangle(
            img, (x, y), (x + int(width * 0.1), y + int(height * 0.09)), (230, 215, 190), -1
        )
    # Rows of desks at the bottom, nearer rows larger.
    for row, (y0, h) in enumerate(((0.62, 0.08), (0.74, 0.1), (0.88, 0.12))):
        n = 4 + (2 - row)
        desk_w = width / n * 0.7
        for j in range(n):
            x0 = (j + 0.15) * width / n + rng.uniform(-6, 6)
            colour = tuple(
                int(c)
                for c in (
                    60 + rng.integers(0, 20),
                    95 + rng.integers(0, 20),
                    140 + rng.integers(0, 25),
                )
            )
            p1 = (int(x0), int(height * y0))
            p2 = (int(x0 + desk_w), int(height * (y0 + h)))
            cv2.rectangle(img, p1, p2, colour, -1)
            cv2.rectangle(img, p1, p2, (40, 60, 90), 2)
    # Fine texture so the encoder has something to do and the background is not flat.
    noise = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    textured = img.astype(np.float32) + noise
    return textured.clip(0, 255).astype(np.uint8)


def _composite(frame: npt.NDArray[np.float32], sprite: _Sprite, x: int, y: int) -> None:
    """Alpha-blend ``sprite`` into ``frame`` with its top-left at (x, y), clipped."""
    fh, fw = frame.shape[:2]
    sh, sw = sprite.image.shape[:2]
    x1, y1 = max(0, x), max(0, y)
    x2, y2 = min(fw, x + sw), min(fh, y + sh)
    if x1 >= x2 or y1 >= y2:
        return
    src = sprite.image[y1 - y : y2 - y, x1 - x : x2 - x]
    alpha = sprite.alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    region = frame[y1:y2, x1:x2]
    frame[y1:y2, x1:x2] = region * (1.0 - alpha) + src * alpha


def make_classroom_frames(
    out_dir: Path,
    people: Sequence[Person],
    *,
    seconds: float,
    fps: int,
    size: tuple[int, int] = (640, 480),
    seed: int = 0,
) -> ClassroomPlan:
    """Write ``round(seconds * fps)`` frames ``out_dir/%04d.jpg`` and return the plan.

    People are drawn in list order (later ones on top). A person's appearance is recorded
    whenever their face box overlaps the frame during their time window.
    """
    if fps <= 0 or seconds <= 0:
        raise ValueError("seconds and fps must be positive")
    width, height = size
    n_frames = max(1, round(seconds * fps))
    out_dir.mkdir(parents=True, exist_ok=True)
    background = classroom_background(size, seed).astype(np.float32)
    sprites = [_make_sprite(p) for p in people]
    plan = ClassroomPlan(frames_dir=out_dir, fps=fps, size=size, people=tuple(people))
    for index in range(n_frames):
        t = index / fps
        frame = background.copy()
        appearances: list[Appearance] = []
        for person, sprite in zip(people, sprites, strict=True):
            if not person.visible_at(t):
                continue
            cx, cy = person.centre_at(t)
            fw, fh = sprite.face_size
            bx1, by1 = round(cx - fw / 2), round(cy - fh / 2)
            box = (float(bx1), float(by1), bx1 + fw, by1 + fh)
            if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
                continue
            _composite(
                frame,
                sprite,
                round(bx1 - sprite.face_offset[0]),
                round(by1 - sprite.face_offset[1]),
            )
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            appearances.append(Appearance(person.name, box, inside))
        out = frame.clip(0, 255).astype(np.uint8)
        if not cv2.imwrite(str(plan.path(index)), out, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {plan.path(index)}")
        plan.frames.append(appearances)
    return plan


def face_box_of(photo: Path, engine: FaceEngine) -> Box:
    """Box (x1, y1, x2, y2) of the largest face ``engine`` finds in ``photo``."""
    faces = engine.detect(read_photo(photo))
    if not faces:
        raise ValueError(f"no face found in {photo}")
    best = max(faces, key=lambda f: f.area)
    x1, y1, x2, y2 = (float(v) for v in best.bbox)
    return (x1, y1, x2, y2)
