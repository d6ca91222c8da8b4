"""Run ``dciodvfy`` (dicom3tools) on a DICOM file and split its report.

``dciodvfy`` checks an instance against the IOD its SOP Class UID names. Each line it
prints starts with ``Error -`` or ``Warning -`` (other lines name the IOD or module being
checked). Every object the node writes must give no errors.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

#: Name of the dicom3tools validator on ``PATH``.
DCIODVFY = "dciodvfy"


class DciodvfyNotFoundError(RuntimeError):
    """Raised when the ``dciodvfy`` binary is not on ``PATH`` (Debian: ``dicom3tools``)."""


def dciodvfy_available() -> bool:
    """Return whether the ``dciodvfy`` binary is on ``PATH``."""
    return shutil.which(DCIODVFY) is not None


def run_dciodvfy(path: Path | str, *, timeout_s: float = 120.0) -> tuple[list[str], list[str]]:
    """Validate one DICOM file with ``dciodvfy``.

    Parameters
    ----------
    path : Path or str
        DICOM file (Part 10, with preamble and meta header).
    timeout_s : float
        Seconds before the validator is killed. Default 120.

    Returns
    -------
    errors : list of str
        Lines starting with ``Error``, prefix kept.
    warnings : list of str
        Lines starting with ``Warning``, prefix kept.

    Raises
    ------
    DciodvfyNotFoundError
        If ``dciodvfy`` is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    """
    exe = shutil.which(DCIODVFY)
    if exe is None:
        raise DciodvfyNotFoundError(
            f"{DCIODVFY!r} not found on PATH; install the Debian package 'dicom3tools'"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such DICOM file: {path}")
    proc = subprocess.run(
        [exe, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    errors: list[str] = []
    warnings: list[str] = []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        line = line.strip()
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    if errors:
        logger.debug("dciodvfy %s: %d errors, %d warnings", path, len(errors), len(warnings))
    return errors, warnings
