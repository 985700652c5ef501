"""loopcheck's model of timm's loss scalers (``timm.utils.NativeScaler``, ``ApexScaler``):
called with the loss and the optimizer, they backpropagate the scaled loss and, when
``need_update`` is set, unscale, clip (when ``clip_grad`` is given), step and update the
scale. They never clear gradients: the caller does."""

import torch
from timm.utils import dispatch_clip_grad


class NativeScaler:
    def __init__(self, device="cuda"):
        self._scaler = torch.amp.GradScaler(device)

    def __call__(
        self,
        loss,
        optimizer,
        clip_grad=None,
        clip_mode="norm",
        parameters=None,
        create_graph=False,
        need_update=True,
    ):
        self._scaler.scale(loss).backward(create_graph=create_graph)
        if need_update:
            if clip_grad is not None:
                self._scaler.unscale_(optimizer)
                dispatch_clip_grad(parameters, clip_grad, mode=clip_mode)
            self._scaler.step(optimizer)
            self._scaler.update()


class ApexScaler:
    def __call__(
        self,
        loss,
        optimizer,
        clip_grad=None,
        clip_mode="norm",
        parameters=None,
        create_graph=False,
        need_update=True,
    ):
        loss.backward(create_graph=create_graph)
        if need_update:
            if clip_grad is not None:
                dispatch_clip_grad(parameters, clip_grad, mode=clip_mode)
            optimizer.step()
