"""CIM's adaptive masks: class activation maps, boxes, the PAU activations, the CIM branch (the network with its
ReLUs replaced by PAUs) and the bilevel meta step that learns the PAUs' parameters."""

from .bilevel import cam_mask_fn, hybrid_input, meta_step
from .boxes import (
                    box_area_fraction,
                    box_areas,
                    box_coverage,
                    box_iou,
                    boxes_to_masks,
                    cam_to_boxes,
                    center_boxes,
                    check_boxes,
                    full_boxes,
                    masks_to_boxes,
                    random_boxes,
                    same_size_center_boxes,
                    same_size_random_boxes,
)
from .cam import cam_from_feature_maps, minmax_normalize, raw_cam
from .cim_branch import CIMBranch, count_relu_sites
from .pau import PAU, pade, relu_fit_coefficients

__all__ = [
    "cam_from_feature_maps", "raw_cam", "minmax_normalize",
    "cam_to_boxes", "masks_to_boxes", "boxes_to_masks", "box_areas", "box_area_fraction", "box_iou", "box_coverage",
    "random_boxes", "center_boxes", "full_boxes", "check_boxes", "same_size_random_boxes", "same_size_center_boxes",
    "PAU", "pade", "relu_fit_coefficients",
    "CIMBranch", "count_relu_sites",
    "meta_step", "cam_mask_fn", "hybrid_input",
]
