"""The OHIF viewer the viewer test runs: a pinned prebuilt ``@ohif/app`` from npm, and its config.

The npm package ``@ohif/app`` ships a ready ``dist/`` folder (the built viewer). Installing
it with ``npm install`` would fetch its whole development dependency tree (and 3.13.2 names
``@ohif/i18n@3.13.2``, which is not on the registry, so ``npm install`` fails); the test only
needs the built files, so :func:`install` fetches the one tarball with ``npm pack``, checks
it against the pinned integrity hash (the value ``npm view @ohif/app@3.13.2
dist.integrity`` prints) and unpacks ``dist/`` under ``tests/viewer/.ohif/<version>/``.

Run ``python -m tests.viewer.ohif`` to install it (``make viewer-deps`` does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: npm package of the prebuilt viewer.
OHIF_PACKAGE = "@ohif/app"
#: Pinned version (the one VIEWERS.md was measured with).
OHIF_VERSION = "3.13.2"
#: Subresource integrity of the package tarball, as the npm registry publishes it.
OHIF_INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKx"
                  "Ffpq+jd5xXZB9E8EA==")
#: Where :func:`install` unpacks the viewer (ignored by git).
INSTALL_ROOT = Path(__file__).resolve().parent / ".ohif"
#: Environment variable naming another ``dist/`` folder to use instead.
DIST_ENV = "PICARD_OHIF_DIST"


def dist_dir() -> Path:
    """Folder holding the built viewer (``index.html``): ``$PICARD_OHIF_DIST`` or ours."""
    override = os.environ.get(DIST_ENV)
    if override:
        return Path(override)
    return INSTALL_ROOT / OHIF_VERSION / "dist"


def installed() -> bool:
    """Whether :func:`dist_dir` holds a built viewer."""
    return (dist_dir() / "index.html").is_file()


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def install(npm: str = "npm") -> Path:
    """Fetch, check and unpack the pinned viewer if it is not there yet; return its folder.

    Raises
    ------
    RuntimeError
        If ``npm`` is missing, ``npm pack`` fails or the tarball's hash differs from
        :data:`OHIF_INTEGRITY`.
    """
    target = INSTALL_ROOT / OHIF_VERSION
    if (target / "dist" / "index.html").is_file():
        return target / "dist"
    if shutil.which(npm) is None:
        raise RuntimeError(f"{npm!r} not found: install Node.js and npm (Debian: apt-get "
                           "install npm) to fetch the OHIF viewer")
    INSTALL_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=INSTALL_ROOT) as tmp:
        spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
        proc = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", tmp],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {spec} failed: {proc.stderr.strip()[-2000:]}")
        filename = json.loads(proc.stdout)[0]["filename"]
        tarball = Path(tmp) / Path(filename).name
        got = _integrity(tarball)
        if got != OHIF_INTEGRITY:
            raise RuntimeError(f"{spec}: tarball integrity {got} is not the pinned "
                               f"{OHIF_INTEGRITY}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(unpacked, filter="data")
            else:  # the tarball's hash was checked above
                tar.extractall(unpacked)
        staged = Path(tmp) / OHIF_VERSION
        (unpacked / "package").rename(staged)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target / "dist"


def app_config(dicomweb_root: str) -> str:
    """``app-config.js`` pointing OHIF at one DICOMweb server, without start-up dialogs.

    Parameters
    ----------
    dicomweb_root : str
        Absolute URL of the DICOMweb root as the browser sees it, e.g.
        ``"http://127.0.0.1:8042/dicom-web"``.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (viewer test)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


if __name__ == "__main__":
    print(install())
    sys.exit(0)
