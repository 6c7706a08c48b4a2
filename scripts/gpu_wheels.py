"""Install the wheels in a folder whose distributions are missing here: ``python scripts/gpu_wheels.py .whl /tmp/site``.

For the offline GPU machine (scripts/gpu_check.sh). Only distributions that ``importlib.metadata`` cannot
find are installed, into a --target folder that goes first on PYTHONPATH, with --no-index --no-deps:
packages already installed (torch, numpy, triton, typing_extensions, ...) are never shadowed.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def distribution(wheel: Path) -> str:
    """The distribution name of a wheel file name (PEP 427: name-version-...)."""
    return wheel.name.split("-")[0].replace("_", "-").lower()


def main(folder: str, target: str) -> int:
    wheels = sorted(Path(folder).glob("*.whl"))
    missing = []
    for wheel in wheels:
        try:
            print(f"present: {distribution(wheel)} {metadata.version(distribution(wheel))}")
        except metadata.PackageNotFoundError:
            missing.append(wheel)
    print(f"installing {len(missing)} of {len(wheels)} wheels into {target}: "
          f"{', '.join(distribution(w) for w in missing) or 'none'}", flush=True)
    if not missing:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--disable-pip-version-check", "--target", target, *map(str, missing)])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/gpu_wheels.py WHEEL_FOLDER TARGET")
    sys.exit(main(sys.argv[1], sys.argv[2]))
