"""Your own videos: a folder of video files (or one file) cut into clips, read lazily.

Clips are indexed as (file, start frame) and decoded lazily (:class:`dfn.data.decoding.VideoClips`):
gray or RGB, the shorter side resized to ``image_size`` and a square centre crop -- or, with
``keep_aspect``, frames at the video's own aspect. Frame counts are read once per file and cached.

Splits never overlap: with three or more files, whole files go to train / val / test (seeded shuffle,
fractions configurable); with one or two files, each file is split in time into consecutive
train | val | test segments and clips never cross a segment boundary.

Clips never span a scene cut either: at setup every file is decoded once at low resolution and its hard
cuts are found (``cut_threshold``; see :mod:`dfn.data.shots`); a clip holding frames of two shots is
dropped. The time split's boundaries stay fractions of the file; only the clips across a cut go.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader

from ..checks import check_bool, check_choice, check_int, check_number, fail
from ..progress import progress
from .common import ClipDataModule, seed_rng
from .decoding import VideoClips, aspect_size, count_frames, first_frame_shape, list_videos
from .shots import CUT_THRESHOLD, describe_cuts, detect_file_cuts, spans_cut

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
        owner = "VideoFolder"
        check_choice(owner, "color", color, ("gray", "rgb"))
        super().__init__(frames_in, frames_out, 1 if color == "gray" else 3, image_size, batch_size, num_workers, seed)
        check_int(owner, "stride", stride)
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_number(owner, key, value, low=0, high=1, high_open=True)
        if val_fraction + test_fraction >= 1:
            raise fail(owner, "val_fraction + test_fraction", "< 1", val_fraction + test_fraction,
                       meaning="the rest of the footage is the training split")
        check_int(owner, "predict_size", predict_size)
        if path is None and predict_path is None:
            raise fail(owner, "path", "a video file or folder when predict_path is null", path,
                       meaning="videos to train/validate/test on; predict_path: videos to predict on")
        self.files = list_videos(path) if path is not None else None  # fail early on a wrong path
        self.predict_files = list_videos(predict_path) if predict_path is not None else None
        self.path, self.predict_path, self.color, self.stride = path, predict_path, color, stride
        check_int(owner, "cache_mb", cache_mb, minimum=0)
        self.val_fraction, self.test_fraction, self.predict_size = val_fraction, test_fraction, predict_size
        self.cache_mb, self.skip_bad_files = cache_mb, skip_bad_files
        self.keep_aspect = check_bool(owner, "keep_aspect", keep_aspect)
        if keep_aspect:
            check_int(owner, "image_size", image_size, minimum=4, meaning="with keep_aspect: sides are multiples of 4")
        check_number(owner, "cut_threshold", cut_threshold, low=0, high=1, high_open=True, optional=True,
                     meaning="mean absolute difference between consecutive frames that counts as a scene cut; "
                             "0 or null turns cut detection off")
        self.cut_threshold = float(cut_threshold) if cut_threshold else None  # None: detection off
        self._cuts: dict[Path, list[int]] = {}  # file -> sorted first frames of its shots (decoding: once)
        self._frame_sizes: dict[bool, tuple[int, int]] = {}
        self._frame_counts: dict[Path, int] = {}
        self.train_set: VideoClips | None = None

    def _probe(self, files: list[Path], what: str) -> list[Path]:
        """Count every file's frames once (bad input is reported up front, before training). Returns the
        usable files; names every unreadable, corrupt or too-short one in ONE error, or with
        ``skip_bad_files`` in a warning."""
        problems: dict[Path, str] = {}
        for p in progress(files, f"probing {len(files)} {what} video files", total=len(files), unit="file"):
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
                self._cuts[p] = detect_file_cuts(p, self.cut_threshold, frames=self._frame_counts.get(p))
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
                raise fail("VideoFolder", "path", f"a video file or folder for stage {stage!r}", None,
                           meaning="videos to train/validate/test on")
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
