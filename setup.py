"""Installs pola_mm. torch and a compiled mmcv (2.0 <= version < 2.2, with ops) are expected
to be present already: they depend on the machine (CUDA, compiler) and are set up by
``make setup`` (tools/setup_env.sh) or by the user's own OpenMMLab environment."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    namespace = {}
    exec((ROOT / 'pola_mm' / 'version.py').read_text(), namespace)
    return namespace['__version__']


setup(
    name='pola_mm',
    version=read_version(),
    description='PolaFormer (polarity-aware linear attention) backbones for '
    'MMDetection, MMSegmentation and MMPretrain',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['pola_mm', 'pola_mm.*']),
    python_requires='>=3.8',
    install_requires=[
        'mmengine>=0.10.4,<0.11',
        'mmdet>=3.3.0,<3.4',
        'mmsegmentation>=1.2.2,<1.3',
        'mmpretrain>=1.2.0,<1.3',
        'timm>=0.9',
        'numpy',
        'ftfy',
        'regex',
    ],
    extras_require={
        'tests': ['pytest>=7.3'],
        # tools/deployment/export_onnx.py: torch.onnx's dynamo exporter and the check
        'deploy': ['onnx>=1.17', 'onnxscript>=0.7', 'onnxruntime>=1.17'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
