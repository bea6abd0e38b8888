"""tools/analysis: the benchmark runs and prints its table; get_flops counts the attention;
gpu_check's own checks run without a GPU; launches counts a training step's kernels."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from mmengine.analysis import get_model_complexity_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis'))

import benchmark  # noqa: E402
import soak  # noqa: E402
from get_flops import complexity  # noqa: E402

from pola_mm.models import PolaLinearAttention  # noqa: E402
from subprocess_env import child_env  # noqa: E402


def test_benchmark_quick_prints_side_by_side_table():
    # a child process: the benchmark tunes glibc's malloc for its memory meter
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/analysis/benchmark.py'), '--quick', '--threads', '1',
         '--sizes', 'det', 'half-det', '--device', 'cpu'],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for group in ('core swin-t', 'stage-1 attention swin-t', 'stage-1 attention pvt-t',
                  'backbone swin-t', 'backbone pvt-t', 'stage-1 attention polapp-b2',
                  'backbone polapp-b2'):
        assert group in out
    for case in ('core plain', 'core lean', 'mmdet ShiftWindowMSA w7', 'mmdet SRA sr8',
                 'pola_mm softmax window w7 shift 3', 'pola (lean core)', 'pola (plain core)',
                 'mmdet SwinTransformer', 'PolaSwinTransformer (lean core)', 'mmdet PVT-T',
                 'PolaPVT (lean core)', 'polapp (plain core)', 'polapp (lean core, eager)',
                 'polapp (lean core, fused)',
                 'mmdet PVTv2-b2', 'PolaPP-b2 (lean core)'):
        assert f'| {case} |' in out, case
    assert 'fwd+bwd det / half-det (4x pixels)' in out
    # a group's first row is its baseline; every other row gives the range of its
    # per-round ratios, low-high
    rows = [line.split(' | ') for line in out.splitlines() if line.startswith('| det ')]
    assert rows and all(len(row) == 8 for row in rows)
    groups = set()
    for row in rows:
        if row[0] not in groups:
            groups.add(row[0])
            assert row[5] == '', row
        else:
            low, high = map(float, row[5].split('-'))
            assert 0 < low <= high, row
    assert 'device: cpu, 1 threads, fp32, batch 1' in out


@pytest.mark.parametrize('argv, message', [
    (['--filter', 'nosuch'], "--filter 'nosuch': no group contains it; the groups are "
     '"SIZE THING" for SIZE in det 800x1344, seg 512x512, half-det 400x672 and THING in '
     'core swin-t (3 heads, d 32); core pvt-t (1 head, d 64); stage-1 attention swin-t; '
     'stage-1 attention pvt-t; backbone swin-t; backbone pvt-t; stage-1 attention polapp-b2; '
     'backbone polapp-b2\n'),
    (['--sizes', 'det', '--filter', 'stage-1', 'seg', 'nosuch'],
     "--filter 'seg' 'nosuch': no group contains them; the groups are \"SIZE THING\" for SIZE "
     'in det 800x1344 and THING in core swin-t'),
    (['--repeat', '0'], 'argument --repeat: must be at least 1, got 0\n'),
    (['--batch', '0'], 'argument --batch: must be at least 1, got 0\n'),
    (['--batch', '-2'], 'argument --batch: must be at least 1, got -2\n'),
    (['--threads', '0'], 'argument --threads: must be at least 1, got 0\n'),
], ids=['filter', 'filter_of_another_size', 'repeat', 'batch', 'negative_batch', 'threads'])
def test_benchmark_refuses_arguments_that_measure_nothing(argv, message, capsys):
    """A filter that no group contains, no timed round or an empty batch is an argument
    error before anything runs, not empty tables or a StatisticsError."""
    with pytest.raises(SystemExit) as exit:
        benchmark.parse_args(argv)
    assert exit.value.code == 2
    assert f'error: {message}' in capsys.readouterr().err
    assert benchmark.parse_args(['--filter', 'stage-1', 'backbone']).filter == ['stage-1',
                                                                                'backbone']


@pytest.mark.parametrize('argv, message', [
    (['--window', '0', '--warmup', '0'], 'argument --window: must be at least 1, got 0'),
    (['--checkpoint-interval', '0'], 'argument --checkpoint-interval: must be at least 1, got 0'),
    (['--warmup', '-1'], 'argument --warmup: must be at least 0, got -1'),
    (['--batch-size', '0'], 'argument --batch-size: must be at least 1, got 0'),
    (['--iters', '10', '--warmup', '1', '--window', '5'],
     '--iters must be at least --warmup + 2 * --window = 11, got 10'),
], ids=['window', 'checkpoint_interval', 'warmup', 'batch_size', 'iters'])
def test_soak_refuses_arguments_before_training(argv, message, capsys):
    """Windows of no iteration (which ended in a KeyError after the training) and no
    checkpoints (with an OK) are argument errors before anything runs."""
    with pytest.raises(SystemExit) as exit:
        soak.parse_args(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err.endswith(f'error: {message}\n')


def test_flops_include_the_linear_attention_products():
    """One Pola-PVT attention layer: projections, depthwise conv and the core's matmuls,
    counted by hand (multiply-adds, as mmengine counts)."""
    channels, grid = 64, (7, 7)
    tokens = grid[0] * grid[1]
    layer = PolaLinearAttention(channels, 1, grid, 'qg_kv', attn_impl='reference').eval()
    with torch.no_grad():
        info = get_model_complexity_info(
            layer, inputs=(torch.zeros(1, tokens, channels), grid), show_table=False,
            show_arch=False)
    dims = channels
    projections = tokens * channels * (2 * channels + 2 * channels + channels)
    dwc = tokens * dims * 5 * 5
    # per stream: q_t @ mean(K) (N x 2d x 1), K^T v_t (2d x n x d/2), q_t @ kv (N x 2d x d/2)
    core = 2 * (tokens * 2 * dims + 2 * dims * tokens * dims // 2 +
                tokens * 2 * dims * dims // 2)
    assert info['flops'] == projections + dwc + core


def test_flops_of_the_fast_core_miss_its_products():
    """What the reference core is for: tracing cannot see into the lean core's autograd
    Functions, so counting with it leaves the core's products out."""
    grid = (7, 7)

    def flops(impl):
        layer = PolaLinearAttention(64, 1, grid, 'qg_kv', attn_impl=impl).eval()
        with torch.no_grad():
            return get_model_complexity_info(layer, inputs=(torch.zeros(1, 49, 64), grid),
                                             show_table=False, show_arch=False)['flops']

    assert flops('torch') < flops('reference')


def test_tools_import_nothing_from_the_tests():
    for path in (ROOT / 'tools').rglob('*.py'):
        for line in path.read_text().splitlines():
            assert not (line.lstrip().startswith(('import ', 'from ')) and 'tests' in line), \
                (path, line)
            assert "'tests'" not in line, (path, line)


def test_released_arch_parameters_match_the_official_counts():
    # parameters computed from the official checkpoints' shapes (design note
    # official-models.md, section 2): 12.92M with the head, 12.41M without
    classifier = complexity('pola_pvt_tiny', (224, 224))
    assert round(classifier['params'] / 1e6, 2) == 12.92
    assert classifier['size'] == (224, 224) and classifier['flops'] > 2e9
    backbone = complexity('pola_pvt_tiny', (800, 1333))
    assert round(backbone['params'] / 1e6, 2) == 12.41
    # the attention is linear in the tokens, so FLOPs scale with pixels (21.3x here)
    assert 18 < backbone['flops'] / classifier['flops'] < 22


def test_swin_flops_count_the_window_stages():
    """Pola-Swin-T at 224: the 'S' stages' window attention traces too (29.29M
    parameters with the head, computed from the official checkpoints' shapes)."""
    classifier = complexity('pola_swin_tiny', (224, 224))
    assert round(classifier['params'] / 1e6, 2) == 29.29
    assert 4e9 < classifier['flops'] < 5.5e9


def test_gpu_check_explains_itself_and_needs_cuda(tmp_path):
    script = str(ROOT / 'tools/analysis/gpu_check.py')
    proc = subprocess.run([sys.executable, script, '--help'], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Needs a CUDA device' in proc.stdout and '--skip' in proc.stdout
    out_file = tmp_path / 'gpu_check.json'
    proc = subprocess.run([sys.executable, script, '--json', str(out_file)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 2
    assert 'no CUDA device' in proc.stdout + proc.stderr
    assert not out_file.exists()  # nothing else was done


def test_gpu_check_report_names_the_device_and_the_kernel_launch(tmp_path):
    """The report's header as a GPU run writes it (CUDA queries stood in for, every check
    skipped): device, capability, versions and the kernels' launch options, so figures
    measured on a GPU can be traced to the launch options they were measured with."""
    import gpu_check

    from pola_mm.ops.triton_compile import BLOCK_TOKENS, CHUNK_TOKENS, LAUNCH_OPTIONS
    out_file = tmp_path / 'gpu_check.json'
    with mock.patch.object(torch.cuda, 'is_available', return_value=True), \
            mock.patch.object(torch.cuda, 'current_device', return_value=0), \
            mock.patch.object(torch.cuda, 'get_device_name', return_value='NVIDIA H200'), \
            mock.patch.object(torch.cuda, 'get_device_capability', return_value=(9, 0)):
        code = gpu_check.main(['--json', str(out_file), '--skip', *gpu_check.CHECKS])
    assert code == 0
    report = json.loads(out_file.read_text())
    assert report['device'] == 'NVIDIA H200' and report['capability'] == '9.0'
    assert report['kernel_launch'] == dict(LAUNCH_OPTIONS, block_tokens=BLOCK_TOKENS,
                                           chunk_tokens=CHUNK_TOKENS)
    assert report['checks'] == {}


def test_gpu_check_focal_loss_stands_in_for_missing_cuda_ops():
    """The training check's focal loss on GPU tensors: with an mmcv built without CUDA ops
    (this machine's), mmdet's CUDA-op entry is replaced, inside the context only, by the
    PyTorch form that mmdet's FocalLoss takes for CPU tensors: the same losses."""
    from gpu_check import gpu_focal_loss
    from mmcv.ops import get_compiling_cuda_version
    from mmdet.models.losses import FocalLoss, focal_loss
    assert get_compiling_cuda_version() == 'not available'
    cuda_op = focal_loss.sigmoid_focal_loss
    context, description = gpu_focal_loss()
    assert 'PyTorch' in description
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(40, 4, generator=gen)
    target = torch.randint(0, 5, (40, ), generator=gen)  # 4: background
    weight = torch.rand(40, generator=gen)
    loss = FocalLoss(gamma=2., alpha=0.25)
    with context:
        assert focal_loss.sigmoid_focal_loss is not cuda_op
        for reduction, avg_factor in (('mean', 7.), ('sum', None), ('none', None)):
            stand_in = focal_loss.sigmoid_focal_loss(pred, target, weight, 2., 0.25,
                                                     reduction, avg_factor)
            expected = loss(pred, target, weight, avg_factor=avg_factor,
                            reduction_override=reduction)
            assert stand_in.shape == expected.shape and stand_in.abs().sum() > 0
            torch.testing.assert_close(stand_in, expected)
    assert focal_loss.sigmoid_focal_loss is cuda_op


def test_gpu_check_kernel_check_runs_in_the_interpreter():
    """The kernel check's own code, in a child under Triton's CPU interpreter on one small
    shape and head dim: every dtype setting with IEEE and (asked for, not taken on CPU)
    TF32 products, within tolerance; the matmul precision is restored after."""
    code = ('import json, torch, gpu_check\n'
            'result = gpu_check.check_kernels(torch.device("cpu"), [(1, 2, 97, 70, 32)], (16, ))\n'
            'assert torch.get_float32_matmul_precision() == "highest"\n'
            'print(json.dumps(result))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT,
                          env=child_env(ROOT / 'tools' / 'analysis', ROOT, TRITON_INTERPRET='1',
                                        OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(result['settings']) == sorted(
        f'{precision} {dtype} d16' for precision in ('ieee', 'tf32')
        for dtype in ('fp32', 'bf16', 'fp16', 'autocast'))
    assert result['passed'], result['settings']
    assert 0 < result['settings']['ieee fp32 d16']['error'] < 1e-4


def test_gpu_check_backbone_comparison_runs_on_cpu(monkeypatch):
    """The backbone checks' comparison on CPU, one small released model per family at
    64 x 64, 'torch' against 'reference' (the PolaFormer++ check's pairing): every model
    compared, two different paths (an error above 0, as a path compared with itself
    would not give), within the bar."""
    import dataclasses

    from gpu_check import BACKBONE_TOLERANCE, compare_backbones

    from pola_mm import variants
    small = tuple(dataclasses.replace(variants.released_model(name), img_size=64)
                  for name in ('pola_swin_tiny', 'pola_pvt_tiny', 'polapp_b0'))
    monkeypatch.setattr(variants, 'RELEASED', small)
    result = compare_backbones(torch.device('cpu'), tuple(model.family for model in small),
                               ('torch', 'reference'),
                               ('attn.power', 'attn.scale', 'attn.s1', 'attn.s2'))
    assert sorted(result['models']) == sorted(model.name for model in small)
    assert all(0 < r['error'] < BACKBONE_TOLERANCE for r in result['models'].values())
    assert result['passed'] and 'worst relative error' in result['figure']


def test_gpu_check_training_runs_its_detector(tmp_path):
    """The training check's own code, run on CPU (mmengine's AMP wrapper allowed there):
    the demo detector trains with bf16 autocast, every iteration's loss is recorded and
    finite, and the check still fails, since no Triton kernel configuration ran."""
    from gpu_check import check_training
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    with mock.patch.object(amp_optimizer_wrapper, 'is_cuda_available', lambda: True):
        result = check_training(torch.device('cpu'), str(tmp_path), 12, 'bfloat16')
    assert len(result['losses']) == 12
    assert all(math.isfinite(loss) and loss > 0 for loss in result['losses'])
    assert result['kernel_status'] == {} and result['fallback_warnings'] == []
    assert result['passed'] is False
    assert 'PyTorch' in result['focal_loss'] and '0 kernel configurations' in result['figure']


def test_launch_count_sees_the_kernels_as_on_cuda():
    """tools/analysis/launches.py (a child process: it sets TRITON_INTERPRET): each Pola
    layer with the Triton core launches its six kernels once per training step, fewer
    launches in all than with the PyTorch core; depthwise convolutions are counted with
    their CUDA backward, and the interpreter's own operations not at all."""
    proc = subprocess.run([sys.executable, str(ROOT / 'tools/analysis/launches.py'), '--ops'],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    rows = {}
    group = None
    for line in out.splitlines():
        if line.startswith('Pola-'):
            group = line.split(' (')[0]
        elif line.startswith('  ') and line.split()[-1].isdigit():
            *name, forward, backward, total, triton = line.split()
            rows[group, ' '.join(name)] = [int(n) for n in (forward, backward, total, triton)]
    for family in ('Pola-Swin-T stage 1', 'Pola-PVT-T stage 1'):
        fused, torch_core = (rows[family, f"pola attn_impl='{impl}'"]
                             for impl in ('triton', 'torch'))
        assert fused[3] == 6 and torch_core[3] == 0
        for forward, backward, total, _ in (fused, torch_core):
            assert forward > 0 and backward > 0 and total == forward + backward
        assert fused[2] < torch_core[2]
    assert "'convolution_backward': 1" in out
    assert "'set_'" not in out and "'_DepthwiseConv2d'" not in out
