"""Detection: anchors (`anchors`), IoU matching and balanced sampling of anchors and
proposals (`assign`), Uijlings et al.'s selective search (`selective_search`), the Region
Proposal Network (`rpn`), the RoI heads of Fast/Faster R-CNN (`roi_heads`: RoI pooling and
multi-scale RoI Align, box head, predictor, loss, postprocess) and Faster R-CNN itself
(`faster_rcnn`: FasterRCNN_ResNet50_FPN with torchvision's layout, FasterRCNN_VGG16 the
paper's). R-CNN, Fast R-CNN, Mask R-CNN and YOLO follow from these parts."""
