"""At 224x224 (384 for B-384) the backbones reproduce the official models' stage outputs.

The golden numbers come from the authors' code run on the same official-layout weights
(tests/fixtures/official_golden/README.md); here the weights go through pola_mm's own
checkpoint path (a released-style file on disk, ``init_cfg=dict(type='Pretrained')``).
"""
import numpy as np
import pytest
import torch

from official_layout import (GOLDEN_DIR, official_checkpoint, official_input,
                             official_layout_state_dict, sample_stage)
from pola_mm.models import PolaPVT, PolaSwinTransformer

BACKBONES = {
    'pola_swin_tiny': (PolaSwinTransformer, dict(arch='tiny')),
    'pola_swin_small': (PolaSwinTransformer, dict(arch='small')),
    'pola_swin_base': (PolaSwinTransformer, dict(arch='base')),
    'pola_swin_base_384': (PolaSwinTransformer,
                           dict(arch='base', pretrain_img_size=384, window_size=12)),
    'pola_pvt_tiny': (PolaPVT, dict(arch='tiny')),
    'pola_pvt_small': (PolaPVT, dict(arch='small')),
    'pola_pvt_medium': (PolaPVT, dict(arch='medium')),
    'pola_pvt_large': (PolaPVT, dict(arch='large')),
}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def build_from_official_file(arch, tmp_path):
    path = tmp_path / f'{arch}.pth'
    torch.save(official_checkpoint(official_layout_state_dict(arch)), path)
    cls, kwargs = BACKBONES[arch]
    backbone = cls(**kwargs, drop_path_rate=0.,
                   init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    return backbone.eval()


def stage_features(backbone, images):
    """Raw stage outputs (B, C, H, W) before any output norm, via forward hooks."""
    captured = []
    if isinstance(backbone, PolaSwinTransformer):
        stages = list(backbone.layers)
        hooks = [s.register_forward_hook(lambda m, i, o: captured.append(o[0])) for s in stages]
    else:
        stages = [getattr(backbone, f'block{s + 1}')[-1] for s in range(4)]
        hooks = [s.register_forward_hook(lambda m, i, o: captured.append(o)) for s in stages]
    with torch.no_grad():
        outputs = backbone(images)
    for hook in hooks:
        hook.remove()
    features = []
    for tokens, out in zip(captured, outputs):
        features.append(tokens.transpose(1, 2).reshape(out.shape))
    return features, outputs


@pytest.mark.parametrize('arch', sorted(BACKBONES))
def test_stage_features_match_official(arch, tmp_path):
    backbone = build_from_official_file(arch, tmp_path)
    golden = np.load(GOLDEN_DIR / f'{arch}.npz')
    features, outputs = stage_features(backbone, official_input(arch))
    for stage, feature in enumerate(features):
        assert tuple(feature.shape) == tuple(golden['stage_shapes'][stage])
        ours = sample_stage(feature, stage)
        for name, value in ours.items():
            if name.endswith('index'):
                np.testing.assert_array_equal(value, golden[name])
            else:
                assert relative_error(value, golden[name]) < 1e-4, (arch, name)
    # The last output is what the official classifier pools: Swin after its final
    # norm (our norm3), PVT without any norm.
    pooled = outputs[-1].mean(dim=(2, 3)).numpy()
    assert relative_error(pooled, golden['pooled']) < 1e-4
