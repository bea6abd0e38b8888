"""Export a Pola model to ONNX with dynamic batch, height and width, then check it.

What the graph computes depends on the config's ``default_scope`` and ``--part``:

* ``--part backbone`` (any scope): the Pola backbone, (B, 3, H, W) -> its stage maps.
* mmseg: the segmentor's whole-image inference, (B, 3, H, W) -> logits (B, K, H, W)
  resized to the input, as ``EncoderDecoder.encode_decode``.
* mmpretrain: the classifier, (B, 3, H, W) -> logits (B, K).
* mmdet: backbone and neck, (B, 3, H, W) -> the neck's maps; box heads and their
  post-processing are left to MMDetection / MMDeploy.

Inputs are normalised images (``model.data_preprocessor``'s mean, std and channel order,
recorded in the file's metadata). ``--exporter`` chooses PyTorch's exporter:

* ``dynamo`` (default): ``torch.onnx.export(dynamo=True)``, torch 2.14's default;
  ``torch.export`` traces sizes as symbols.
* ``torchscript``: ``torch.onnx.export(dynamo=False)``, the TorchScript-based exporter
  (deprecated in torch) that MMDeploy and TensorRT workflows call; the trace records
  sizes as tensors. Opsets 11 to 20.

Either way padding, window shifts and positional-encoding resizing stay in the graph.
Opset 20 unless ``--opset`` says otherwise. The trace uses a batch of 2: torch.export
specialises a graph on sizes of 1.
The exported file then runs in onnxruntime at each ``--check-shape`` (batch 1), and the
largest relative difference to PyTorch, ``max |onnx - torch| / max |torch|`` per output,
is printed; above ``--tolerance`` the tool fails.

Example::

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx \\
        --shape 512 512 --check-shape 512 512 --check-shape 384 640
"""
import argparse
import importlib.util
import io
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.utils import mkdir_or_exist
from torch import Tensor, nn

import pola_mm  # noqa: F401  (registers the Pola backbones)
from pola_mm.checkpoint import load_model_checkpoint
from pola_mm.models import PolaSwinTransformer, ShiftWindowAttention

OPSET = 20  # torch.onnx.export's default opset in torch 2.14
EXPORTERS = ('dynamo', 'torchscript')  # torch.onnx.export(dynamo=True / False)
TRACE_BATCH = 2  # torch.export specialises sizes of 1, so the trace never uses them
IMAGE_CHANNELS = 3
SCOPES = ('mmdet', 'mmseg', 'mmpretrain')
DEPLOY_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection, segmentation or classification config')
    parser.add_argument('checkpoint', help='checkpoint of that model (MMEngine format; for a '
                        'classification config also a released ImageNet file)')
    parser.add_argument('--out', help='ONNX file to write (default: next to the checkpoint, '
                        '<checkpoint name>[_backbone].onnx)')
    parser.add_argument('--part', choices=('model', 'backbone'), default='model',
                        help="'model': the task's graph (see above); 'backbone': the "
                        'backbone alone')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224),
                        metavar=('HEIGHT', 'WIDTH'), help='image size of the trace')
    parser.add_argument('--check-shape', type=int, nargs=2, action='append',
                        metavar=('HEIGHT', 'WIDTH'), dest='check_shapes',
                        help='image size onnxruntime is compared with PyTorch at; repeat it '
                        '(default: the trace size and 320 x 480)')
    parser.add_argument('--exporter', choices=EXPORTERS, default=EXPORTERS[0],
                        help="'dynamo' (default): torch.onnx.export(dynamo=True), torch's default; "
                        "'torchscript': torch.onnx.export(dynamo=False), the deprecated "
                        'TorchScript-based exporter that MMDeploy / TensorRT workflows use '
                        '(opsets 11 to 20)')
    parser.add_argument('--opset', type=int, default=OPSET,
                        help=f'ONNX opset version (default {OPSET})')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest accepted relative difference to PyTorch')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    return parser.parse_args(argv)


def check_deploy_packages() -> None:
    """Fail early, naming the extra, when the export or check packages are missing."""
    missing = [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f'ONNX export needs {", ".join(missing)}: '
                          'pip install "pola_mm[deploy]"')


def build_model(config: str, checkpoint: str, cfg_options=None) -> Tuple[nn.Module, Config]:
    """The config's model in eval mode with every weight from ``checkpoint`` (SyncBN
    layers become BatchNorm).

    The checkpoint is read with weights-only unpickling (MMEngine's own objects allowed)
    and must hold every weight of the model, with its shape (positional tables of another
    grid are resized, see :func:`pola_mm.checkpoint.load_into`), and no other. For a
    classification config it may also be a released PolaFormer / PolaFormer++ ImageNet
    file as it is, or ``tools/convert_checkpoint.py``'s output, converted as the config's
    ``load_from`` is in ``tools/test.py`` (see
    :func:`pola_mm.checkpoint.loading.load_model_checkpoint`).

    Raises:
        FileNotFoundError: naming a config or checkpoint that does not exist.
        ValueError: for a config of another scope than mmdet, mmseg or mmpretrain.
        RuntimeError: naming the checkpoint when it is refused, unreadable, of another
            architecture, or does not fit the model.
    """
    for kind, path in (('config', config), ('checkpoint', checkpoint)):
        if '://' not in path and not osp.isfile(path):
            raise FileNotFoundError(f'{kind} file not found: {path}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{config}: default_scope {scope!r} is not one of {SCOPES}')
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    try:
        load_model_checkpoint(model, checkpoint, classifier=scope == 'mmpretrain')
    except RuntimeError as error:
        raise RuntimeError(f'{error} (the model of {config})') from None
    return revert_sync_batchnorm(model).eval(), cfg


class DetectorFeatures(nn.Module):
    """Backbone and neck of an mmdet detector: (B, 3, H, W) -> the neck's maps."""

    output_names = None  # feat0, feat1, ...

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.detector.extract_feat(image))


class SegmentorLogits(nn.Module):
    """Whole-image inference of an mmseg segmentor: (B, 3, H, W) -> (B, K, H, W) logits,
    resized to the input as ``encode_decode`` does."""

    output_names = ('seg_logits', )

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: Tensor) -> Tensor:
        return self.segmentor.encode_decode(image, [dict(img_shape=image.shape[2:])])


class ClassifierLogits(nn.Module):
    """An mmpretrain classifier: (B, 3, H, W) -> (B, K) logits (before softmax)."""

    output_names = ('logits', )

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, image: Tensor) -> Tensor:
        return self.classifier(image, mode='tensor')


TASK_GRAPHS = dict(mmdet=DetectorFeatures, mmseg=SegmentorLogits, mmpretrain=ClassifierLogits)


class IntegralUpsample(nn.Module):
    """mmseg's ``Upsample`` by an integral factor ``s`` as ``F.interpolate(scale_factor=s)``.

    The same resize (output side ``s * t``, source step ``1 / s``), but mmseg computes the
    output size with ``int()``, which an export fixes at the traced size (Semantic FPN's
    head upsamples this way).
    """

    def __init__(self, upsample: nn.Module):
        super().__init__()
        self.scale_factor = float(upsample.scale_factor)
        self.mode = upsample.mode
        self.align_corners = upsample.align_corners

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                             align_corners=self.align_corners)


def keep_sizes_symbolic(module: nn.Module) -> nn.Module:
    """Replace, in place, the layers that would fix the graph to the traced size by
    equivalent ones (:class:`IntegralUpsample`), and refuse those without a dynamic ONNX
    form.

    Raises:
        ValueError: naming an adaptive pooling to more than one cell (e.g. UPerHead's
            pooling pyramid): ONNX has no such operator, and its decomposition holds the
            traced size. Export such a model's backbone with ``--part backbone``.
    """
    from mmseg.models.utils import Upsample
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if (isinstance(child, Upsample) and not child.size and child.scale_factor
                    and float(child.scale_factor).is_integer()):
                setattr(parent, name, IntegralUpsample(child))
    for name, child in module.named_modules():
        if isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and \
                child.output_size not in (1, (1, 1)):
            raise ValueError(
                f'{name} ({child}) pools to a fixed grid: its ONNX form is only valid at the '
                'traced size, so the model has no graph with a dynamic input size; export '
                'its backbone with --part backbone')
    return module


def exported_module(model: nn.Module, scope: str, part: str) -> nn.Module:
    """The module whose forward becomes the graph (see the module docstring), with
    :func:`keep_sizes_symbolic` applied."""
    module = model.backbone if part == 'backbone' else TASK_GRAPHS[scope](model)
    return keep_sizes_symbolic(module)


def minimum_input_size(module: nn.Module) -> int:
    """Smallest image side for which the graph equals the PyTorch model.

    A Pola-Swin graph keeps one window size; PyTorch attends a stage map smaller than a
    window in smaller windows, so every 'S' stage map must be at least a window per side.
    The total stride 32 bounds every model.
    """
    smallest = 32
    for backbone in module.modules():
        if not isinstance(backbone, PolaSwinTransformer):
            continue
        for index, stage in enumerate(backbone.layers):
            stride = backbone.patch_embed.patch_size * 2**index
            for block in stage.blocks:
                if isinstance(block.attn, ShiftWindowAttention):
                    smallest = max(smallest, stride * (block.attn.window_size - 1) + 1)
    return smallest


def _outputs(module: nn.Module, image: Tensor) -> List[Tensor]:
    with torch.no_grad():
        out = module(image)
    return [out] if isinstance(out, Tensor) else list(out)


def check_sizes(module: nn.Module, shapes: Sequence[Sequence[int]]) -> None:
    """Raise ValueError for an image size the exported graph does not reproduce."""
    smallest = minimum_input_size(module)
    small = [tuple(shape) for shape in shapes if min(shape) < smallest]
    if small:
        raise ValueError(f'image sizes {small} are below {smallest} px per side, the '
                         f'smallest for which the graph of {type(module).__name__} equals '
                         'the PyTorch model')


def export_onnx(module: nn.Module, out: str, shape: Sequence[int], opset: int = OPSET,
                metadata: Dict[str, str] = None, exporter: str = EXPORTERS[0]) -> List[str]:
    """Export ``module`` (normalised (B, 3, H, W) images in) to ``out`` with ``exporter``
    (one of :data:`EXPORTERS`); returns the output names.

    Batch, height and width are dynamic (``dynamic_shapes`` of the dynamo exporter,
    ``dynamic_axes`` of the TorchScript one); the trace runs at ``shape`` with a batch of
    :data:`TRACE_BATCH`. ``metadata`` goes to the file's ``metadata_props``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    check_deploy_packages()
    check_sizes(module, [shape])
    module.eval()
    example = torch.randn(TRACE_BATCH, IMAGE_CHANNELS, *shape)
    names = list(getattr(module, 'output_names', None)
                 or [f'feat{i}' for i in range(len(_outputs(module, example)))])
    dims = {0: 'batch', 2: 'height', 3: 'width'}
    mkdir_or_exist(osp.dirname(osp.abspath(out)))
    if exporter == 'dynamo':
        program = torch.onnx.export(module, (example, ), dynamo=True, opset_version=opset,
                                    input_names=['image'], output_names=names,
                                    dynamic_shapes=(dims, ), verbose=False)
        program.model.metadata_props.update(metadata or {})
        program.save(out)
        return names
    import onnx
    graph = io.BytesIO()
    with torch.no_grad():  # the inference forward: no autograd Function in the trace
        torch.onnx.export(module, (example, ), graph, dynamo=False, opset_version=opset,
                          input_names=['image'], output_names=names,
                          dynamic_axes=dict(image=dims))
    model = onnx.load_from_string(graph.getvalue())
    onnx.helper.set_model_props(model, metadata or {})
    onnx.save(model, out)
    return names


def compare_with_onnxruntime(module: nn.Module, onnx_file: str,
                             shapes: Sequence[Sequence[int]],
                             seed: int = 0) -> List[Tuple[Tuple[int, ...], List[float]]]:
    """Run ``onnx_file`` in onnxruntime and ``module`` in PyTorch on the same random
    normalised images (batch 1) of each size in ``shapes``.

    Returns:
        list: ``(input shape, [max |onnx - torch| / max |torch| for each output])``.
    """
    check_deploy_packages()
    import onnxruntime
    check_sizes(module, shapes)
    session = onnxruntime.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    results = []
    for height, width in shapes:
        image = torch.randn(1, IMAGE_CHANNELS, height, width, generator=generator)
        expected = _outputs(module, image)
        actual = session.run(None, {'image': image.numpy()})
        differences = [
            float(np.abs(got - want.numpy()).max() / max(np.abs(want.numpy()).max(), 1e-12))
            for got, want in zip(actual, expected)
        ]
        results.append((tuple(image.shape), differences))
    return results


def preprocessing_metadata(cfg: Config) -> Dict[str, str]:
    """What the graph's input expects, from the config's data preprocessor."""
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    return {key: str(preprocessor[key]) for key in ('mean', 'std', 'bgr_to_rgb', 'to_rgb')
            if key in preprocessor}


def main(argv=None):
    args = parse_args(argv)
    check_deploy_packages()
    model, cfg = build_model(args.config, args.checkpoint, args.cfg_options)
    module = exported_module(model, cfg.default_scope, args.part)
    out = args.out or osp.splitext(args.checkpoint)[0] + (
        '_backbone.onnx' if args.part == 'backbone' else '.onnx')
    check_shapes = args.check_shapes or [list(args.shape), [320, 480]]
    check_sizes(module, [args.shape, *check_shapes])
    metadata = dict(config=osp.basename(args.config), part=args.part,
                    **preprocessing_metadata(cfg))
    names = export_onnx(module, out, args.shape, args.opset, metadata, args.exporter)
    print(f'Exported the {args.part} of {args.config} ({cfg.default_scope}) to {out}: '
          f'{args.exporter} exporter, opset {args.opset}, dynamic batch/height/width, '
          f'traced at {TRACE_BATCH}x{IMAGE_CHANNELS}x{args.shape[0]}x{args.shape[1]}')
    results = compare_with_onnxruntime(module, out, check_shapes)
    print('onnxruntime vs PyTorch, max |onnx - torch| / max |torch| per output:')
    worst = 0.
    for shape, differences in results:
        cells = ', '.join(f'{name} {diff:.2e}' for name, diff in zip(names, differences))
        print(f'  {"x".join(map(str, shape))}: {cells}')
        worst = max(worst, *differences)
    print(f'largest relative difference: {worst:.2e}')
    if worst > args.tolerance:
        raise RuntimeError(f'{out} differs from PyTorch by {worst:.2e} (relative), more than '
                           f'--tolerance {args.tolerance}')
    return out, results


if __name__ == '__main__':
    main()
