"""The lab wing of :mod:`models`: the research side of PICARD, not needed to run the node.

* :mod:`models.lab.phantom` -- synthetic DBT phantoms with lesion ground truth;
* :mod:`models.lab.train` -- training the completion network and critics on normal tissue;
* :mod:`models.lab.metrics` -- pixel, lesion (FROC) and bootstrap metrics;
* :mod:`models.lab.evaluate` -- evaluation cases and the comparison of scoring variants;
* :mod:`models.lab.bench` -- speed and accuracy of the exact and fast inference modes
  (the ``picard-node bench`` command line is ``workers/bench_cli.py``);
* :mod:`models.lab.bundles` -- making bundles that need phantoms (the small initial bundle).

The lab imports the inference core (:mod:`models.networks`, :mod:`models.picard`,
:mod:`models.heatmap`, :mod:`models.fast`, :mod:`models.bundle`); the core never imports the
lab. Import the modules themselves: this package imports nothing on its own.
"""
