"""PICARD model core: completion network, critics, MCD scoring, heatmaps, bundles.

>>> from models import Picard
>>> model = Picard.from_bundle()            # models/bundles/default
>>> heat = model.heatmap(slice_01)          # (H, W) MCD scores

The core modules are :mod:`models.networks`, :mod:`models.picard`, :mod:`models.heatmap`,
:mod:`models.fast`, :mod:`models.bundle`, and the helpers :mod:`models.stream` (volumes),
:mod:`models.settings` (card settings), :mod:`models.explain` (completion spread,
expected completion) and :mod:`models.device`. Training, evaluation, benchmarks, synthetic
phantoms and bundle making live in the lab wing :mod:`models.lab`, which imports the core;
the core never imports the lab.
"""

from models.bundle import (
    default_bundle_path,
    import_official,
    read_bundle,
    write_bundle,
)
from models.explain import ExpectedCompletion, VolumeScores
from models.picard import Picard

__all__ = ["ExpectedCompletion", "Picard", "VolumeScores", "default_bundle_path",
           "import_official", "read_bundle", "write_bundle"]
