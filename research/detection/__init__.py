"""Detection: anchors (`anchors`), IoU matching and balanced sampling of anchors and
proposals (`assign`), Uijlings et al.'s selective search (`selective_search`), the Region
Proposal Network (`rpn`), RoI feature extraction (`poolers`: multi-scale RoI Align and RoI
pooling), the RoI heads of Fast/Faster/Mask R-CNN (`roi_heads`: box head, predictor, loss,
postprocess, and the optional mask branch), Mask R-CNN's mask branch (`mask_head`: heads,
predictor, targets, loss, pasting), Faster R-CNN (`faster_rcnn`: FasterRCNN_ResNet50_FPN
with torchvision's layout, FasterRCNN_VGG16 the paper's) and Mask R-CNN (`mask_rcnn`:
MaskRCNN_ResNet50_FPN with torchvision's layout), R-CNN (`rcnn`: warped regions, SVMs, box
regression) and Fast R-CNN (`fast_rcnn`: FastRCNN_VGG16 the paper's, truncated SVD). YOLO
follows from these parts."""
