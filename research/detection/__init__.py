"""What detection is built from, so far: anchors (`anchors`), IoU matching and balanced
sampling of anchors and proposals (`assign`), and Uijlings et al.'s selective search
(`selective_search`). The detectors themselves (R-CNN, Fast and Faster R-CNN, Mask R-CNN,
YOLO) are planned, to be assembled from these parts, research.ops and models/ backbones."""
