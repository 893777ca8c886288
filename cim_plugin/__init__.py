"""cim-plugin: CIM exemplar compression (CVPR 2023) as a plug-in for PyCIL.

- :mod:`cim_plugin.method`: CIM itself, framework-free (no PyCIL import): :class:`~cim_plugin.method.CIM`, the
  object a training loop drives; ``memory/`` (the byte-budgeted :class:`~cim_plugin.method.CompressedMemory`,
  :class:`~cim_plugin.method.JpegMemory` and the codec registry), ``masks/`` (CAMs, boxes, PAUs, the CIM branch,
  the bilevel step), ``codec/`` (the codec ops), herding, data and network views.
- :mod:`cim_plugin.pycil`: everything that imports or patches PyCIL (the learner registry,
  one file per learner in ``pycil/learners/``, the mixin, data-manager wrappers, the runner and CLI).
- :mod:`cim_plugin.datasets`: the plug-in's datasets (PyCIL ``iData`` objects).
- :mod:`cim_plugin.bench`: baseline-vs-CIM benchmarks, report tables, figures.
- :mod:`cim_plugin.metrics`: a run's class-incremental metrics (accuracy matrix, forgetting, ...), shared by the
  runner and the benchmark.
"""

__version__ = "0.1.0"
