"""Evaluation: classification accuracy, detection AP (VOC and COCO); later segmentation mean IU."""
