"""PICARD model core: completion network, critics, MCD scoring, heatmaps, bundles.

>>> from models import Picard
>>> model = Picard.from_bundle()            # models/bundles/default
>>> heat = model.heatmap(slice_01)          # (H, W) MCD scores
"""

from models.bundle import default_bundle_path, import_official, make_initial_bundle
from models.picard import Picard

__all__ = ["Picard", "default_bundle_path", "import_official", "make_initial_bundle"]
