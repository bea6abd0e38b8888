"""``pola_mm.OfficialClassifierCheckpointHook``: ``load_from`` takes a released PolaFormer
or PolaFormer++ ImageNet file as it is."""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper

from ..checkpoint import fit_state_dict, is_openmmlab_classifier, released_classifier_weights
from ..registry import HOOKS


@HOOKS.register_module()
class OfficialClassifierCheckpointHook(Hook):
    """Let ``load_from`` take a released PolaFormer or PolaFormer++ ImageNet file as it is.

    MMEngine reads ``load_from`` into a dict and calls ``after_load_checkpoint`` before
    loading it into the model. A released file (official keys under ``'model'``, under
    ``'state_dict'``, or a bare official state dict) is replaced here by
    ``{'state_dict': ...}`` in the classifier's layout (``backbone.*``, PolaFormer++'s
    ``neck.*``, ``head.fc.*``), after checking that it is of the model's architecture and
    that every weight of the classifier is there with its shape; the runner then loads
    it. An OpenMMLab classifier checkpoint (``backbone.*`` keys, under ``'state_dict'`` or not,
    e.g. from fine-tuning or resuming) passes through.

    Args:
        weights (str, optional): The entry of a released training file to take, e.g.
            ``'state_dict_ema'`` for its EMA weights. Defaults to ``'model'`` (else
            ``'state_dict'``, else the whole dict); EMA weights are never taken unasked.
    """

    priority = 'VERY_HIGH'

    def __init__(self, weights: Optional[str] = None):
        self.weights = weights

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if is_openmmlab_classifier(checkpoint):
            return
        model = runner.model  # under --tta, test-time augmentation wraps it too
        if is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        name = str(runner.cfg.get('load_from'))
        converted = released_classifier_weights(checkpoint, model, name, self.weights)
        try:
            converted, _ = fit_state_dict(model, converted)
        except RuntimeError as error:
            raise RuntimeError(f'{name}: {error}') from None
        checkpoint.clear()
        checkpoint['state_dict'] = converted
