"""Splits of a training set over workers, each a registered component.

``split(labels, num_workers, num_classes, generator, **options) -> Partition``
(:func:`fedpoison.register_split`). The run chooses one with the config fields ``split``
(default ``noniid``, the paper's degree p) and ``split_options``; ``fedpoison list splits``
shows each with its options. Every module of this package registers its split when
imported: a new split is its own file.
"""

from __future__ import annotations

from fedpoison.registry import import_submodules

import_submodules(__name__, __path__)
