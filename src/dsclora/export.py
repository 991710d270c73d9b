"""Writing our models in forms other tools read.

``deploy_to_train_form`` builds a training-form SPAN whose Conv3XC branches collapse *exactly* to given deploy
kernels, so tools that only accept training-form keys (spandrel / chaiNNer detect SPAN by ``sk`` and
``conv.0/1/2``) load our deploy weights and compute our outputs. Construction per Conv3XC with kernel K, bias b:
``conv.0 = [I; 0]``, ``conv.1 = [[K, 0], [0, 0]]``, ``conv.2 = [I, 0]``, ``conv.2.bias = b``, everything else
zero. Every product in the collapse is a multiplication by 1 or 0, so the collapse reproduces K bit for bit.
"""

from __future__ import annotations

import torch

from dsclora.models.conv3xc import Conv3XC
from dsclora.models.span import SPAN
from dsclora.reparam import to_deploy


@torch.no_grad()
def _expand(deployed: Conv3XC) -> Conv3XC:
    weight, bias = deployed.eval_conv.weight, deployed.eval_conv.bias
    out_ch, in_ch = weight.shape[:2]
    train = Conv3XC(in_ch, out_ch, deployed.gain, deploy=False).to(weight)
    for p in train.parameters():
        p.zero_()
    first, middle, last = train.conv
    first.weight[:in_ch, :, 0, 0] = torch.eye(in_ch, dtype=weight.dtype)
    middle.weight[:out_ch, :in_ch] = weight
    last.weight[:, :out_ch, 0, 0] = torch.eye(out_ch, dtype=weight.dtype)
    last.bias.copy_(bias)
    return train


@torch.no_grad()
def deploy_to_train_form(model: SPAN) -> SPAN:
    """A training-form SPAN computing exactly what ``model`` (merged first if needed) computes."""
    deployed = to_deploy(model)
    train = SPAN(deployed.config, deploy=False).to(next(deployed.parameters()))
    for name, module in deployed.named_modules():
        if isinstance(module, Conv3XC):
            parent_name, _, child = name.rpartition(".")
            parent = train.get_submodule(parent_name) if parent_name else train
            setattr(parent, child, _expand(module))
    train.conv_cat.load_state_dict(deployed.conv_cat.state_dict())
    train.upsampler.load_state_dict(deployed.upsampler.state_dict())
    return train.train(model.training)


@torch.no_grad()
def derived_eval_conv_state(model: SPAN) -> dict[str, torch.Tensor]:
    """The ``*.eval_conv.*`` tensors BasicSR / spandrel files carry beside the training branches."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv3XC) and not module.deploy:
            weight, bias = module.fused_weight_and_bias()
            state[f"{name}.eval_conv.weight"] = weight.detach().cpu().contiguous()
            state[f"{name}.eval_conv.bias"] = bias.detach().cpu().contiguous()
    return state


# --------------------------------------------------------------------------------------------- files for other tools


def check_image(path: str | None = None) -> torch.Tensor:
    """A real photo (1, 3, H, W) in [0, 1] to compare exported models on: ``path``, else scikit-image's
    astronaut (a crop), else a smooth synthetic image (random noise is no test: it drives SPAN's x255
    activations far outside what images produce, where fp32 rounding is magnified)."""
    import numpy as np

    if path is not None:
        from dsclora.data.io import read_image

        rgb = read_image(path).rgb
    else:
        try:
            from skimage import data

            rgb = data.astronaut()[64:192, 160:288].astype(np.float32) / 255.0
        except ImportError:
            yy, xx = np.mgrid[0:96, 0:96] / 95.0
            rgb = np.stack([yy, xx, 0.5 + 0.4 * np.sin(6 * yy * xx)], axis=2).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def export_onnx(model: SPAN, path, probe: torch.Tensor, opset: int = 17, tolerance: float = 1e-4) -> float:
    """Write ONNX (dynamic batch / height / width) atomically after checking it in ONNX Runtime.

    Returns the max abs difference to torch on ``probe``; raises if it exceeds ``tolerance``.
    """
    import warnings

    from dsclora.errors import DscloraError
    from dsclora.utils import atomic_write

    try:
        import onnxruntime as ort
    except ImportError:
        raise DscloraError("ONNX export needs onnx and onnxruntime: pip install 'dsclora[onnx]'") from None
    model = to_deploy(model).eval().float()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        torch.onnx.export(
            model,
            (probe[:, :, :32, :32],),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes={"input": dynamic, "output": dynamic},
            dynamo=False,
        )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": probe.numpy()})[0]
        with torch.no_grad():
            want = model(probe).numpy()
        diff = float(abs(got - want).max())
        if diff > tolerance:
            raise DscloraError(f"ONNX Runtime output differs from torch by {diff:.2e} (> {tolerance:.0e}); not written")
    return diff


def export_spandrel(model: SPAN, path) -> float:
    """A training-form SPAN file spandrel / chaiNNer detect, whose collapse is exactly our deploy weights.

    Returns the max abs difference between the file's re-collapsed weights and ours (0.0: bit-exact).
    """
    from dsclora.checkpoints import load_model, save_model

    deployed = to_deploy(model)
    save_model(deployed, path, form="train")
    reloaded, _ = load_model(path)
    collapsed = to_deploy(reloaded).state_dict()
    return max(float((collapsed[k] - v).abs().max()) for k, v in deployed.state_dict().items())
