"""LoRA through peft (issue 26): what trains, what is stored, and the refusals."""

import pytest
import torch

from tests.test_modern_methods import changed
from tests.test_strategies import WIDTHS, cfg, inputs, source_model, tensors  # noqa: F401 (fixtures)
from transferlab import strategies
from transferlab.errors import UserError
from transferlab.params import parse_params
from transferlab.strategies.lora import auto_targets
from transferlab.train import to_float
from tests.conftest import tiny_params_dict


def test_lora_moves_each_conv_by_a_low_rank_update_and_nothing_else(inputs, source_model):
    rank = 2
    outcome = strategies.run("lora", inputs, cfg("lora", steps=10, lr=0.05, rank=rank))
    model = outcome.model
    source = {f"encoder.{k}": v for k, v in tensors(source_model.encoder).items()}
    after = tensors(model)
    assert set(source) <= set(after) and not any("lora" in k or "base_layer" in k for k in after)
    assert set(after) - set(source) == {"head.weight", "head.bias"}
    moved = changed(source, after)
    convs = {f"encoder.{n}.weight" for n, m in model.encoder.named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert moved == convs, f"moved {sorted(moved)}: only the adapted convolutions may"
    for key in convs:
        delta = (after[key] - source[key]).flatten(1)
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) <= rank, key


def test_lora_budget_counts_the_adapters_and_the_head(inputs, source_model):
    rank = 3
    outcome = strategies.run("lora", inputs, cfg("lora", steps=2, rank=rank))
    # peft's conv adapter: A = conv(in -> r, the layer's kernel), B = conv(r -> out, 1x1)
    adapters = sum(rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
                   for m in source_model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    head = sum(p.numel() for p in outcome.model.head.parameters())
    info = outcome.info
    assert info["adapter_params"] == adapters
    assert info["trainable_params"] == adapters + head
    assert info["total_params"] == sum(p.numel() for p in outcome.model.parameters())


def test_lora_starts_from_the_source_encoder(inputs, source_model):
    """B starts at zero: before any step the merged encoder is the source's, bit for bit."""
    outcome = strategies.run("lora", inputs, cfg("lora", steps=1, lr=1e-30))
    source = tensors(source_model.encoder)
    after = tensors(outcome.model.encoder)
    assert all(torch.equal(source[k], after[k]) for k in source)


def test_lora_refuses_a_pattern_that_matches_no_layer(inputs):
    with pytest.raises(UserError, match="matches no conv or linear layer.*auto"):
        strategies.run("lora", inputs, cfg("lora", steps=1, target_modules="nothing_here"))


def test_lora_pattern_picks_the_layers_it_names(inputs, source_model):
    outcome = strategies.run("lora", inputs, cfg("lora", steps=10, lr=0.05,
                                                 target_modules=r".*block3.*"))
    source = {f"encoder.{k}": v for k, v in tensors(source_model.encoder).items()}
    moved = changed(source, tensors(outcome.model))
    assert moved and all("block3" in k for k in moved), moved


@pytest.mark.parametrize("bad, message", [
    ({"target_modules": "(unclosed"}, "not a regular expression"),
    ({"rank": 0}, "greater than or equal to 1"),
    ({"dropout": 1.0}, "less than 1"),
])
def test_lora_params_refusals(bad, message):
    raw = tiny_params_dict(model={"widths": WIDTHS}, transfer={"lora": bad})
    with pytest.raises(Exception, match=message):
        parse_params(raw)


def test_auto_targets_skip_the_projections_attention_reads_itself():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, 4)
            self.attn = nn.MultiheadAttention(8, 2)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    assert auto_targets(Tiny()) == ["patch", "mlp.0", "mlp.2"]


def test_a_lora_model_reloaded_from_its_file_gives_the_same_logits(inputs, tmp_path):
    """The stored model is the merged one: a plain file of this pipeline, no peft to read it."""
    from transferlab.io import save_state_dict
    from transferlab.models import load_classifier, model_metadata

    outcome = strategies.run("lora", inputs, cfg("lora", steps=10, lr=0.05))
    path = tmp_path / "lora model.safetensors"
    save_state_dict(path, outcome.model.state_dict(),
                    model_metadata(inputs.architecture, ["a", "b", "c", "d"]))
    reloaded = load_classifier(path)[0].eval()
    x = to_float(inputs.target["x_val"])
    outcome.model.eval()
    assert torch.allclose(reloaded(x), outcome.model(x), rtol=1e-5, atol=1e-6)


