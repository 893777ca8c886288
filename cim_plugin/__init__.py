"""cim-plugin: CIM exemplar compression (CVPR 2023) as a plug-in for PyCIL.

- :mod:`cim_plugin.method`: CIM itself, framework-free (no PyCIL import): CAMs, boxes, the codec,
  herding, the byte-budgeted :class:`~cim_plugin.method.memory.CompressedMemory`, PAUs, the CIM
  branch, the bilevel step, and :class:`~cim_plugin.method.cim.CIM`, the object a training loop drives.
- :mod:`cim_plugin.pycil`: everything that imports or patches PyCIL (the learner registry,
  one file per learner in ``pycil/learners/``, the mixin, data-manager wrappers, the runner and CLI).
- :mod:`cim_plugin.datasets`: the plug-in's datasets (PyCIL ``iData`` objects).
- :mod:`cim_plugin.bench`: baseline-vs-CIM benchmarks, report tables, figures, metrics.

Old flat names (``cim_plugin.memory``, ``cim_plugin.adapter``, ``cim_plugin.benchmark``, ...) still import.
"""

from ._compat import install as _install_old_names

_install_old_names()

__version__ = "0.1.0"
