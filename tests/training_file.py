"""Released training files as the authors' code writes them, made without their code.

The authors' ``torch.save`` of ``{'model': ..., 'optimizer': ..., 'config': CfgNode, ...}``
pickles a yacs ``CfgNode``. :func:`save_training_file` writes such a file in a child
process in which a stand-in class is importable as ``yacs.config.CfgNode``; the test
process (without yacs) then reads it as users would.
"""
import os
import subprocess
import sys
import textwrap

import torch

# A stand-in for the authors' yacs CfgNode, pickled under yacs' real module path.
YACS_STAND_IN = '''
import sys, types
config = types.ModuleType('yacs.config')
class CfgNode(dict):
    IMMUTABLE = '__immutable__'
    def __init__(self, init_dict=None):
        super().__init__(init_dict or {})
        self.__dict__[CfgNode.IMMUTABLE] = False
CfgNode.__module__ = 'yacs.config'
config.CfgNode = CfgNode
sys.modules['yacs'] = types.ModuleType('yacs')
sys.modules['yacs.config'] = config
'''


def save_training_file(path, checkpoint: dict, model_type: str, with_yacs: bool = True):
    """Save ``checkpoint`` (tensors and plain containers) plus an optimizer state and, with
    ``with_yacs``, a pickled ``CfgNode`` config whose ``MODEL.TYPE`` is ``model_type``."""
    checkpoint = dict(checkpoint)
    checkpoint['optimizer'] = {'state': {0: {'exp_avg': torch.zeros(3)}},
                               'param_groups': [{'lr': 5e-4, 'params': [0]}]}
    script = 'import torch\n' + (YACS_STAND_IN if with_yacs else '') + textwrap.dedent(f'''
        checkpoint = torch.load({str(path)!r} + '.tmp', weights_only=True)
        if {with_yacs!r}:
            checkpoint['config'] = CfgNode({{'MODEL': CfgNode({{'TYPE': {model_type!r}}})}})
        torch.save(checkpoint, {str(path)!r})
    ''')
    torch.save(checkpoint, f'{path}.tmp')
    subprocess.run([sys.executable, '-c', script], check=True)
    os.remove(f'{path}.tmp')
