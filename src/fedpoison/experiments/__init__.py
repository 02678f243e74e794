"""Experiments: sweep specs, the results store, executors, and the paper's presets.

* :mod:`.spec`      sweep specs (YAML): base config, grid, trials; validated up front
* :mod:`.store`     the SQLite results store, one row per finished run, keyed by config hash
* :mod:`.executors` local / process-pool executors (:mod:`.ray_executor`: Ray)
* :mod:`.sweep`     the driver: plan, skip stored runs, execute, store each as it ends
* :mod:`.presets`   ``fedpoison reproduce``: the paper's tables and figures as shipped specs

See docs/sweeps.md.
"""
