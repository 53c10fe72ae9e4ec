"""Check a config's datasets before anything is built.

``tools/train.py`` and ``tools/test.py`` call :func:`check_config_data`
first, so a missing dataset, a corrupt or empty annotation file, images that
are listed but absent, or label maps with out-of-range values stop the run
with one message that says what is wrong and what to do, instead of a
traceback from deep inside a dataset class (or an hour later).
"""
import json
import os
import os.path as osp
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .demo_data import DEFAULT_ROOT
from .transforms import LabelMapError, check_label_values

#: Annotation files up to this size are parsed in full (COCO val2017: 25MB);
#: larger ones only get a cheap truncation check.
FULL_CHECK_BYTES = 64 * 2**20
#: Label maps scanned for out-of-range values when a split has at most
#: this many (larger splits are checked at load time by CheckSegLabels).
SCAN_LIMIT = 2000
DEMO_HINT = (
    'To try the package without the dataset, train and test on the embedded '
    'synthetic data instead: `make demo`, or `python tools/train.py '
    'configs/demo/maskrcnn_l2vit_demo.py` / '
    '`configs/demo/upernet_l2vit_demo.py`, which generate it in data/demo/ '
    'on first use.')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class DatasetError(RuntimeError):
    """A dataset that is missing or unusable."""


def _join(root: str, path: str) -> str:
    joined = path if not root or osp.isabs(path) else osp.join(root, path)
    return osp.normpath(joined) if joined else joined


def iter_dataset_cfgs(cfg, loaders: Sequence[str] = LOADERS
                      ) -> Iterator[Tuple[str, dict]]:
    """Yield ``(loader_name, dataset_cfg)``, unwrapping dataset wrappers
    (``RepeatDataset``, ``ClassBalancedDataset``, ``ConcatDataset``)."""
    for name in loaders:
        loader = cfg.get(name)
        if not loader or not loader.get('dataset'):
            continue
        stack = [loader['dataset']]
        while stack:
            ds = stack.pop()
            if 'datasets' in ds:
                stack.extend(ds['datasets'])
            elif 'dataset' in ds:
                stack.append(ds['dataset'])
            else:
                yield name, ds


def _is_seg(ds: dict) -> bool:
    return 'seg_map_path' in (ds.get('data_prefix') or {})


def expected_layout(cfg, loaders: Sequence[str] = LOADERS) -> str:
    """The files and folders the config reads, one per line."""
    lines: List[str] = []
    for name, ds in iter_dataset_cfgs(cfg, loaders):
        root = ds.get('data_root', '') or ''
        prefix = ds.get('data_prefix') or {}
        if _is_seg(ds):
            lines.append(f'  {_join(root, prefix["img_path"])}/  '
                         f'images (*{ds.get("img_suffix", ".jpg")})  '
                         f'[{name}]')
            lines.append(f'  {_join(root, prefix["seg_map_path"])}/  '
                         'label maps (*'
                         f'{ds.get("seg_map_suffix", ".png")}, one per '
                         'image, pixel value = class index)')
        else:
            if ds.get('ann_file'):
                lines.append(f'  {_join(root, ds["ann_file"])}  '
                             f'COCO instances JSON  [{name}]')
            img = prefix.get('img', prefix.get('img_path', ''))
            lines.append(f'  {_join(root, img)}/  the images it lists')
    return '\n'.join(dict.fromkeys(lines))  # unique, in order


def _missing_dataset(cfg, loaders: Sequence[str], what: str) -> DatasetError:
    first = next(iter_dataset_cfgs(cfg, loaders), (None, {}))[1]
    root = osp.normpath(str(first.get('data_root') or '.'))
    hint = DEMO_HINT
    if root.startswith(osp.normpath(DEFAULT_ROOT)):
        known = ('the synthetic demo data (write it with `python '
                 'tools/generate_demo_data.py`)')
        hint = ''
    elif 'coco' in root.lower():
        known = 'COCO 2017 (https://cocodataset.org)'
    elif _is_seg(first):
        known = ('ADE20K (ADEChallengeData2016, '
                 'http://sceneparsing.csail.mit.edu)')
    else:
        known = 'the dataset'

    overrides = ' '.join(f'{n}.dataset.data_root=DIR'
                         for n in loaders if cfg.get(n))
    for name in ('val_evaluator', 'test_evaluator'):
        metric = cfg.get(name)
        if isinstance(metric, dict) and metric.get('ann_file') and \
                name.replace('evaluator', 'dataloader') in loaders:
            overrides += f' {name}.ann_file=FILE'

    return DatasetError(
        f'{what}\nThis config expects {known} in this layout (relative to '
        f'the working directory):\n{expected_layout(cfg, loaders)}\n'
        'Put the data (or a symlink) there, or point the config elsewhere '
        f'with --cfg-options {overrides}.\n{hint}'.rstrip())


def load_coco_json(ann_file: str) -> dict:
    """Parse a COCO annotation file, or raise :class:`DatasetError` saying
    why it cannot be used."""
    if osp.getsize(ann_file) == 0:
        raise DatasetError(f'annotation file {ann_file} is empty (0 bytes); '
                           're-download or regenerate it.')
    try:
        with open(ann_file, 'rb') as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(
            f'annotation file {ann_file} is not valid JSON ({e}); it is '
            'probably truncated or corrupt: re-download or regenerate '
            'it.') from e
    if not isinstance(data, dict) or not isinstance(data.get('images'),
                                                    list):
        raise DatasetError(
            f'annotation file {ann_file} is not a COCO instances file: '
            'expected a JSON object with "images", "annotations" and '
            f'"categories" lists, got {type(data).__name__} with keys '
            f'{sorted(data)[:8] if isinstance(data, dict) else "-"}.')
    return data


def _tail_is_closed(path: str) -> bool:
    with open(path, 'rb') as f:
        head = f.read(64).lstrip()
        f.seek(max(0, osp.getsize(path) - 64))
        tail = f.read().rstrip()
    return head.startswith(b'{') and tail.endswith(b'}')


def check_coco(ann_file: str, img_dir: str, classes: Optional[Sequence[str]],
               need_annotations: bool) -> None:
    """Check one COCO-style split: the JSON parses, lists images, every
    listed image exists, and the configured classes are among its
    categories."""
    size = osp.getsize(ann_file)
    if size > FULL_CHECK_BYTES:
        if not _tail_is_closed(ann_file):
            raise DatasetError(
                f'annotation file {ann_file} does not look like complete '
                'JSON (it does not start with "{" and end with "}"); it is '
                'probably truncated: re-download it.')
        return
    data = load_coco_json(ann_file)
    images = data['images']
    if not images:
        raise DatasetError(f'annotation file {ann_file} lists no images.')
    if need_annotations and not data.get('annotations'):
        raise DatasetError(
            f'annotation file {ann_file} has no annotations; a training or '
            'evaluation split needs instance annotations.')
    names = {c.get('name') for c in data.get('categories', [])}
    if classes is not None and not names & set(classes):
        raise DatasetError(
            f'none of the config classes {list(classes)[:6]}... appear in '
            f'the categories of {ann_file} ({sorted(names)[:6]}...): the '
            'annotation file does not belong to this config.')
    missing = [
        im.get('file_name', '?') for im in images
        if not osp.isfile(osp.join(img_dir, str(im.get('file_name', ''))))
    ]
    if missing:
        raise DatasetError(
            f'{len(missing)} of the {len(images)} images listed in '
            f'{ann_file} are missing from {img_dir}/ (e.g. '
            f'{", ".join(missing[:3])}). Complete the image folder or '
            'regenerate the annotation file.')


def _seg_meta(ds: dict) -> Tuple[Optional[int], bool, int]:
    """(num_classes, reduce_zero_label, ignore_index) of a seg dataset."""
    import inspect

    from mmengine.registry import DATASETS
    classes = (ds.get('metainfo') or {}).get('classes')
    reduce_zero_label = ds.get('reduce_zero_label')
    ignore_index = ds.get('ignore_index', 255)
    try:
        cls = DATASETS.get(ds['type'])
    except Exception:  # the toolbox is not importable: skip class facts
        cls = None
    if cls is not None:
        if classes is None:
            classes = getattr(cls, 'METAINFO', {}).get('classes')
        if reduce_zero_label is None:
            param = inspect.signature(cls).parameters.get('reduce_zero_label')
            reduce_zero_label = bool(param.default) if param else False
    return (len(classes) if classes else None, bool(reduce_zero_label),
            ignore_index)


def check_seg(ds: dict, img_dir: str, seg_dir: str) -> None:
    """Check one segmentation split: every image has a label map, and (for
    up to :data:`SCAN_LIMIT` maps) every value is a class or ignored."""
    import cv2
    img_suffix = ds.get('img_suffix', '.jpg')
    seg_suffix = ds.get('seg_map_suffix', '.png')
    if not osp.isdir(seg_dir):
        raise DatasetError(f'label-map folder {seg_dir}/ does not exist '
                           f'(images are in {img_dir}/).')
    stems = [f[:-len(img_suffix)] for f in sorted(os.listdir(img_dir))
             if f.endswith(img_suffix)]
    if not stems:
        raise DatasetError(f'image folder {img_dir}/ has no *{img_suffix} '
                           'files.')
    maps = {f[:-len(seg_suffix)] for f in os.listdir(seg_dir)
            if f.endswith(seg_suffix)}
    missing = [s for s in stems if s not in maps]
    if missing:
        raise DatasetError(
            f'{len(missing)} of the {len(stems)} images in {img_dir}/ have '
            f'no label map in {seg_dir}/ (e.g. {missing[0]}{seg_suffix}).')
    num_classes, reduce_zero_label, ignore_index = _seg_meta(ds)
    if num_classes is None or len(stems) > SCAN_LIMIT:
        return
    for stem in stems:
        path = osp.join(seg_dir, stem + seg_suffix)
        seg = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if seg is None:
            raise DatasetError(f'label map {path} cannot be read as an '
                               'image; it is corrupt.')
        if seg.ndim != 2:
            raise DatasetError(
                f'label map {path} has {seg.shape[2]} channels; label maps '
                'must be single-channel class-index PNGs.')
        values = np.unique(seg).astype(np.int64)
        if reduce_zero_label:
            values = np.where(values == 0, 255, values - 1)
            values = np.where(values == 254, 255, values)
        try:
            check_label_values(values, num_classes, ignore_index,
                               reduce_zero_label, path)
        except LabelMapError as e:
            raise DatasetError(str(e)) from e


def check_config_data(cfg, loaders: Sequence[str] = LOADERS) -> None:
    """Check every dataset of ``loaders`` in ``cfg``; raise
    :class:`DatasetError` with the expected layout, the problem and the fix
    (including the demo alternative when the data is absent)."""
    for name, ds in iter_dataset_cfgs(cfg, loaders):
        root = ds.get('data_root', '') or ''
        prefix: Dict[str, str] = ds.get('data_prefix') or {}
        if root and not osp.isdir(root):
            raise _missing_dataset(
                cfg, loaders, f'Dataset folder {osp.normpath(root)}/ (used '
                f'by {name}) does not exist.')
        if _is_seg(ds):
            img_dir = _join(root, prefix['img_path'])
            if not osp.isdir(img_dir):
                raise _missing_dataset(
                    cfg, loaders, f'Image folder {img_dir}/ (used by {name}) '
                    'does not exist.')
            check_seg(ds, img_dir, _join(root, prefix['seg_map_path']))
        elif ds.get('ann_file'):
            ann_file = _join(root, ds['ann_file'])
            if not osp.isfile(ann_file):
                raise _missing_dataset(
                    cfg, loaders, f'Annotation file {ann_file} (used by '
                    f'{name}) does not exist.')
            img_dir = _join(root, prefix.get('img', prefix.get('img_path',
                                                                '')))
            classes = (ds.get('metainfo') or {}).get('classes')
            # COCO test-dev ``image_info_*.json`` files list images only.
            check_coco(ann_file, img_dir, classes,
                       need_annotations='image_info' not in ds['ann_file'])
    for name in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(name)
        for metric in (evaluator if isinstance(evaluator, (list, tuple))
                       else [evaluator] if evaluator else []):
            ann_file = metric.get('ann_file')
            if ann_file and not osp.isfile(ann_file) and \
                    name.replace('evaluator', 'dataloader') in loaders:
                raise _missing_dataset(
                    cfg, loaders, f'Annotation file {ann_file} (used by '
                    f'{name}) does not exist.')
