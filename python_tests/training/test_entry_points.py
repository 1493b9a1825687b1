"""ccr_fast.train / ccr_fast.evaluate as functions: twice in one process, always a checkpoint, resume="auto",
config errors as ValueError naming the key."""
import importlib
import json
from pathlib import Path

import pytest

import ccr_fast
from ccr_fast.config import ConfigError, load_config
from ccr_fast.methods._tiny import TINY

SYN = {**TINY, "model.visual_dim": None, "data": {"name": "synthetic", "n_items": 40}, "languages": ["en", "de"],
       "batch_size": 4, "epochs": 3}


def test_train_and_evaluate_twice_in_one_process(tmp_path):
    results = []
    for i, method in enumerate(["baseline", "ccrk"]):
        res = ccr_fast.train(dict(SYN, method=method, output_dir=str(tmp_path / str(i))), max_steps=2)
        assert callable(ccr_fast.train) and callable(ccr_fast.evaluate)
        importlib.import_module("ccr_fast.training")  # importing submodules must not rebind the functions
        importlib.import_module("ccr_fast.eval")
        assert res.best_checkpoint is not None and Path(res.best_checkpoint, "model.safetensors").is_file()
        again = ccr_fast.evaluate(res.best_checkpoint)
        assert again["sumr"] == pytest.approx(res.metrics["sumr"])
        results.append(res)
    assert callable(ccr_fast.train) and callable(ccr_fast.evaluate)
    assert results[0].run_dir != results[1].run_dir


def test_short_run_validates_and_saves_best(tmp_path):
    res = ccr_fast.train(dict(SYN, method="nrccr", output_dir=str(tmp_path)), max_steps=1)
    assert Path(res.best_checkpoint).is_dir() and len(res.history) == 1  # validated at the end
    assert Path(res.run_dir, "finished.json").is_file()


def _kill_after(monkeypatch, steps):
    """Make the loop raise after ``steps`` optimiser steps (a killed run), after the periodic checkpoint."""
    from ccr_fast.training import loop

    orig = loop.Run.save

    def save(self, name):
        orig(self, name)
        if name == "last" and self.state["step"] >= steps:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Run, "save", save)


def test_resume_auto_picks_newest_unfinished_run_of_the_method(tmp_path, monkeypatch, caplog):
    cfg = dict(SYN, method="baseline", output_dir=str(tmp_path), save_every_steps=2, progress=False,
               **{"optim.schedule": "constant", "eval.every_epoch": False})
    full = ccr_fast.train(dict(cfg, output_dir=str(tmp_path / "ref")), max_steps=5)
    ccr_fast.train(dict(cfg, method="nrccr"), max_steps=1)  # another method's finished run: never picked
    with monkeypatch.context() as m:
        _kill_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            ccr_fast.train(cfg, max_steps=5)
    killed = [p for p in tmp_path.iterdir() if p.name.startswith("baseline-") and not (p / "finished.json").exists()]
    assert len(killed) == 1
    with caplog.at_level("INFO", logger="ccr_fast.training"):
        res = ccr_fast.train(cfg, max_steps=5, resume="auto")
    assert Path(res.run_dir) == killed[0]
    assert any("resuming the newest unfinished baseline run" in r.message for r in caplog.records)
    # mid-epoch resume is exact: the same losses as the uninterrupted run
    losses = lambda d: [json.loads(l)["total"] for l in open(Path(d) / "metrics.jsonl") if '"total"' in l]  # noqa
    assert losses(res.run_dir) == pytest.approx(losses(full.run_dir), rel=1e-6, abs=1e-7)
    with caplog.at_level("INFO", logger="ccr_fast.training"):
        fresh = ccr_fast.train(cfg, max_steps=1, resume="auto")  # nothing unfinished left: a new run
    assert fresh.run_dir != res.run_dir
    assert any("starting a new run" in r.message for r in caplog.records)


@pytest.mark.parametrize("key,value", [("optim.lr", "abc"), ("epochs", "many"), ("model.dropout", [1]),
                                       ("save_every_steps", -1), ("files.layout", "zip")])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, **{key: value})
    assert issubclass(ConfigError, ValueError)


def test_data_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="config file .*nope.yaml"):
        ccr_fast.train(str(tmp_path / "nope.yaml"))
    (tmp_path / "TextData").mkdir()
    with pytest.raises(ValueError, match=r"train_enc\.caption\.txt"):
        ccr_fast.train(dict(SYN, method="nrccr", data=str(tmp_path)), max_steps=1)
