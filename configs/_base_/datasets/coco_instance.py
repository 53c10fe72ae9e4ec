# COCO instances (data/coco), mmdet's single-scale 1333x800 pipeline (the
# PVT-family Mask R-CNN protocol).
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
