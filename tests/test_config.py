import pytest
import yaml

from utils.config import load_config, merge_config, parse_overrides
from utils.errors import UserError

DEFAULTS = {
    "data": {"name": "synthetic_shapes", "image_size": [120, 160], "params": {}},
    "train": {"lr": 1e-3, "batch_size": 64, "precision": "auto", "resume": None},
}


def test_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.01, "batch_size": 8}}))
    conf = load_config(
        path, ["train.batch_size=2", "data.image_size=[64,64]"], DEFAULTS
    )
    assert conf["train"] == {
        "lr": 0.01,
        "batch_size": 2,
        "precision": "auto",
        "resume": None,
    }
    assert conf["data"]["image_size"] == [64, 64]
    assert DEFAULTS["train"]["lr"] == 1e-3, "defaults must not be mutated"


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(
        UserError, match=r"unknown config key 'train\.batch_sise'.*train\.batch_size"
    ):
        merge_config(DEFAULTS, {"train": {"batch_sise": 3}})


def test_wrong_type_is_rejected_and_int_accepted_for_float():
    with pytest.raises(UserError, match=r"'train\.batch_size' expects int"):
        merge_config(DEFAULTS, {"train": {"batch_size": "big"}})
    assert merge_config(DEFAULTS, {"train": {"lr": 1}})["train"]["lr"] == 1.0
    with pytest.raises(UserError, match="expects bool|expects int"):
        merge_config({"a": 1}, {"a": True})


def test_open_mapping_accepts_any_key_and_none_default_accepts_any_value():
    conf = merge_config(
        DEFAULTS, {"data": {"params": {"anything": 3}}, "train": {"resume": "x"}}
    )
    assert conf["data"]["params"] == {"anything": 3} and conf["train"]["resume"] == "x"


def test_override_parsing_and_errors():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null", "e=true"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": None,
        "e": True,
    }
    with pytest.raises(UserError, match="key.sub=value"):
        parse_overrides(["novalue"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml", [], DEFAULTS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad, [], DEFAULTS)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(lst, [], DEFAULTS)


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("learning_rate", "lr"),
        ("iters", "max_steps"),
        ("iterations", "max_steps"),
        ("num_epochs", "epochs"),
        ("workers", "num_workers"),
        ("batch_sise", "batch_size"),
    ],
)
def test_unknown_key_suggests_synonyms_of_the_engine_keys(key, meant):
    from engine.trainer import TRAIN_DEFAULTS

    with pytest.raises(UserError) as err:
        merge_config({"train": TRAIN_DEFAULTS}, {"train": {key: 1}})
    assert str(err.value) == (
        f"unknown config key 'train.{key}'; did you mean 'train.{meant}'?"
    )


def test_a_synonym_is_only_suggested_where_its_key_exists():
    with pytest.raises(UserError) as err:
        merge_config({"data": {"name": "x"}}, {"data": {"learning_rate": 1}})
    assert "did you mean" not in str(err.value)
