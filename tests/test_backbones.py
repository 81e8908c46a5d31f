"""The backbone registry: every registered architecture builds with the named blocks, sizes and
output the registry states, and the registry stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from transferlab import backbones
from transferlab.models import Classifier, build_encoder

WIDTHS = (4, 8)


@pytest.mark.parametrize("name", backbones.NAMES)
def test_every_backbone_builds_as_the_registry_says(name):
    backbone = backbones.get(name)
    widths = WIDTHS if backbone.uses_widths() else ()
    size = backbone.fixed_size or backbone.smallest_input(widths, False)
    encoder = build_encoder(name, 1, widths, image_size=size).eval()
    assert len(encoder.block_names) == backbone.block_count(widths)
    with torch.no_grad():
        features = encoder(torch.rand(2, 1, size, size))
        logits = Classifier(encoder, 3).eval()(torch.rand(2, 1, size, size))
    assert features.shape == (2, encoder.out_features) and torch.isfinite(features).all()
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", [n for n, b in backbones.BACKBONES.items() if b.takes_small_stem()])
def test_a_small_input_stem_takes_its_smaller_minimum(name):
    backbone = backbones.get(name)
    size = backbone.smallest_input((), True)
    assert size < backbone.smallest_input((), False)
    encoder = build_encoder(name, 3, (), small_input_stem=True).eval()
    with torch.no_grad():
        assert encoder(torch.rand(1, 3, size, size)).shape == (1, encoder.out_features)


def test_an_unknown_architecture_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown architecture 'vgg16': choose one of .*small_cnn"):
        build_encoder("vgg16", 1)


def test_the_registry_imports_no_torch():
    code = ("import sys; from transferlab import backbones; backbones.list_backbones(); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("name", backbones.NAMES)
def test_model_norm_auto_builds_a_norm_the_backbone_has_on_either_backdrop(name):
    """auto: norms[0] on a blank backdrop, `textured_norm` (one of its norms) on a textured one;
    an explicit model.norm wins on both."""
    from transferlab.models import architecture_from
    from transferlab.params import Model

    backbone = backbones.get(name)
    assert backbone.textured_norm is None or backbone.textured_norm in backbone.norms
    auto = Model(arch=name, widths=[4, 8], small_input_stem=False, norm="auto", head="auto",
                 weights="none")
    size = backbone.fixed_size or 224
    assert architecture_from(auto, 3, size).norm == backbone.norms[0]
    assert architecture_from(auto, 3, size, "textured").norm == (backbone.textured_norm
                                                                 or backbone.norms[0])
    explicit = auto.model_copy(update={"norm": backbone.norms[-1]})
    assert architecture_from(explicit, 3, size, "textured").norm == backbone.norms[-1]


def test_small_cnn_on_a_textured_backdrop_is_built_with_group_norm():
    from transferlab.models import architecture_from
    from transferlab.params import Model

    auto = Model(arch="small_cnn", widths=[4, 8], small_input_stem=False, norm="auto",
                 head="auto", weights="none")
    encoder = architecture_from(auto, 3, 16, "textured").build()
    kinds = {type(m).__name__ for m in encoder.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    assert "BatchNorm2d" in {type(m).__name__ for m in architecture_from(auto, 3, 16).build().modules()}


@pytest.mark.parametrize("name", backbones.NAMES)
def test_model_input_auto_takes_an_input_the_backbone_has_on_either_backdrop(name):
    """auto: inputs[0] on a blank backdrop, `textured_input` on a textured one; a backbone that
    normalises its own input (inputs empty) takes none, and an explicit model.input for it is
    the params check's one line."""
    from tests.conftest import merge, repo_params_dict
    from transferlab.errors import UserError
    from transferlab.models import architecture_from
    from transferlab.params import Model, parse_params

    backbone = backbones.get(name)
    assert backbone.textured_input is None or backbone.textured_input in backbone.inputs
    auto = Model(arch=name, widths=[4, 8], small_input_stem=False, norm="auto", head="auto",
                 weights="none")
    size = backbone.fixed_size or 224
    if not backbone.inputs:
        assert architecture_from(auto, 3, size, "textured").input is None
        with pytest.raises(UserError, match=f"model.input=centred: model.arch={name} normalises "
                                            "its own input"):
            parse_params(merge(repo_params_dict(), {"model": {"arch": name, "input": "centred"},
                                                    "prepare": {"image_size": size}}))
        return
    assert architecture_from(auto, 3, size).input == backbone.inputs[0]
    assert architecture_from(auto, 3, size, "textured").input == (backbone.textured_input
                                                                  or backbone.inputs[0])
    explicit = auto.model_copy(update={"input": backbone.inputs[0]})
    assert architecture_from(explicit, 3, size, "textured").input == backbone.inputs[0]


def test_a_centred_small_cnn_is_the_unit_one_fed_2x_minus_1():
    from transferlab.models import SmallCNN

    torch.manual_seed(0)
    unit = SmallCNN(3, (4, 8), "group", "flatten").eval()
    centred = SmallCNN(3, (4, 8), "group", "flatten", centred=True).eval()
    centred.load_state_dict(unit.state_dict())  # no tensor of its own: old files load as they were
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(centred(x), unit(x * 2 - 1))
        assert not torch.allclose(centred(x), unit(x))


def test_a_model_file_records_a_centred_input_and_reads_an_old_one_as_unit():
    from transferlab.models import Architecture, architecture_from_metadata, model_metadata

    unit = model_metadata(Architecture("small_cnn", 1, (4, 8)), ["a", "b"])
    assert "input" not in unit  # the bytes every earlier model file has
    assert architecture_from_metadata(unit)[0].input == "unit"
    centred = model_metadata(Architecture("small_cnn", 1, (4, 8), input="centred"), ["a", "b"])
    assert centred["input"] == "centred"
    assert architecture_from_metadata(centred)[0].build().centred
    with pytest.raises(ValueError, match="describes no model this pipeline builds .*input='scaled'"):
        architecture_from_metadata({**unit, "input": "scaled"})
    resnet = model_metadata(Architecture("resnet18", 3), ["a", "b"])
    with pytest.raises(ValueError, match="describes no model this pipeline builds"):
        architecture_from_metadata({**resnet, "input": "centred"})
