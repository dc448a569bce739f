"""Detectors assembled from models/ backbones and ops/: R-CNN, Fast and Faster R-CNN, Mask R-CNN, YOLO."""
