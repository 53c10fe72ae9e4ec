"""A contact sheet: some painted test pictures tiled into one PNG.

The pictures are those the visualization hooks save with ``tools/test.py
--show-dir`` (each already ground truth | prediction side by side). The
choice is deterministic: the names sorted, then ``num`` evenly spaced ones
(all of them when there are at most ``num``). ``tools/contact_sheet.py`` is
the command line.
"""
import argparse
import math
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: File endings read as pictures.
PICTURE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')

#: Default caption: what each tile shows, left to right.
DEFAULT_CAPTION = 'ground truth | prediction'

Color = Tuple[int, int, int]


def list_pictures(picture_dir: str) -> List[str]:
    """The pictures directly in ``picture_dir``, sorted by name.

    Args:
        picture_dir (str): Folder of painted pictures.

    Returns:
        list[str]: Their paths.

    Raises:
        FileNotFoundError: The folder does not exist.
    """
    if not osp.isdir(picture_dir):
        raise FileNotFoundError(f'picture folder {picture_dir!r} not found')
    names = sorted(name for name in os.listdir(picture_dir)
                   if name.lower().endswith(PICTURE_SUFFIXES))
    return [osp.join(picture_dir, name) for name in names]


def choose_evenly(items: Sequence, num: int) -> list:
    """``num`` items evenly spaced over ``items`` (first and last included),
    or all of them when there are at most ``num``."""
    if num < 1:
        raise ValueError(f'num must be positive, got {num}')
    if len(items) <= num:
        return list(items)
    if num == 1:
        return [items[0]]
    step = (len(items) - 1) / (num - 1)
    return [items[round(i * step)] for i in range(num)]


def caption_strip(text: str, width: int, height: int,
                  background: Color = (255, 255, 255),
                  color: Color = (40, 40, 40)) -> np.ndarray:
    """A ``(height, width, 3)`` strip with ``text`` centred on it.

    The font is as large as fits: half the strip's height, smaller when the
    text would be wider than the strip.
    """
    strip = np.full((height, width, 3), background, dtype=np.uint8)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    (text_w, text_h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    font_scale = min(0.5 * height / text_h, 0.95 * width / text_w)
    thickness = max(1, round(font_scale))
    (text_w, text_h), _ = cv2.getTextSize(text, font, font_scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(strip, text, origin, font, font_scale, color, thickness,
                cv2.LINE_AA)
    return strip


def tile_pictures(pictures: Sequence[np.ndarray], columns: int,
                  padding: int, background: Color) -> np.ndarray:
    """The pictures in a grid of ``columns`` (fewer when there are fewer
    pictures), each centred in a cell as large as the largest picture,
    with ``padding`` pixels around and between the cells."""
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    cell_h = max(p.shape[0] for p in pictures)
    cell_w = max(p.shape[1] for p in pictures)
    grid = np.full((padding + rows * (cell_h + padding),
                    padding + columns * (cell_w + padding), 3), background,
                   dtype=np.uint8)
    for i, picture in enumerate(pictures):
        row, column = divmod(i, columns)
        y = padding + row * (cell_h + padding) + \
            (cell_h - picture.shape[0]) // 2
        x = padding + column * (cell_w + padding) + \
            (cell_w - picture.shape[1]) // 2
        grid[y:y + picture.shape[0], x:x + picture.shape[1]] = picture
    return grid


def make_contact_sheet(picture_dir: str,
                       out_path: str,
                       num: int = 12,
                       columns: int = 3,
                       caption: Optional[str] = DEFAULT_CAPTION,
                       tile_scale: float = 1.0,
                       padding: int = 8,
                       caption_height: int = 36,
                       background: Color = (255, 255, 255)) -> List[str]:
    """Tile ``num`` painted pictures of ``picture_dir`` into one image.

    Layout: a caption row of ``caption_height`` pixels on top (none when
    ``caption`` is empty), then ``ceil(n / columns)`` rows of cells as large
    as the largest (scaled) picture, ``padding`` pixels around and between
    them. Width ``padding + c * (cell_w + padding)`` with
    ``c = min(columns, n)``.

    Args:
        picture_dir (str): Folder of painted pictures (``--show-dir``
            output of ``tools/test.py``).
        out_path (str): Image file to write (PNG recommended); its folder
            is created.
        num (int): How many pictures, evenly spaced over the sorted names.
            Default: 12.
        columns (int): Pictures per row. Default: 3.
        caption (str, optional): Text of the caption row, e.g.
            ``'ground truth | prediction (score >= 0.5)'``.
            Default: :data:`DEFAULT_CAPTION`.
        tile_scale (float): Resize factor of every picture (e.g. 0.5 for a
            smaller sheet). Default: 1.0.
        padding (int): Pixels around and between the pictures. Default: 8.
        caption_height (int): Height of the caption row. Default: 36.
        background (tuple[int]): Background colour. Default: white.

    Returns:
        list[str]: The paths of the pictures on the sheet, in order (left
        to right, top to bottom).

    Raises:
        FileNotFoundError: The folder does not exist or holds no picture.
    """
    if columns < 1:
        raise ValueError(f'columns must be positive, got {columns}')
    paths = choose_evenly(list_pictures(picture_dir), num)
    if not paths:
        raise FileNotFoundError(
            f'no pictures ({", ".join(PICTURE_SUFFIXES)}) in {picture_dir!r}')
    pictures = [cv2.imread(path, cv2.IMREAD_COLOR) for path in paths]
    if tile_scale != 1.0:
        pictures = [
            cv2.resize(p, None, fx=tile_scale, fy=tile_scale,
                       interpolation=cv2.INTER_AREA
                       if tile_scale < 1 else cv2.INTER_LINEAR)
            for p in pictures
        ]
    sheet = tile_pictures(pictures, columns, padding, background)
    if caption:
        sheet = np.concatenate((caption_strip(
            caption, sheet.shape[1], caption_height, background), sheet))
    out_dir = osp.dirname(osp.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    if not cv2.imwrite(out_path, sheet):
        raise OSError(f'could not write {out_path!r}')
    return paths


def contact_sheet_parser() -> argparse.ArgumentParser:
    """Arguments of ``tools/contact_sheet.py``."""
    parser = argparse.ArgumentParser(
        description='Tile painted test pictures (tools/test.py --show-dir) '
        'into one contact-sheet image')
    parser.add_argument('picture_dir', help='folder of painted pictures')
    parser.add_argument('out', help='image file to write, e.g. sheet.png')
    parser.add_argument('--num', type=int, default=12,
                        help='pictures on the sheet, evenly spaced over the '
                        'sorted names (default: 12)')
    parser.add_argument('--columns', type=int, default=3,
                        help='pictures per row (default: 3)')
    parser.add_argument('--caption', default=DEFAULT_CAPTION,
                        help=f'caption row text (default: {DEFAULT_CAPTION!r}'
                        '; "" for none)')
    parser.add_argument('--tile-scale', type=float, default=1.0,
                        help='resize factor of every picture (default: 1)')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``tools/contact_sheet.py``; returns the exit status."""
    args = contact_sheet_parser().parse_args(argv)
    try:
        paths = make_contact_sheet(args.picture_dir, args.out, num=args.num,
                                   columns=args.columns,
                                   caption=args.caption,
                                   tile_scale=args.tile_scale)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'contact sheet of {len(paths)} pictures written to {args.out}')
    return 0


__all__ = [
    'PICTURE_SUFFIXES', 'DEFAULT_CAPTION', 'list_pictures', 'choose_evenly',
    'caption_strip', 'tile_pictures', 'make_contact_sheet',
    'contact_sheet_parser', 'main'
]
