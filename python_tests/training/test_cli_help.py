"""``ccr-fast train --help`` lists every configuration key with its default and a one-line meaning, generated from
the config dataclasses (the field comments in ccr_fast/config.py are the one place keys are documented)."""
import dataclasses
import json

import pytest

from ccr_fast.cli import main
from ccr_fast.config import Config, load_config


def _all_keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _all_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@pytest.fixture(scope="module")
def train_help():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    return out.getvalue().splitlines()


def test_train_help_lists_every_key_with_default_and_meaning(train_help):
    keys = list(_all_keys(Config()))
    assert len(keys) > 100
    index = {line.split(" = ")[0].strip(): i for i, line in enumerate(train_help) if line.startswith("  ")
             and " = " in line and not line.startswith("   ")}
    missing = [k for k, _ in keys if k not in index]
    assert not missing, f"keys missing from `ccr-fast train --help`: {missing}"
    for key, default in keys:
        line = train_help[index[key]]
        shown = line.split(" = ", 1)[1].split(" [built-in: ")[0]
        expected = default if isinstance(default, str) else json.dumps(default, ensure_ascii=False)
        assert shown == (expected or '""'), (key, shown, expected)
        meaning = train_help[index[key] + 1]
        assert meaning.startswith("      ") and len(meaning.strip()) >= 8, f"{key}: no one-line meaning"


def test_train_help_shows_builtin_run_values_and_shipped_configs(train_help):
    text = "\n".join(train_help)
    assert "  epochs = 10 [built-in: 6]" in text and "  model.visual_encoder = mlp [built-in: norm_linear]" in text
    assert "nrccr_multi30k_de" in text and "--config NAME" in text


def test_builtin_run_equals_shipped_default_config():
    from ccr_fast.training import DEFAULT_RUN

    assert load_config(None, **DEFAULT_RUN) == load_config("default")
