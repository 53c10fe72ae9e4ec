"""Install mmdet_l2vit: L²ViT and InLine backbones for mmdet / mmsegmentation."""
import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    """Read ``__version__`` from ``mmdet_l2vit/version.py`` without importing."""
    namespace: dict = {}
    with open(osp.join(osp.dirname(__file__), 'mmdet_l2vit', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmdet_l2vit',
    version=read_version(),
    description='L²ViT and InLine linear-attention backbones for '
    'OpenMMLab detection and segmentation',
    packages=find_packages(exclude=('tests', 'configs', 'tools')),
    python_requires='>=3.10',
    install_requires=[
        'torch>=2.6',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'timm>=1.0',
        'numpy',
    ],
    extras_require={
        'det': ['mmdet==3.3.0', 'pycocotools'],
        'seg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
        'tests': ['pytest'],
    },
)
