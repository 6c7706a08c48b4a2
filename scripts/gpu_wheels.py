"""Install the wheels in a folder whose distributions are missing here: ``python scripts/gpu_wheels.py .whl /tmp/site``.

For the offline GPU machine (scripts/gpu_check.sh). A wheel is installed when ``importlib.metadata`` cannot
find its distribution (or, for UPGRADE_IF_OLDER, finds an older version), into a
--target folder that goes first on PYTHONPATH, with --no-index --no-deps. scripts/fetch_wheels.sh never
downloads torch, numpy, triton or lightning, so those are never shadowed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path


def distribution(wheel: Path) -> str:
    """The distribution name of a wheel file name (PEP 427: name-version-...)."""
    return wheel.name.split("-")[0].replace("_", "-").lower()


# Upgraded when older than the wheel: dependency-free backports that newer pydantic needs. Everything else
# is only installed when missing, so version pins between packages already there (pydantic and
# pydantic-core) are never split.
UPGRADE_IF_OLDER = {"typing-extensions", "typing-inspection", "annotated-types"}


def older(present: str, wheel_version: str) -> bool:
    try:
        try:
            from packaging.version import Version
        except ImportError:
            from pip._vendor.packaging.version import Version
        return Version(present) < Version(wheel_version)
    except Exception:  # noqa: BLE001 (unparsable versions: keep what is there)
        return False


def main(folder: str, target: str) -> int:
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # no packaging installed: pip's copy
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    wheels = []
    for wheel in sorted(Path(folder).glob("*.whl")):
        if supported.isdisjoint(parse_wheel_filename(wheel.name)[3]):
            print(f"skipped (not for this interpreter/platform): {wheel.name}")
        else:
            wheels.append(wheel)
    missing = []
    for wheel in wheels:
        try:
            present = metadata.version(distribution(wheel))
        except metadata.PackageNotFoundError:
            missing.append(wheel)
            continue
        if distribution(wheel) in UPGRADE_IF_OLDER and older(present, wheel.name.split("-")[1]):
            print(f"older: {distribution(wheel)} {present} < {wheel.name.split('-')[1]}")
            missing.append(wheel)
        else:
            print(f"present: {distribution(wheel)} {present}")
    print(f"installing {len(missing)} of {len(wheels)} wheels into {target}: "
          f"{', '.join(distribution(w) for w in missing) or 'none'}", flush=True)
    if not missing:
        return 0
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--disable-pip-version-check", "--target", target, *map(str, missing)])
    if rc != 0:  # no pip: a wheel is a zip of the installed tree; keep the executable bits (wandb-core)
        print(f"pip failed ({rc}); unzipping the wheels instead", flush=True)
        for wheel in missing:
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    path = Path(z.extract(info, target))
                    mode = info.external_attr >> 16
                    if mode & 0o111:
                        path.chmod(mode & 0o777)
        rc = 0
    return rc


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/gpu_wheels.py WHEEL_FOLDER TARGET")
    sys.exit(main(sys.argv[1], sys.argv[2]))
