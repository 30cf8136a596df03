"""Write the committed sample videos in examples/videos/ (developers only: needs the export extra).

    python -m examples.make_sample_videos

Two short camera clips for the camera-app examples, their tests and `make demo`, each a 160x160
MJPG AVI (OpenCV writes and reads it with no extra codec) plus a ground-truth JSON:
- inventory.avi: shape items (circle, square, triangle, star) sliding along shelf lanes; items
  are restocked and picked during the clip, so the per-class counts change;
- attendance.avi: faces drifting about a room; people arrive late and leave early, walking in and
  out through the side borders (the doors), so the number present changes against a roster.
Objects are cut from `export.data.scenes` scenes of the held-out split only (held-out faces,
backgrounds the detector never trained on), through its public `make_scene`: a one-object scene as
large as the object gives the sprite and its mask, an empty scene gives the background. Each
object owns one horizontal lane, so objects never overlap; an item is whole in every frame it is
in, a person walking through a border is cut by it (its box is the visible part). Seeded: a rerun
draws the same pixels (the JPEG bytes may differ across OpenCV versions).

Ground truth, `<name>.json`: {"video", "fps", "width", "height", "classes", "frames": [{"frame",
"labels", "boxes" (x1, y1, x2, y2 in pixel-edge coordinates, the visible part), "ids" (each
object's identity, the same in every frame it is in: ground-truth tracks), "visible" (the share of
each object inside the picture, 1.0 unless it is walking through a border), "counts" ({class: n})},
...]}, plus "roster" for the attendance clip.

`python -m examples.make_sample_videos --heldout DIR` writes the same two scenes drawn from another
seed (HELDOUT_SEED) into DIR instead: the held-out clips of `python -m examples.evaluate_tracking`,
never used to choose a tracker setting and not bundled (the bundled clips already fill the size budget).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "videos"
SEED = 31
HELDOUT_SEED = 97
SIZE = 160
FPS = 15
FRAMES = 75
JPEG_QUALITY = 70
LANES = 4
NOISE_STD = 2.0
BACKGROUND_BLUR = 1.2
ROSTER = 7  # people expected in the attendance clip: six show up at some point, one never does


WALK_SPEED = 2.5  # pixels per frame of a person walking in or out through a side border


@dataclass(frozen=True)
class Track:
    """One object's life in the clip: its sprite, lane, path and the frames [start, stop) it is in.

    An item (`walks` False) is placed at `x0` on frame `start` and taken on frame `stop`, sliding
    between the side walls meanwhile. A person (`walks` True) present from frame 0 starts at `x0`;
    one arriving later walks in through the border behind its direction of travel from frame
    `start`, at WALK_SPEED, to its seat at `x0`; in the room it drifts at `speed`, turning at the
    walls; from frame `stop` (unless that is the clip's end) it walks out through the nearer side
    border, and is gone once wholly outside.
    """

    label: int
    sprite: np.ndarray  # uint8 RGB [s, s, 3]
    alpha: np.ndarray  # bool [s, s]
    lane: int
    x0: float
    speed: float  # pixels per frame, sign = direction; bounces off the frame's sides
    start: int
    stop: int
    walks: bool = False

    def top_left(self, frame: int) -> tuple[int, int] | None:
        """Where the sprite's top-left corner is at `frame` (x may lie outside the picture), or None
        when the object is not in the clip at that frame."""
        x = self._walk_path.get(frame) if self.walks else self._bounce_x(frame)
        if x is None:
            return None
        lane_height = SIZE // LANES
        y = self.lane * lane_height + (lane_height - self.alpha.shape[0]) // 2
        wobble = round(1.5 * np.sin(frame / 5.0 + self.lane))
        return int(np.clip(y + wobble, 0, SIZE - self.alpha.shape[0])), int(round(x))

    def _bounce_x(self, frame: int) -> float | None:
        if not self.start <= frame < self.stop:
            return None
        span = SIZE - self.alpha.shape[1]
        travelled = (self.x0 + self.speed * frame) % (2 * span)
        return travelled if travelled <= span else 2 * span - travelled

    @cached_property
    def _walk_path(self) -> dict[int, float]:
        """{frame: left x} of a person: in through a border, drifting, out through the nearer one."""
        width = self.alpha.shape[1]
        span = SIZE - width
        velocity = self.speed
        x = self.x0 if self.start == 0 else (-width + 1.0 if velocity > 0 else SIZE - 1.0)
        phase = "room" if self.start == 0 else "in"
        path = {}
        for frame in range(self.start, FRAMES):
            if phase == "out" and (x <= -width or x >= SIZE):
                break
            path[frame] = x
            if phase == "room" and frame + 1 >= self.stop:
                phase = "out"
                velocity = -WALK_SPEED if x + width / 2 < SIZE / 2 else WALK_SPEED
            step = np.sign(velocity) * WALK_SPEED if phase == "in" else velocity
            x += step
            if phase == "in" and (x - self.x0) * np.sign(velocity) >= 0:  # reached its seat
                x, phase = self.x0, "room"
            elif phase == "room" and not 0 <= x <= span:
                x, velocity = (-x, -velocity) if x < 0 else (2 * span - x, -velocity)
        return path


def background(seed: int, clip_seed: int = SEED) -> np.ndarray:
    """A held-out photo crop with nothing on it, uint8 RGB [SIZE, SIZE, 3], slightly out of focus.

    The blur is a camera focused on the objects in front; it also halves the MJPG size of the
    clip (the held-out backgrounds are fine textures that JPEG encodes poorly)."""
    from export.data.scenes import SceneSpec, make_scene

    spec = SceneSpec(
        height=(SIZE, SIZE),
        width=(SIZE, SIZE),
        objects=(0, 0),
        distractors=(0, 0),
        clutter_lines=(0, 0),
        noise_std=0.0,
        blur_probability=0.0,
    )
    image = make_scene(np.random.default_rng([clip_seed, seed]), spec, split="heldout").image
    return cv2.GaussianBlur(image, (0, 0), BACKGROUND_BLUR)


def sprite(seed: int, name: str, size: int, clip_seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """One held-out object of class `name`, `size` pixels across: (RGB patch, bool mask)."""
    from export.data.scenes import SceneSpec, make_scene

    spec = SceneSpec(
        height=(size, size),
        width=(size, size),
        objects=(1, 1),
        object_size=(size, size),
        classes=(name,),
        distractors=(0, 0),
        clutter_lines=(0, 0),
        noise_std=0.0,
        blur_probability=0.0,
    )
    scene = make_scene(np.random.default_rng([clip_seed, seed]), spec, split="heldout")
    if len(scene.labels) != 1:
        raise RuntimeError(f"could not draw a {name} sprite (seed {seed})")
    return scene.image, scene.masks[0]


def recolour(patch: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flat shape in one of the three palette colours farthest from the mean colour of `backdrop`."""
    palette = np.array(
        [
            [230, 30, 30],
            [30, 200, 40],
            [40, 60, 230],
            [250, 230, 40],
            [250, 250, 250],
            [20, 20, 20],
            [230, 40, 220],
            [40, 220, 230],
        ],
        dtype=np.float32,
    )
    mean = backdrop.reshape(-1, 3).astype(np.float32).mean(axis=0)
    farthest = np.argsort(np.linalg.norm(palette - mean, axis=1))[-3:]
    colour = palette[int(rng.choice(farthest))]
    out = patch.copy()
    out[alpha] = colour.astype(np.uint8)
    return out


def render(back: np.ndarray, tracks: list[Track], rng: np.random.Generator) -> tuple[list[np.ndarray], list[dict]]:
    """The clip's RGB frames and each frame's ground truth (labels, boxes, counts)."""
    from export.data.scenes import SCENE_CLASSES

    frames, truth = [], []
    for index in range(FRAMES):
        image = back.copy()
        labels, boxes, ids = [], [], []
        visible = []
        for identity, track in enumerate(tracks, start=1):
            corner = track.top_left(index)
            if corner is None:
                continue
            top, left = corner
            height, width = track.alpha.shape
            first, last = max(0, -left), min(width, SIZE - left)  # the sprite's columns inside the picture
            inside = track.alpha[:, first:last]
            if not inside.any():
                continue
            image[top : top + height, left + first : left + last][inside] = track.sprite[:, first:last][inside]
            rows, cols = np.nonzero(inside)
            cols = cols + first
            labels.append(SCENE_CLASSES[track.label])
            ids.append(identity)
            visible.append(round(float(inside.sum() / track.alpha.sum()), 3))
            boxes.append(
                [int(left + cols.min()), int(top + rows.min()), int(left + cols.max() + 1), int(top + rows.max() + 1)]
            )
        noisy = image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(NOISE_STD)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
        counts = {name: labels.count(name) for name in SCENE_CLASSES if name in labels}
        truth.append(
            {"frame": index, "labels": labels, "boxes": boxes, "ids": ids, "visible": visible, "counts": counts}
        )
    return frames, truth


def inventory_tracks(back: np.ndarray, rng: np.random.Generator, clip_seed: int = SEED) -> list[Track]:
    """Five items over four lanes: two lanes hand over from a picked item to a restocked one."""
    from export.data.scenes import SCENE_CLASSES

    plan = [  # (class, lane, start, stop)
        ("circle", 0, 0, FRAMES),
        ("square", 1, 0, 45),
        ("star", 1, 52, FRAMES),
        ("triangle", 2, 0, FRAMES),
        ("star", 3, 18, FRAMES),
    ]
    tracks = []
    for index, (name, lane, start, stop) in enumerate(plan):
        size = int(rng.integers(28, 35))
        patch, alpha = sprite(100 + index, name, size, clip_seed)
        lane_rows = back[lane * SIZE // LANES : (lane + 1) * SIZE // LANES]
        tracks.append(
            Track(
                SCENE_CLASSES.index(name),
                recolour(patch, alpha, lane_rows, rng),
                alpha,
                lane,
                float(rng.uniform(0, SIZE - size)),
                float(rng.choice([-1, 1]) * rng.uniform(0.8, 1.8)),
                start,
                stop,
            )
        )
    return tracks


def attendance_tracks(rng: np.random.Generator, clip_seed: int = SEED) -> list[Track]:
    """Six people over four lanes: some arrive late, some leave early, a seat is taken again.

    Everyone walks in and out through the side borders. A leaver is gone (at WALK_SPEED, from the
    middle of the room at worst) within 39 frames, before the next person of its lane arrives."""
    plan = [
        (0, 0, FRAMES),
        (1, 0, 10),
        (2, 10, FRAMES),
        (3, 0, 5),
        (1, 50, FRAMES),
        (3, 46, FRAMES),
    ]  # (lane, arrives, starts to leave)
    tracks = []
    for index, (lane, start, stop) in enumerate(plan):
        size = int(rng.integers(32, 37))
        patch, alpha = sprite(200 + index, "face", size, clip_seed)
        tracks.append(
            Track(
                0,
                patch,
                alpha,
                lane,
                float(rng.uniform(0, SIZE - size)),
                float(rng.choice([-1, 1]) * rng.uniform(0.6, 1.4)),
                start,
                stop,
                walks=True,
            )
        )
    return tracks


def build_clips(seed: int = SEED) -> dict[str, tuple[list[np.ndarray], list[dict], dict]]:
    """{clip name: (RGB frames, per-frame ground truth, extra metadata)}, all drawn from `seed`."""
    rng = np.random.default_rng(seed)
    shelf = background(1, seed)
    clips = {"inventory": (*render(shelf, inventory_tracks(shelf, rng, seed), rng), {})}
    faces = attendance_tracks(rng, seed)
    clips["attendance"] = (*render(background(2, seed), faces, rng), {"roster": ROSTER})
    return clips


def truth_json(name: str, truth: list[dict], extra: dict) -> str:
    """The ground-truth file's text: metadata, then one line per frame."""
    from export.data.scenes import SCENE_CLASSES

    meta = {"video": f"{name}.avi", "fps": FPS, "width": SIZE, "height": SIZE, "classes": list(SCENE_CLASSES), **extra}
    lines = [f"    {json.dumps(entry)}" for entry in truth]
    return json.dumps(meta, indent=2)[:-2] + ',\n  "frames": [\n' + ",\n".join(lines) + "\n  ]\n}\n"


def write_clip(out: Path, name: str, frames: list[np.ndarray], truth: list[dict], extra: dict) -> int:
    """Write <name>.avi and <name>.json into `out`; returns the bytes written."""
    video = out / f"{name}.avi"
    # OpenCV's own MJPEG writer: no FFmpeg needed, and it honours the JPEG quality.
    writer = cv2.VideoWriter(str(video), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIZE, SIZE))
    if not writer.isOpened() or not writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY):
        raise RuntimeError(f"OpenCV cannot write MJPG AVI to {video}")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    (out / f"{name}.json").write_text(truth_json(name, truth, extra))
    return video.stat().st_size + (out / f"{name}.json").stat().st_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="write the sample clips and their ground truth")
    parser.add_argument("--heldout", type=Path, help="write the held-out clips (another seed) into this directory")
    args = parser.parse_args(argv)
    out, seed = (args.heldout, HELDOUT_SEED) if args.heldout else (OUT, SEED)
    out.mkdir(parents=True, exist_ok=True)
    clips = build_clips(seed)
    total = sum(write_clip(out, name, *clip) for name, clip in clips.items())
    print(f"wrote {len(clips)} clips of {FRAMES} frames to {out} ({total / 1024:.0f} KB in all)")


if __name__ == "__main__":
    main()
