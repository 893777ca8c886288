"""cim-plugin: CIM exemplar compression (CVPR 2023) as a plug-in for PyCIL.

The core (CAM, boxes, codec, memory, PAU, bilevel step, datasets) is independent of
PyCIL; everything that touches PyCIL lives in :mod:`cim_plugin.pycil`.
"""

__version__ = "0.1.0"
