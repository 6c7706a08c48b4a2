"""Your own videos: a folder of video files (or one file) cut into clips, read lazily.

Clips are indexed as (file, start frame); ``__getitem__`` decodes only that clip's frames (imageio v3:
ffmpeg for mp4/avi/mov/mkv/webm, Pillow for gif), converts to gray or RGB, resizes the shorter side to
``image_size`` (area when shrinking, bilinear when growing) and centre-crops a square -- or, with
``keep_aspect``, a frame at the video's own aspect (issue 9). Frame counts are read once per file and cached.

Splits never overlap: with three or more files, whole files go to train / val / test (seeded shuffle,
fractions configurable); with one or two files, each file is split in time into consecutive
train | val | test segments and clips never cross a segment boundary.

Clips never span a scene cut either: at setup every file is decoded once at low resolution and its hard
cuts are found (``cut_threshold``; see :mod:`dfn.data.shots`); a clip holding frames of two shots is
dropped. The time split's boundaries stay fractions of the file; only the clips across a cut go.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .common import ClipDataModule, seed_rng
from .shots import CUT_THRESHOLD, describe_cuts, detect_file_cuts, spans_cut

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 weights for RGB -> gray


def _first_line(err: Exception) -> str:
    """Short error text: imageio/ffmpeg errors carry pages of ffmpeg banner after the first line."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def list_videos(path: str | Path) -> list[Path]:
    """A video file, or the video files (sorted, non-recursive) in a folder; errors name the path."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{path}: not a supported video file (extensions: {', '.join(VIDEO_EXTENSIONS)})")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such video file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{path}: folder holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return files


def _open(path: Path):
    import imageio.v3 as iio  # imported here so that `import dfn.data` stays light
    try:
        return iio.imopen(path, "r")
    except Exception as err:
        raise ValueError(f"{path}: cannot open as a video ({_first_line(err)})") from err


def count_frames(path: Path) -> int:
    """Number of frames of one video file (decodes the file once for ffmpeg formats)."""
    try:
        with _open(path) as f:
            n = f.properties(index=...).shape[0]
        if not np.isfinite(n):  # the ffmpeg plugin does not know the count up front: let ffmpeg count
            import imageio_ffmpeg
            n = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: unreadable or corrupt video ({_first_line(err)})") from err
    if n <= 0:
        raise ValueError(f"{path}: video has no frames")
    return int(n)


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
        raise ValueError(f"{path}: cannot read the first frame ({_first_line(err)})") from err
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
        import imageio.v3 as iio

        chunks, buf = [], []
        for frame in iio.imiter(self.files[file_idx]):
            buf.append(frame)
            if len(buf) == 64:  # process in chunks: never hold many full-resolution frames
                chunks.append(self._process(np.stack(buf)))
                buf = []
        if buf:
            chunks.append(self._process(np.stack(buf)))
        return torch.cat(chunks)  # (N, C, S, S) uint8

    def _seek_read(self, file_idx: int, start: int) -> torch.Tensor:
        if file_idx in self._readers:
            self._readers.move_to_end(file_idx)
        else:
            handle = _open(self.files[file_idx])
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
                             f"({_first_line(err)})") from err
        return clip.float().div_(255.0)


def clip_starts(lo: int, hi: int, frames: int, stride: int, cuts: list[int] | None = None) -> list[int]:
    """Starts of the clips of ``frames`` frames, every ``stride``, lying wholly in [lo, hi) and, given the
    sorted scene ``cuts`` (first frames of shots), wholly inside one shot. Clips across a cut are dropped
    rather than the grid restarted at the cut, so a file without cuts gives the same clips as before."""
    return [s for s in range(lo, hi - frames + 1, stride) if not (cuts and spans_cut(s, frames, cuts))]


class VideoFolder(ClipDataModule):
    """Clips of your own video(s): ``path`` is a video file or a folder of them.

    To only predict on a video with a trained model, give ``predict_path`` alone (``path`` may be
    omitted): ``predict`` then needs no train/val/test split.

    ``cache_mb`` bounds the per-process cache of decoded, resized files (0 = always seek; see
    :class:`VideoClips`). With ``num_workers > 0`` every worker has its own cache.

    At setup every file is probed (opened, frames counted) and all unreadable, corrupt or too-short
    files are named in one error; ``skip_bad_files=True`` warns about them and goes on without them.

    Scene cuts: ``cut_threshold`` (default :data:`dfn.data.shots.CUT_THRESHOLD`, 0.12) is the smallest mean
    absolute difference (in [0, 1] units, on gray frames at short side 32) between consecutive frames that
    counts as a hard cut (it must also be 9x the file's median difference); no clip -- train, val, test
    or predict -- spans a cut. ``None`` or 0 turns detection off. Cuts are found once per file at setup
    (one low-resolution decode) and reported in one line per file.

    ``predict_path`` (file or folder), if given, is what ``predict`` runs on (all its clips, every
    ``stride`` frames); otherwise predict uses the first ``predict_size`` test clips.
    Frame geometry: by default square ``image_size`` x ``image_size`` centre crops (the paper's 64x64).
    With ``keep_aspect`` the frames keep the video's own aspect: short side ``image_size``, both sides
    rounded down to a multiple of 4 (see :func:`aspect_size`), measured on the first file of ``path``
    (of ``predict_path`` for predicting on it); other files are resized to cover that and centre-cropped.
    The networks are fully convolutional (without ``untied_input_bias``), so a model trained on one
    geometry predicts on another.

    Batches: float32 (B, frames_in + frames_out, C, h, w) in [0, 1], C = 1 (gray) or 3 (rgb); (h, w) is
    :meth:`frame_size`.
    """

    def __init__(
        self,
        path: str | None = None,
        frames_in: int = 3,
        frames_out: int = 3,
        image_size: int = 64,
        keep_aspect: bool = False,
        color: Literal["gray", "rgb"] = "gray",
        stride: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        predict_path: str | None = None,
        predict_size: int = 32,
        cache_mb: int = 256,
        skip_bad_files: bool = False,
        cut_threshold: float | None = CUT_THRESHOLD,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if color not in ("gray", "rgb"):
            raise ValueError(f"VideoFolder: color must be 'gray' or 'rgb', got {color!r}")
        super().__init__(frames_in, frames_out, 1 if color == "gray" else 3, image_size, batch_size, num_workers, seed)
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"VideoFolder: stride must be a positive integer, got {stride!r}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"VideoFolder: need 0 <= val_fraction, test_fraction and their sum < 1, "
                             f"got {val_fraction}, {test_fraction}")
        if not isinstance(predict_size, int) or predict_size < 1:
            raise ValueError(f"VideoFolder: predict_size must be a positive integer, got {predict_size!r}")
        if path is None and predict_path is None:
            raise ValueError("VideoFolder: give `path` (videos to train/validate/test on), `predict_path` "
                             "(videos to predict on), or both")
        self.files = list_videos(path) if path is not None else None  # fail early on a wrong path
        self.predict_files = list_videos(predict_path) if predict_path is not None else None
        self.path, self.predict_path, self.color, self.stride = path, predict_path, color, stride
        if not isinstance(cache_mb, int) or cache_mb < 0:
            raise ValueError(f"VideoFolder: cache_mb must be an integer >= 0, got {cache_mb!r}")
        self.val_fraction, self.test_fraction, self.predict_size = val_fraction, test_fraction, predict_size
        self.cache_mb, self.skip_bad_files = cache_mb, skip_bad_files
        if not isinstance(keep_aspect, bool):
            raise ValueError(f"VideoFolder: keep_aspect must be true or false, got {keep_aspect!r}")
        if keep_aspect and image_size < 4:
            raise ValueError(f"VideoFolder: keep_aspect needs image_size >= 4 (sides are multiples of 4), got {image_size}")
        self.keep_aspect = keep_aspect
        if cut_threshold is not None and (isinstance(cut_threshold, bool) or not isinstance(cut_threshold, (int, float))
                                          or not 0 <= cut_threshold < 1):
            raise ValueError(f"VideoFolder: cut_threshold must be a number in [0, 1) (mean absolute difference "
                             f"between consecutive frames that counts as a scene cut; 0 or null turns cut "
                             f"detection off), got {cut_threshold!r}")
        self.cut_threshold = float(cut_threshold) if cut_threshold else None  # None: detection off
        self._cuts: dict[Path, list[int]] = {}  # file -> sorted first frames of its shots (decoding: once)
        self._frame_sizes: dict[bool, tuple[int, int]] = {}
        self._frame_counts: dict[Path, int] = {}
        self.train_set: VideoClips | None = None

    def _probe(self, files: list[Path], what: str) -> list[Path]:
        """Count every file's frames once (issue 10: bad input up front). Returns the usable files; names
        every unreadable, corrupt or too-short one in ONE error, or with ``skip_bad_files`` in a warning."""
        problems: dict[Path, str] = {}
        for p in files:
            if p not in self._frame_counts:
                try:
                    self._frame_counts[p] = count_frames(p)  # decodes the file: once
                except ValueError as err:
                    problems[p] = str(err)
                    continue
            if self._frame_counts[p] < self.frames:
                problems[p] = (f"{p}: video has {self._frame_counts[p]} frames, shorter than one clip "
                               f"(frames_in + frames_out = {self.frames})")
        if not problems:
            return files
        good = [p for p in files if p not in problems]
        listing = "\n  ".join(problems.values())
        if not self.skip_bad_files or not good:
            hint = "" if not good else "\nFix or remove them, or set skip_bad_files: true to train without them."
            raise ValueError(f"VideoFolder: {len(problems)} of the {len(files)} {what} files cannot be used:"
                             f"\n  {listing}{hint}")
        warnings.warn(f"VideoFolder: skipping {len(problems)} of the {len(files)} {what} files "
                      f"(skip_bad_files):\n  {listing}", stacklevel=2)
        return good

    def _counts(self, files: list[Path]) -> list[int]:
        for p in files:
            if p not in self._frame_counts:  # counting decodes the file: do it once
                self._frame_counts[p] = count_frames(p)
        counts = [self._frame_counts[p] for p in files]
        for p, n in zip(files, counts):
            if n < self.frames:
                raise ValueError(f"{p}: video has {n} frames, shorter than one clip "
                                 f"(frames_in + frames_out = {self.frames})")
        return counts

    def _scene_cuts(self, files: list[Path]) -> list[list[int]]:
        """Every file's scene cuts (sorted first frames of new shots; [] with detection off), found once
        per file and reported once, as it decodes the file."""
        if self.cut_threshold is None:
            return [[] for _ in files]
        for p in files:
            if p not in self._cuts:
                self._cuts[p] = detect_file_cuts(p, self.cut_threshold)
                print(f"VideoFolder: {p.name}: {describe_cuts(self._cuts[p])}"
                      + ("; clips never span a cut" if self._cuts[p] else ""))
        return [self._cuts[p] for p in files]

    def _cuts_hint(self, files: list[Path], cuts: list[list[int]]) -> str:
        """The part of an 'empty split' error that says scene cuts took clips away, if they did."""
        found = {p.name: c for p, c in zip(files, cuts) if c}
        if not found:
            return ""
        listing = "; ".join(f"{name}: {describe_cuts(c)}" for name, c in found.items())
        return (f"; clips never span a scene cut ({listing}) -- raise cut_threshold (now "
                f"{self.cut_threshold}) or set it to null to keep clips across cuts")

    def frame_size(self, predicting: bool = False) -> tuple[int, int]:
        """(h, w) of the frames served: (image_size, image_size), or with ``keep_aspect`` the first file's
        aspect (of ``predict_path`` when `predicting` and it is given, else of ``path``)."""
        if not self.keep_aspect:
            return self.image_size, self.image_size
        if predicting not in self._frame_sizes:
            files = self.predict_files if predicting and self.predict_files is not None else self.files
            self._frame_sizes[predicting] = aspect_size(*first_frame_shape(files[0]), self.image_size)
        return self._frame_sizes[predicting]

    def split_clips(self) -> dict[str, list[tuple[int, int]]]:
        """{'train', 'val', 'test'}: lists of (file index, start frame), disjoint in frames."""
        counts = self._counts(self.files)
        cuts = self._scene_cuts(self.files)
        out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
        n = len(self.files)
        if n >= 3:  # split by file
            order = seed_rng(self.seed, 7).permutation(n)
            n_test = max(1, round(n * self.test_fraction)) if self.test_fraction > 0 else 0
            n_val = max(1, round(n * self.val_fraction)) if self.val_fraction > 0 else 0
            if n - n_test - n_val < 1:
                raise ValueError(f"{self.path}: {n} files cannot be split into train/val/test with fractions "
                                 f"{self.val_fraction}/{self.test_fraction}")
            groups = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
            for split, idx in groups.items():
                for f in sorted(idx.tolist()):
                    out[split] += [(f, s) for s in clip_starts(0, counts[f], self.frames, self.stride, cuts[f])]
        else:  # split each file in time: train | val | test
            for f, total in enumerate(counts):
                a = int(round(total * (1 - self.val_fraction - self.test_fraction)))
                b = int(round(total * (1 - self.test_fraction)))
                for split, (lo, hi) in (("train", (0, a)), ("val", (a, b)), ("test", (b, total))):
                    out[split] += [(f, s) for s in clip_starts(lo, hi, self.frames, self.stride, cuts[f])]
        for split, fraction in (("train", 1.0), ("val", self.val_fraction), ("test", self.test_fraction)):
            if fraction == 0 and not out[split]:  # an empty split is an error, never a silent "no validation"
                raise ValueError(f"{self.path}: {split}_fraction is 0, so there is no {split} split; training "
                                 f"needs validation (model selection) and a test set -- use a fraction > 0")
            if not out[split]:
                raise ValueError(f"{self.path}: too short for a {split} split -- each split needs at least "
                                 f"{self.frames} consecutive frames (frames per file: {counts})"
                                 f"{self._cuts_hint(self.files, cuts)}; lower frames_in/frames_out, add footage, "
                                 "or change val_fraction/test_fraction")
        return out

    def setup(self, stage: str | None = None) -> None:
        only_predicting = stage == "predict" and self.predict_files is not None
        if self.train_set is None and not only_predicting:
            if self.files is None:
                raise ValueError(f"VideoFolder: stage {stage!r} needs `path` (videos to train/validate/test on)")
            self.files = self._probe(self.files, "training/validation/test")
            splits = self.split_clips()
            counts = self._counts(self.files)
            make = lambda clips: VideoClips(self.files, counts, clips, self.frames, self.color,  # noqa: E731
                                            self.frame_size(), self.cache_mb)
            self.train_set, self.val_set, self.test_set = make(splits["train"]), make(splits["val"]), make(splits["test"])
        if stage in (None, "predict") and self.predict_set is None:
            if self.predict_files is not None:
                self.predict_files = self._probe(self.predict_files, "predict")
                counts = self._counts(self.predict_files)
                cuts = self._scene_cuts(self.predict_files)
                clips = [(f, s) for f, n in enumerate(counts)
                         for s in clip_starts(0, n, self.frames, self.stride, cuts[f])]
                if not clips:
                    raise ValueError(f"{self.predict_path}: no clip of {self.frames} frames to predict on "
                                     f"(frames per file: {counts}){self._cuts_hint(self.predict_files, cuts)}")
                self.predict_set = VideoClips(self.predict_files, counts, clips, self.frames, self.color,
                                              self.frame_size(predicting=True), self.cache_mb)
            else:
                self.predict_set = VideoClips(self.files, self.test_set.counts, self.test_set.clips[: self.predict_size],
                                              self.frames, self.color, self.frame_size(), self.cache_mb)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._shuffled_loader(self.train_set)
