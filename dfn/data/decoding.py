"""Reading video files: listing, probing, decoding to frame tensors, and the lazily decoded clip dataset.

imageio v3 reads the files (ffmpeg for mp4/avi/mov/mkv/webm, Pillow for gif). Frames become float32
(T, C, h, w) in [0, 1]: gray (ITU-R BT.601 luma) or RGB, resized so that they cover the target size
(area when shrinking, bilinear when growing) and centre-cropped to it (:func:`frames_to_tensor`).
Used by :mod:`dfn.data.video` (the data module) and :mod:`dfn.data.shots` (scene cuts); imports neither.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..progress import progress

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for RGB -> gray
CHUNK = 64  # frames decoded at full resolution before they are resized: never hold many of them


def first_line(err: Exception) -> str:
    """Short error text: imageio/ffmpeg errors carry pages of ffmpeg banner after the first line."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _missing(path: Path) -> str:
    """Why `path` is not there and what to do: the sample clips say how to fetch them."""
    from .samples import SAMPLES  # here: only a missing file needs the table of samples

    name = path.stem
    if name in SAMPLES and path.parent.name == "samples":  # data/samples/<name>.mp4, as the configs name them
        return f"{path} not found; fetch it with python -m dfn.data.samples fetch {name}"
    return f"{path}: no such video file or folder; give a video file or a folder of them"


def list_videos(path: str | Path) -> list[Path]:
    """A video file, or the video files (sorted, non-recursive) in a folder; errors name the path."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{path}: not a supported video file (extensions: {', '.join(VIDEO_EXTENSIONS)})")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(_missing(path))
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{path}: folder holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return files


def open_video(path: Path):
    """An imageio v3 reader of `path`; ValueError naming the file when it cannot be opened."""
    import imageio.v3 as iio  # imported here so that `import dfn.data` stays light
    try:
        return iio.imopen(path, "r")
    except Exception as err:
        raise ValueError(f"{path}: cannot open as a video ({first_line(err)})") from err


def count_frames(path: Path) -> int:
    """Number of frames of one video file (decodes the file once for ffmpeg formats)."""
    try:
        with open_video(path) as f:
            n = f.properties(index=...).shape[0]
        if not np.isfinite(n):  # the ffmpeg plugin does not know the count up front: let ffmpeg count
            import imageio_ffmpeg
            n = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: unreadable or corrupt video ({first_line(err)})") from err
    if n <= 0:
        raise ValueError(f"{path}: video has no frames")
    return int(n)


def decode_chunks(path: Path, desc: str, frames: int | None = None) -> Iterator[np.ndarray]:
    """The whole file, front to back, as uint8 arrays of up to :data:`CHUNK` frames (n, H, W[, 3|4]),
    with a progress bar named `desc` (`frames`: its total, when known)."""
    import imageio.v3 as iio

    buf = []
    for frame in progress(iio.imiter(path), desc, total=frames, unit="frame"):
        buf.append(frame)
        if len(buf) == CHUNK:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def frames_to_tensor(frames: np.ndarray, color: Literal["gray", "rgb"],
                     image_size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 frames (T, H, W) / (T, H, W, 3|4) -> float32 (T, C, h, w) in [0, 1].

    ``image_size`` S gives square S x S frames, (h, w) gives h x w frames: the frame is resized (aspect
    kept) to the smallest size covering the target, then centre-cropped to it.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(-1)  # (T, H, W) -> (T, H, W, 1)
    x = x[..., :3]  # drop alpha
    x = x.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
    if color == "gray" and x.shape[1] == 3:
        x = torch.einsum("tchw,c->thw", x, LUMA).unsqueeze(1)  # (T, 3, H, W) -> (T, 1, H, W)
    elif color == "rgb" and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # gray source: replicate to 3 channels
    th, tw = (image_size, image_size) if isinstance(image_size, int) else image_size
    h, w = x.shape[-2:]
    scale = max(th / h, tw / w)  # cover the target; for a square target: short side -> S
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        mode = "area" if scale < 1 else "bilinear"  # area averages when shrinking (no aliasing)
        x = F.interpolate(x, size=(nh, nw), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top:top + th, left:left + tw].clamp_(0.0, 1.0).contiguous()  # (T, C, th, tw)


def aspect_size(height: int, width: int, short_side: int, multiple: int = 4) -> tuple[int, int]:
    """(h, w) for a ``height x width`` source at its own aspect: short side ``short_side``, both sides
    rounded down to a multiple of ``multiple`` (the network halves the frame once; 4 keeps a deeper
    encoder's sizes whole too), at least ``multiple``."""
    scale = short_side / min(height, width)
    return tuple(max(multiple, int(round(n * scale)) // multiple * multiple) for n in (height, width))


def first_frame_shape(path: Path) -> tuple[int, int]:
    """(height, width) of the first frame of a video file."""
    import imageio.v3 as iio
    try:
        frame = iio.imread(path, index=0)
    except Exception as err:
        raise ValueError(f"{path}: cannot read the first frame ({first_line(err)})") from err
    return int(frame.shape[0]), int(frame.shape[1])


class VideoClips(Dataset):
    """Map-style dataset of clips ``(file, start)``; item -> float32 (T, C, h, w) in [0, 1].

    ``image_size``: S (square S x S frames) or (h, w); see :func:`frames_to_tensor`.

    Decoding is lazy. A file whose *processed* frames (resized, uint8: frames x C x S x S bytes) fit in
    ``cache_mb`` is decoded once, front to back (ffmpeg decodes sequentially hundreds of frames per
    second but needs ~0.1-0.3 s per seek), and kept in a per-process LRU cache; a larger file is read
    clip by clip through a seeking reader. Both paths quantise the processed frames to uint8, so the
    result does not depend on the cache.
    """

    def __init__(self, files: list[Path], counts: list[int], clips: list[tuple[int, int]], frames: int,
                 color: Literal["gray", "rgb"], image_size: int | tuple[int, int], cache_mb: int = 256) -> None:
        self.files, self.counts, self.clips, self.frames = files, counts, clips, frames
        self.color, self.image_size, self.cache_bytes = color, image_size, cache_mb * 2**20
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()   # file -> (N, C, S, S) uint8
        self._readers: OrderedDict[int, object] = OrderedDict()       # file -> open seeking reader

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"], state["_readers"] = OrderedDict(), OrderedDict()  # per process, not pickled
        return state

    def _process(self, frames: np.ndarray) -> torch.Tensor:
        return frames_to_tensor(frames, self.color, self.image_size).mul_(255).round_().to(torch.uint8)

    def _decode_whole(self, file_idx: int) -> torch.Tensor:
        path = self.files[file_idx]
        chunks = [self._process(chunk) for chunk in decode_chunks(path, f"decoding {path.name}", self.counts[file_idx])]
        return torch.cat(chunks)  # (N, C, S, S) uint8

    def _seek_read(self, file_idx: int, start: int) -> torch.Tensor:
        if file_idx in self._readers:
            self._readers.move_to_end(file_idx)
        else:
            handle = open_video(self.files[file_idx])
            # ffmpeg: the legacy reader keeps one decoder process and only re-seeks when jumping;
            # the v3 read(index=...) of that plugin would restart it for every frame.
            reader = handle.legacy_get_reader() if hasattr(handle, "legacy_get_reader") else handle
            self._readers[file_idx] = reader
            if len(self._readers) > 4:
                self._readers.popitem(last=False)[1].close()
        reader = self._readers[file_idx]
        get = reader.get_data if hasattr(reader, "get_data") else (lambda i: reader.read(index=i))
        return self._process(np.stack([get(start + k) for k in range(self.frames)]))  # (T, C, S, S) uint8

    def __getitem__(self, i: int) -> torch.Tensor:
        file_idx, start = self.clips[i]
        path = self.files[file_idx]
        side = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
        size = self.counts[file_idx] * (1 if self.color == "gray" else 3) * side[0] * side[1]
        try:
            if file_idx in self._cache:
                self._cache.move_to_end(file_idx)
            elif size <= self.cache_bytes:
                while self._cache and sum(v.numel() for v in self._cache.values()) + size > self.cache_bytes:
                    self._cache.popitem(last=False)
                self._cache[file_idx] = self._decode_whole(file_idx)
            if file_idx in self._cache:
                clip = self._cache[file_idx][start:start + self.frames]
                if len(clip) < self.frames:
                    raise ValueError(f"decoded only {len(self._cache[file_idx])} frames, "
                                     f"expected {self.counts[file_idx]}")
            else:
                clip = self._seek_read(file_idx, start)
        except Exception as err:
            self._readers.pop(file_idx, None)
            raise ValueError(f"{path}: failed to read frames {start}..{start + self.frames - 1} "
                             f"({first_line(err)})") from err
        return clip.float().div_(255.0)
