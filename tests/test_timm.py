"""The released PolaFormer classifiers through timm (issue 7)."""
import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

import pola_mm  # noqa: F401  (registers the timm names)
from official_layout import official_checkpoint, official_input, official_layout_state_dict
from test_classification import EVAL_CONFIGS, build_classifier, load_released, relative_error


def pretrained_cfg(name: str) -> dict:
    return timm.models.get_pretrained_cfg(name).to_dict()


@pytest.fixture
def released_file(tmp_path):
    """Write a released-style file of ``arch`` with random weights; return its path."""

    def write(arch: str, seed: int = 0) -> str:
        path = tmp_path / f'{arch}.pth'
        torch.save(official_checkpoint(official_layout_state_dict(arch, seed=seed)), path)
        return str(path)

    return write


@pytest.mark.parametrize('arch', sorted(EVAL_CONFIGS))
def test_timm_logits_equal_mmpretrain_logits(arch, released_file):
    path = released_file(arch)
    model = timm.create_model(arch, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    reference = build_classifier(arch)
    load_released(reference, {'model': official_layout_state_dict(arch)}, arch)
    images = official_input(arch, batch=1)
    with torch.no_grad():
        logits = model(images)
        expected = reference(images, mode='tensor')
    assert logits.shape == (1, 1000)
    assert relative_error(logits, expected) < 1e-6


def test_pretrained_cfg_gives_the_official_preprocessing():
    config = resolve_data_config(model=timm.create_model('pola_pvt_tiny'))
    assert config == resolve_data_config(pretrained_cfg=pretrained_cfg('pola_pvt_tiny'))
    assert config['input_size'] == (3, 224, 224)
    assert config['crop_pct'] == 0.875 and config['interpolation'] == 'bicubic'
    assert config['mean'] == pytest.approx((0.485, 0.456, 0.406))
    resize, crop = create_transform(**config).transforms[:2]
    assert resize.size == 256 and crop.size == (224, 224)
    assert resize.interpolation == transforms.InterpolationMode.BICUBIC

    # The 384 model is evaluated on the whole image resized to 384x384 (no crop).
    config = resolve_data_config(pretrained_cfg=pretrained_cfg('pola_swin_base_384'))
    resize, crop = create_transform(**config).transforms[:2]
    assert resize.size == (384, 384) and crop.size == (384, 384)


def test_new_head_keeps_the_released_backbone(released_file):
    path = released_file('pola_pvt_tiny')
    released = timm.create_model('pola_pvt_tiny', pretrained=True,
                                 pretrained_cfg_overlay=dict(file=path)).eval()
    model = timm.create_model('pola_pvt_tiny', pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    images = official_input('pola_pvt_tiny', batch=1)
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == (1, 512, 7, 7)
        assert torch.equal(features, released.forward_features(images))
        assert model(images).shape == (1, 7)
        pooled = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        assert torch.equal(model(images), pooled)
    assert model.num_classes == 0 and pooled.shape == (1, 512)


def test_bad_requests_are_refused(released_file):
    with pytest.raises(ValueError, match='pretrained_cfg_overlay=dict\\(file=PATH\\)'):
        timm.create_model('pola_pvt_tiny', pretrained=True)
    with pytest.raises(ValueError, match='features_only'):
        timm.create_model('pola_pvt_tiny', features_only=True)
    with pytest.raises(RuntimeError, match='holds pola_pvt_tiny weights, but the model is '
                       'pola_pvt_small'):
        timm.create_model('pola_pvt_small', pretrained=True,
                          pretrained_cfg_overlay=dict(file=released_file('pola_pvt_tiny')))
