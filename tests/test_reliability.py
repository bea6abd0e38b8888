"""Interrupted runs lose nothing: a run killed mid-epoch, or while saving, resumes with
``--resume`` to the weights of an uninterrupted run; a full disk leaves the saved
checkpoints as they were; a non-finite loss stops training, naming the iteration.

The runs are those of tests/test_tools_detection.py (RetinaNet, a tiny Pola-PVT with
stochastic depth, 64-px shapes images with random flips, 2 iterations per epoch,
validation after each epoch), with a fixed seed. Kills happen in child processes that run
tools/train.py; their configs import this module for the hooks that kill them at the
chosen moment. Every run uses one CPU thread, so that all compute the same numbers.
"""
import contextlib
import os
import os.path as osp
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from pola_mm.checkpoint import checkpoint_globals
from pola_mm.engine import (AtomicCheckpointHook, FiniteLossHook, RandomStateHook, atomic_write,
                            write_text_atomic)
from pola_mm.testing import make_shapes_coco
from pola_mm.testing.ade import make_shapes_ade
from subprocess_env import child_env
from test_tools_detection import REPO, _child_config, small_options, train_tool

CONFIG = osp.join(REPO, 'configs', 'detection', 'retinanet_pola-pvt-t_fpn_1x_coco.py')
TESTS = osp.dirname(osp.abspath(__file__))


@HOOKS.register_module()
class KillAfterIteration(Hook):
    """SIGKILL this process after batch ``batch`` of epoch ``epoch`` (both 0-based)."""

    priority = 'LOWEST'  # after the iteration is logged

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class FailWritingCheckpoint(Hook):
    """Make the checkpoint saved at the end of epoch ``epoch`` (0-based) fail half-way.

    Files may not grow beyond half the size of the previous checkpoint from then on
    (``RLIMIT_FSIZE``; the logs stay far smaller), so the write stops in the middle of
    the file. With ``kill``, the kernel then kills the process (SIGXFSZ, whose default
    action Python ignores); without, the write fails with EFBIG, as on a full disk.
    """

    def __init__(self, epoch: int, kill: bool):
        self.epoch, self.kill = epoch, kill

    def before_save_checkpoint(self, runner, checkpoint):
        if runner.epoch != self.epoch:
            return
        limit = osp.getsize(osp.join(runner.work_dir, f'epoch_{self.epoch}.pth')) // 2
        if self.kill:
            resource.setrlimit(resource.RLIMIT_CORE, (0, resource.RLIM_INFINITY))
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


@HOOKS.register_module()
class PoisonWeightsBeforeIteration(Hook):
    """Set a backbone weight to NaN before iteration ``iteration`` (1-based)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            with torch.no_grad():
                next(runner.model.backbone.parameters()).fill_(float('nan'))


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_coco(root, num_images=dict(train=4, val=2), image_size=64)
    return root


@pytest.fixture(scope='module')
def options(shapes_root):
    """2 epochs of 2 iterations, a fixed seed, validation after each epoch."""
    options, _ = small_options(CONFIG, shapes_root)
    options.update({'train_cfg.max_epochs': 2, 'randomness': dict(seed=0)})
    return options


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(work_dir, options, *flags, config=CONFIG):
    """tools/train.py in this process, on one thread; returns the runner."""
    args = train_tool.parse_args([config, '--work-dir', str(work_dir), *flags])
    args.cfg_options = options
    runner = train_tool.build_runner(train_tool.build_config(args))
    with one_thread():
        runner.train()
    return runner


def train_in_child(tmp_path, options, hooks, **extra_options):
    """tools/train.py in a child process (one thread) whose config adds ``hooks``."""
    options = dict(options, **extra_options)
    config = _child_config(
        str(tmp_path / 'child.py'), CONFIG, options,
        custom_imports=dict(imports=['test_reliability'], allow_failed_imports=False),
        custom_hooks=hooks)
    env = child_env(TESTS, REPO, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                    CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1')
    return subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), config, '--work-dir',
         str(tmp_path / 'work')], env=env, capture_output=True, text=True, timeout=600)


def load(path):
    with checkpoint_globals():
        return torch.load(path, map_location='cpu')


def assert_same_training_state(checkpoint, reference):
    assert checkpoint['meta']['epoch'] == reference['meta']['epoch'] == 2
    assert checkpoint['meta']['iter'] == reference['meta']['iter'] == 4
    assert checkpoint['state_dict'].keys() == reference['state_dict'].keys()
    for key, value in reference['state_dict'].items():
        torch.testing.assert_close(checkpoint['state_dict'][key], value, rtol=0, atol=0,
                                   msg=key)
    torch.testing.assert_close(checkpoint['optimizer']['state'],
                               reference['optimizer']['state'], rtol=0, atol=0)


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read()


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, options):
    """The final checkpoint of a run that nothing interrupted."""
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    train(work_dir, options)
    return load(work_dir / 'epoch_2.pth')


def test_uninterrupted_runs_are_reproducible(uninterrupted, options, tmp_path):
    train(tmp_path, options)
    assert_same_training_state(load(tmp_path / 'epoch_2.pth'), uninterrupted)


def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_weights(uninterrupted, options,
                                                               tmp_path):
    killed = train_in_child(tmp_path, options, [dict(type='KillAfterIteration', epoch=1,
                                                     batch=0)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    work_dir = tmp_path / 'work'
    assert 'Epoch(train) [2][1/2]' in killed.stdout + killed.stderr
    assert last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')
    assert not osp.exists(work_dir / 'epoch_2.pth')
    shutil.copytree(work_dir, tmp_path / 'copy')

    runner = train(work_dir, options, '--resume')
    assert runner.iter == 4
    assert_same_training_state(load(work_dir / 'epoch_2.pth'), uninterrupted)

    # Without the random states (MMEngine's resume), flips and drop paths differ.
    train(tmp_path / 'copy', dict(options, **{'default_hooks.random_state': None}),
          '--resume', str(tmp_path / 'copy' / 'epoch_1.pth'))
    with pytest.raises(AssertionError):
        assert_same_training_state(load(tmp_path / 'copy' / 'epoch_2.pth'), uninterrupted)


def test_iteration_based_resume_reproduces_the_uninterrupted_weights(tmp_path):
    """MMSegmentation's runs are iteration-based: a resumed run fetches and drops the
    batches trained before, running their random crops, flips and photometric changes,
    and validation (here at the checkpoint's iteration) draws numbers too; resuming from
    iteration 2 of 4 must still end with the weights of the uninterrupted run."""
    from test_segmentation import SMALL_SCALES, small_config
    root = str(tmp_path / 'ade')
    make_shapes_ade(root, num_images=dict(training=4, validation=2), image_size=64)
    config = small_config(tmp_path, 'fpn_pola-pvt-tiny_8xb2-40k_ade20k-512x512.py', root,
                          iters=4)
    options = {key: eval(value) for key, value in
               (option.split('=', 1) for option in SMALL_SCALES)}
    options.update({'train_cfg.val_interval': 2, 'default_hooks.checkpoint.interval': 2,
                    'randomness': dict(seed=0)})
    train(tmp_path / 'whole', options, config=config)
    reference = load(tmp_path / 'whole' / 'iter_4.pth')['state_dict']

    def resumed_weights(name, **extra_options):
        train(tmp_path / name, dict(options, **extra_options), '--resume',
              str(tmp_path / 'whole' / 'iter_2.pth'), config=config)
        return load(tmp_path / name / 'iter_4.pth')['state_dict']

    weights = resumed_weights('resumed')
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)
    # without the random states (MMEngine's resume) the augmentations differ
    weights = resumed_weights('mmengine', **{'default_hooks.random_state': None})
    assert any(not torch.equal(weights[key], value) for key, value in reference.items())


def test_kill_while_saving_keeps_the_previous_checkpoint(uninterrupted, options, tmp_path):
    """With max_keep_ckpts=1 MMEngine's CheckpointHook deletes epoch_1.pth before writing
    epoch_2.pth, so that this kill would leave no checkpoint at all."""
    options = dict(options, **{'default_hooks.checkpoint.max_keep_ckpts': 1})
    killed = train_in_child(tmp_path, options,
                            [dict(type='FailWritingCheckpoint', epoch=1, kill=True)])
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-3000:]
    work_dir = tmp_path / 'work'
    assert 'Saving checkpoint at 2 epochs' in killed.stdout + killed.stderr
    assert last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')
    assert load(work_dir / 'epoch_1.pth')['meta']['epoch'] == 1
    assert not osp.exists(work_dir / 'epoch_2.pth')
    partial = work_dir / 'epoch_2.pth.tmp'
    assert 0 < osp.getsize(partial) == osp.getsize(work_dir / 'epoch_1.pth') // 2

    train(work_dir, options, '--resume')
    assert not osp.exists(partial)
    assert_same_training_state(load(work_dir / 'epoch_2.pth'), uninterrupted)
    assert last_checkpoint(work_dir) == str(work_dir / 'epoch_2.pth')
    assert not osp.exists(work_dir / 'epoch_1.pth')  # max_keep_ckpts, once 2 is saved


def test_full_disk_while_saving_names_the_checkpoint_and_keeps_the_previous_one(
        options, tmp_path):
    failed = train_in_child(tmp_path, options,
                            [dict(type='FailWritingCheckpoint', epoch=1, kill=False)])
    work_dir = tmp_path / 'work'
    assert failed.returncode == 1
    assert (f'OSError: [Errno 27] File too large: checkpoint {work_dir}/epoch_2.pth was not '
            'saved; the files saved before are unchanged') in failed.stderr
    assert not osp.exists(work_dir / 'epoch_2.pth')
    assert not osp.exists(work_dir / 'epoch_2.pth.tmp')
    assert last_checkpoint(work_dir) == str(work_dir / 'epoch_1.pth')
    assert load(work_dir / 'epoch_1.pth')['meta']['epoch'] == 1


def test_non_finite_loss_stops_training_naming_the_iteration(options, tmp_path):
    options = dict(options, custom_hooks=[dict(type='PoisonWeightsBeforeIteration',
                                               iteration=2)])
    with pytest.raises(FloatingPointError) as error:
        train(tmp_path, options)
    message = str(error.value)
    assert message.startswith('Non-finite loss at iteration 2 (epoch 1, batch 2): loss=nan')
    assert 'the last checkpoint is none' in message
    assert '.png' in message.split('Images of the batch:')[1]
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.pth')]


def test_pola_runner_default_hooks(options, tmp_path):
    args = train_tool.parse_args([CONFIG, '--work-dir', str(tmp_path)])
    args.cfg_options = options
    hooks = train_tool.build_runner(train_tool.build_config(args)).hooks
    assert [type(h) for h in hooks if isinstance(h, (AtomicCheckpointHook, FiniteLossHook,
                                                     RandomStateHook))] == [
        FiniteLossHook, AtomicCheckpointHook, RandomStateHook]  # by priority
    args.cfg_options = dict(options, **{'default_hooks.finite_loss': None,
                                        'default_hooks.random_state': None})
    names = [type(h).__name__ for h in
             train_tool.build_runner(train_tool.build_config(args)).hooks]
    assert 'FiniteLossHook' not in names and 'RandomStateHook' not in names
    assert 'AtomicCheckpointHook' in names


def test_soak_peak_memory_does_not_grow():
    """A short run of the soak benchmark (tools/analysis/soak.py, 200 iterations by
    default): the peak RSS of the last 5 iterations is within 10 % of iterations 6-10."""
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis', 'soak.py'), '--iters', '30',
         '--warmup', '5', '--window', '5', '--checkpoint-interval', '5', '--threads', '1'],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    peaks = {}
    for line in result.stdout.splitlines():
        for window in ('start', 'end'):
            if line.startswith('| peak') and f'({window})' in line:
                peaks[window] = float(line.split('|')[2])
    assert peaks['start'] > 100  # MiB: the figures are read
    assert peaks['end'] <= 1.1 * peaks['start']
    assert 'OK: peak RSS grew by at most 10 %' in result.stdout


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / 'file.pth')
    write_text_atomic(path, 'old')
    with pytest.raises(OSError, match='disk full'):
        with atomic_write(path) as temp:
            with open(temp, 'w') as f:
                f.write('half of the new')
            raise OSError('disk full')
    assert open(path).read() == 'old'
    assert os.listdir(tmp_path) == ['file.pth']
    write_text_atomic(path, 'new')
    assert open(path).read() == 'new' and os.listdir(tmp_path) == ['file.pth']


class RisingMetric(BaseMetric):
    """'acc' 1, 2, 3, ... at successive evaluations: every validation is a new best."""

    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        self.evaluations += 1
        return dict(acc=self.evaluations)


def test_previous_best_checkpoint_is_deleted_after_the_new_one_is_saved(tmp_path):
    """MMEngine deletes best_acc_epoch_1.pth before writing best_acc_epoch_2.pth, so that
    a run killed in between keeps no best checkpoint; AtomicCheckpointHook deletes it after."""
    from mmengine.registry import DATASETS, METRICS, MODELS, DefaultScope
    from mmengine.testing.runner_test_case import ToyDataset, ToyModel
    from mmengine.visualization import Visualizer

    from pola_mm.engine import PolaRunner
    MODELS.register_module(module=ToyModel, force=True)
    DATASETS.register_module(module=ToyDataset, force=True)
    METRICS.register_module(module=RisingMetric, force=True)
    loader = dict(dataset=dict(type='ToyDataset'), batch_size=4, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    runner = PolaRunner(
        model=dict(type='ToyModel'), work_dir=str(tmp_path), train_dataloader=loader,
        val_dataloader=loader, val_evaluator=dict(type='RisingMetric'),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=3, val_interval=1), val_cfg=dict(),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                           save_best='acc', rule='greater')),
        default_scope='mmengine')
    on_disk_while_saving = {}
    save_checkpoint = runner.save_checkpoint

    def recording_save_checkpoint(out_dir, filename, *args, **kwargs):
        on_disk_while_saving[filename] = sorted(f for f in os.listdir(out_dir)
                                                if f.startswith('best_'))
        return save_checkpoint(out_dir, filename, *args, **kwargs)

    runner.save_checkpoint = recording_save_checkpoint
    try:
        runner.train()
    finally:  # later runners' get_current_instance() must find their own, not these
        Visualizer._instance_dict.pop(runner.visualizer.instance_name, None)
        DefaultScope._instance_dict.pop(runner.default_scope.instance_name, None)
    assert any(isinstance(hook, AtomicCheckpointHook) for hook in runner.hooks)
    assert on_disk_while_saving['best_acc_epoch_1.pth'] == []
    assert on_disk_while_saving['best_acc_epoch_2.pth'] == ['best_acc_epoch_1.pth']
    assert on_disk_while_saving['best_acc_epoch_3.pth'] == ['best_acc_epoch_2.pth']
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith('best_')) == [
        'best_acc_epoch_3.pth']
    assert runner.message_hub.get_info('best_ckpt') == str(tmp_path / 'best_acc_epoch_3.pth')
