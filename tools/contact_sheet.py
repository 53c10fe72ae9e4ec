"""Tile painted test pictures into one contact-sheet PNG.

Usage: python tools/contact_sheet.py PICTURE_DIR OUT.png [--num 12]
       [--columns 3] [--caption TEXT] [--tile-scale 1.0]

PICTURE_DIR is the ``--show-dir`` output of tools/test.py (mmdet:
work_dir/<timestamp>/DIR; mmseg: work_dir/DIR/vis_data/vis_image), each
picture ground truth | prediction. ``--num`` pictures, evenly spaced over
the sorted names, in rows of ``--columns`` under a caption row.
"""
import sys

from mmdet_l2vit.visualization.contact_sheet import main

if __name__ == '__main__':
    sys.exit(main())
