"""Turn client results into text tables, JSON-ready dicts and overlay files (CLI and demo share it).

Pure formatting: nothing here talks to a server or prints; callers decide where text goes.
Dispatch is on the result's type, so one set of functions serves every RPC.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from service.client.results import ActivationMap, Classification, Detections, Segmentation

HEADERS = {
    Classification: ("image", "rank", "label", "class", "score"),
    Detections: ("image", "label", "class", "score", "x1", "y1", "x2", "y2"),
    Segmentation: ("image", "label", "class", "pixels", "fraction"),
    ActivationMap: ("image", "method", "label", "class", "score", "map"),
}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns, a header, and a rule; numbers already formatted by the caller."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def result_rows(name: str, result) -> list[list[object]]:
    """Table rows of one image's result (columns as HEADERS[type(result)])."""
    if isinstance(result, Classification):
        return [[name, rank, p.label, p.class_index, f"{p.score:.4f}"] for rank, p in enumerate(result.predictions, 1)]
    if isinstance(result, Detections):
        if not result.detections:
            return [[name, "(none)", "", "", "", "", "", ""]]
        return [
            [
                name,
                d.label,
                d.class_index,
                f"{d.score:.3f}",
                *(f"{v:.1f}" for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2)),
            ]
            for d in result.detections
        ]
    if isinstance(result, Segmentation):
        return [[name, c.label, c.class_index, c.pixels, f"{c.fraction:.3f}"] for c in result.classes]
    if isinstance(result, ActivationMap):
        shape = "x".join(str(d) for d in result.raw.shape)
        return [[name, result.method, result.label, result.class_index, f"{result.score:.4f}", shape]]
    raise TypeError(f"no table layout for {type(result).__name__}")


def results_table(names: Sequence[str], results: Sequence) -> str:
    rows = [row for name, result in zip(names, results) for row in result_rows(name, result)]
    return format_table(HEADERS[type(results[0])], rows)


def result_json(result) -> dict:
    """A JSON-ready dict of one image's result; binary overlays and maps are left out (shapes kept)."""
    if isinstance(result, Classification):
        data = {"predictions": [vars(p).copy() for p in result.predictions]}
        if result.activation_map is not None:
            data["activation_map"] = result_json(result.activation_map)
        return data
    if isinstance(result, Detections):
        return {
            "image_width": result.image_width,
            "image_height": result.image_height,
            "detections": [
                {
                    "label": d.label,
                    "class_index": d.class_index,
                    "score": d.score,
                    "box": [d.box.x1, d.box.y1, d.box.x2, d.box.y2],
                }
                for d in result.detections
            ],
        }
    if isinstance(result, Segmentation):
        return {"width": result.width, "height": result.height, "classes": [vars(c).copy() for c in result.classes]}
    if isinstance(result, ActivationMap):
        return {
            "method": result.method,
            "class_index": result.class_index,
            "label": result.label,
            "score": result.score,
            "raw_shape": list(result.raw.shape),
            "upsampled_shape": list(result.upsampled.shape),
        }
    raise TypeError(f"no JSON layout for {type(result).__name__}")


def overlay_files(name: str, result) -> dict[str, bytes]:
    """{file name: bytes} of the images a result carries (overlays, label maps); may be empty."""
    return _overlays(Path(name).stem, result)


def _overlays(stem: str, result) -> dict[str, bytes]:
    if isinstance(result, Detections):
        files = {f"{stem}.detect.jpg": result.overlay_jpeg}
    elif isinstance(result, Segmentation):
        files = {f"{stem}.segment.png": result.overlay_png, f"{stem}.labels.png": result.label_map_png}
    elif isinstance(result, ActivationMap):
        extension = "png" if result.overlay[:4] == b"\x89PNG" else "jpg"
        files = {f"{stem}.cam.{extension}": result.overlay}
    elif isinstance(result, Classification) and result.activation_map is not None:
        files = _overlays(stem, result.activation_map)
    else:
        files = {}
    return {file: data for file, data in files.items() if data}


def write_overlays(out_dir: Path, names: Sequence[str], results: Sequence) -> list[list[Path]]:
    """Write every result's overlay files into out_dir; returns the paths written, per image."""
    return _write(out_dir, names, results, _overlays)


def write_results(out_dir: Path, names: Sequence[str], results: Sequence, command: str) -> list[list[Path]]:
    """What a client command's --out writes: per image its result as JSON (`<stem>.<command>.json`,
    what --json prints for it) and its overlay files; returns the paths written, per image."""

    def files(stem: str, result) -> dict[str, bytes]:
        return {f"{stem}.{command}.json": json.dumps(result_json(result), indent=2).encode()} | _overlays(stem, result)

    return _write(out_dir, names, results, files)


def _write(out_dir: Path, names: Sequence[str], results: Sequence, files_of) -> list[list[Path]]:
    """Images whose names share a stem get `-2`, `-3`... so that no result overwrites another's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], {}
    for name, result in zip(names, results):
        stem = Path(name).stem
        seen[stem] = seen.get(stem, 0) + 1
        paths = []
        for file, data in files_of(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}", result).items():
            path = out_dir / file
            path.write_bytes(data)
            paths.append(path)
        written.append(paths)
    return written
