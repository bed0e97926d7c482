"""benchmarks/fusion.py: K trials fused into one model compute exactly what each trial computes,
so the fused throughput measured in benchmarks/gpu.py is the throughput of K real trials."""

import torch
import torch.nn.functional as F

from benchmarks.fusion import fuse, fuse_masks, fused_cross_entropy
from lth_core.config import ModelConfig
from lth_core.masks import Mask
from lth_core.models import build_model
from lth_core.pruning import prune_to_sparsity


def test_fused_members_give_each_trial_its_own_outputs_and_gradients():
    torch.manual_seed(0)
    members = [build_model(ModelConfig(width=0.0625), in_channels=1, num_classes=10, image_size=8) for _ in range(3)]
    fused = fuse(members)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    fused_cross_entropy(3)(fused(x), x, y).backward()
    for k, member in enumerate(members):
        F.cross_entropy(member(x), y).backward()
        assert torch.allclose(fused(x).view(6, 3, 10)[:, k], member(x), atol=1e-5)
        out_channels = member.stem.conv.weight.shape[0]
        own = slice(k * out_channels, (k + 1) * out_channels)
        assert torch.allclose(fused.body.stem.conv.weight.grad[own], member.stem.conv.weight.grad, atol=1e-5)
        assert torch.allclose(fused.body.fc.weight.grad[k], member.fc.weight.grad, atol=1e-5)


def test_fused_masks_cover_the_fused_weights_member_by_member():
    torch.manual_seed(0)
    members = [build_model(ModelConfig(width=0.0625), in_channels=1, num_classes=10, image_size=8) for _ in range(2)]
    masks = [prune_to_sparsity({n: p.detach() for n, p in m.named_parameters()}, Mask.ones_like(m), 0.5)
             for m in members]
    fused, mask = fuse(members), fuse_masks(masks)
    mask.check_fits(fused)
    n = members[0].stem.conv.weight.shape[0]
    assert torch.equal(mask["body.stem.conv.weight"][n:], masks[1]["stem.conv.weight"])
