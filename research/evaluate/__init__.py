"""Evaluation: classification accuracy; later VOC/COCO AP and segmentation mean IU."""
