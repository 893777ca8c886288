"""The codec ops, plain tensor functions: the raw CIM codec (a low-resolution frame plus the full-resolution
crop of a box, :mod:`.raw`) and JPEG streams with their tables held once (:mod:`.jpeg`). The memories that
store exemplars with them, and the codec registry, are in :mod:`cim_plugin.method.memory`."""

from .jpeg import check_quality, decode_streams, encode_streams, header_of, join_streams, split_streams, table_header
from .raw import (
                  BOX_NBYTES,
                  box_nbytes,
                  compress,
                  decode,
                  degrade,
                  downsample,
                  encode,
                  exemplar_cost,
                  exemplar_nbytes,
                  frame_from_lowres,
                  frame_mask,
                  frame_npixels,
                  lowres_hole,
                  lowres_size,
                  upsample,
)

__all__ = [
    "lowres_size", "downsample", "upsample", "degrade", "encode", "decode", "compress",
    "exemplar_nbytes", "exemplar_cost", "box_nbytes", "BOX_NBYTES",
    "lowres_hole", "frame_mask", "frame_npixels", "frame_from_lowres",
    "check_quality", "encode_streams", "decode_streams", "split_streams", "join_streams", "header_of", "table_header",
]
