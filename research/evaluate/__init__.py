"""Evaluation: classification accuracy; VOC/COCO AP (detection.py) and segmentation mean IU."""
