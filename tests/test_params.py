import pytest
import yaml

from tests.conftest import ROOT, merge, repo_params_dict
from transferlab.errors import UserError
from transferlab.params import load_params, parse_params


def test_repository_params_are_valid_and_every_key_is_read_as_written():
    """The committed params.yaml parses, and no value is silently replaced by a default."""
    params = load_params(ROOT / "params.yaml")
    written = repo_params_dict()

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    parsed = dict(leaves(params.model_dump(mode="json")))
    assert set(dict(leaves(written))) <= set(parsed)
    for key, value in leaves(written):
        if not isinstance(value, str):  # text values may be normalised ('auto', 'DEFAULT')
            assert parsed[key] == value, f"{key}: params.yaml says {value!r}, parsed {parsed[key]!r}"


@pytest.mark.parametrize("override, expected", [
    ({"prepare": {"shot": 5}}, "unknown key 'prepare.shot': did you mean 'prepare.shots'?"),
    ({"trasfer": {}}, "unknown key 'trasfer': did you mean 'transfer'?"),
    ({"transfer": {"finetune": {"l2sp": 0.1}}}, "did you mean 'transfer.finetune.l2sp_weight'?"),
    ({"prepare": {"shots": -1}}, "prepare.shots=-1 is invalid"),
    ({"prepare": {"shots": 2.5}}, "prepare.shots=2.5 is invalid"),
    ({"prepare": {"crop": "box"}}, "prepare.crop='box' is invalid: Input should be 'auto', 'bbox' or 'none'"),
    ({"data": {"target": "usps"}}, "data.target='usps' is invalid"),
    ({"transfer": {"structure": {"freeze_copied": "yes"}}}, "transfer.structure.freeze_copied="),
    ({"transfer": {"finetune": {"frozen_blocks": 4}}},
     "transfer.finetune.frozen_blocks=4 but the encoder has 3 blocks"),
    ({"model": {"widths": []}}, "model.widths=[] is invalid"),
])
def test_bad_params_name_the_key(override, expected):
    with pytest.raises(UserError) as err:
        parse_params(merge(repo_params_dict(), override))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_value_in_another_file_names_that_file(tmp_path):
    path = tmp_path / "my params.yml"
    path.write_text(yaml.safe_dump(merge(repo_params_dict(), {"seed": -1})))
    with pytest.raises(UserError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: seed=-1 is invalid"), err.value


def test_missing_key_is_named():
    raw = repo_params_dict()
    del raw["transfer"]["features"]["C"]
    with pytest.raises(UserError, match="key 'transfer.features.C' is missing"):
        parse_params(raw)


def test_int_is_accepted_where_a_float_is_expected():
    # `dvc exp run -S transfer.features.C=1` writes an int
    assert parse_params(merge(repo_params_dict(), {"transfer": {"features": {"C": 1}}})
                        ).transfer.features.C == 1.0


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  shots: [1\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_params(path)


def test_a_misspelt_key_is_reported_as_misspelt_not_as_missing():
    raw = repo_params_dict()
    raw["prepare"]["shot"] = raw["prepare"].pop("shots")
    with pytest.raises(UserError, match="unknown key 'prepare.shot': did you mean 'prepare.shots'"):
        parse_params(raw)


def test_image_too_small_for_the_encoder_is_refused():
    with pytest.raises(UserError, match="prepare.image_size=8 is too small for model.arch=small_cnn with these blocks: use >= 16"):
        parse_params(merge(repo_params_dict(), {"prepare": {"image_size": 8},
                                                "model": {"widths": [4, 4, 4, 4, 4]}}))


def test_folder_images_are_never_upsampled_by_prepare():
    photos = {"data": {"target": {"name": "folder", "root": "/photos"}, "decode_size": 128},
              "prepare": {"image_size": 224, "channels": 3}, "model": {"arch": "resnet18"}}
    with pytest.raises(UserError, match=r"prepare.image_size=224 is larger than "
                       r"data.decode_size=128, .* of data.target .* set data.decode_size >= 224"):
        parse_params(merge(repo_params_dict(), photos))
    parse_params(merge(repo_params_dict(), merge(photos, {"data": {"decode_size": 256}})))
    # no folder: decode_size is not read, any image_size up to 512 stands
    parse_params(merge(repo_params_dict(), {"data": {"decode_size": 8}}))


@pytest.mark.parametrize("data, expected", [
    ({"target": {"name": "folder"}}, "data.target.root must be set exactly when data.target.name is folder"),
    ({"source": {"root": "/images"}}, "data.source.root must be set exactly when"),
    ({"target": {"classes": [3]}}, "data.target.classes=[3]: use 'all' or at least two distinct"),
    ({"source": {"name": "uci_digits"}}, "data.source and data.target are the same dataset"),
    ({"source": {"name": "cifar10", "classes": [0, 1, 2]},
      "target": {"name": "cifar10", "classes": [2, 3]}}, "same dataset: give both explicit, disjoint"),
])
def test_impossible_scenarios_are_refused(data, expected):
    with pytest.raises(UserError) as err:
        parse_params(merge(repo_params_dict(), {"data": data}))
    assert expected in str(err.value)


def test_task_transfer_on_one_dataset_with_disjoint_classes_is_accepted():
    params = parse_params(merge(repo_params_dict(), {
        "data": {"source": {"name": "cifar10", "classes": [0, 1, 2, 3, 4]},
                 "target": {"name": "cifar10", "classes": [5, 6, 7, 8, 9]}},
        "prepare": {"channels": 3, "image_size": 32}}))
    assert params.data.target.classes == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("model, prepare, expected", [
    ({"weights": "imagenet"}, {}, "model.weights='imagenet' needs a model.arch with published weights"),
    ({"arch": "vit_b_16"}, {"image_size": 64}, "model.arch=vit_b_16 takes 224 x 224 images"),
    ({"arch": "mobilenet_v3_small", "weights": "IMAGENET1K_V1"}, {"image_size": 32, "channels": 1},
     "model.weights=IMAGENET1K_V1 expects colour input"),
    ({"arch": "resnet18", "weights": "imagenet"}, {"image_size": 32, "channels": 1},
     "model.weights=imagenet expects colour input: set prepare.channels=3"),
    ({"arch": "resnet18"}, {"image_size": 16}, "prepare.image_size=16 is too small for model.arch=resnet18"),
])
def test_backbone_checks(model, prepare, expected):
    with pytest.raises(UserError) as err:
        parse_params(merge(repo_params_dict(), {"model": model, "prepare": prepare}))
    assert expected in str(err.value)
