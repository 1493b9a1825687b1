"""Under torchrun (2 processes, gloo): rank 0 names the run folder, only rank 0 writes and prints, and a run
killed after a periodic checkpoint resumes (resume="auto") to the same losses as an uninterrupted run."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from ccr_fast.methods._tiny import TINY, tiny_items
from ccr_fast.training import train

CFG = {**TINY, "method": "ccrk", "ccrk.w_itm": 0.0, "ccrk.w_mlm": 0.0, "epochs": 2, "max_steps": 4,
       "optim.schedule": "constant", "eval.every_epoch": False, "lr": 1e-2, "optim.grad_clip": 0.0,
       "save_every_steps": 1, "progress": True}

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    from ccr_fast.methods._tiny import tiny_items
    from ccr_fast.training import loop, train

    cfg, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    if kill_at:
        orig = loop.Run.save

        def save(self, name):
            orig(self, name)
            if name == "last" and self.state["step"] >= kill_at:
                raise SystemExit(3)  # every rank stops here, like a killed job

        loop.Run.save = save
    res = train(cfg, datasets={"train": tiny_items(16)})
    # one file per rank: the ranks' stdout lines share one pipe and can interleave
    with open(os.path.join(sys.argv[3], "result%s.json" % os.environ["RANK"]), "w") as f:
        json.dump({"run_dir": res.run_dir, "best": res.best_checkpoint}, f)
''')


def _torchrun(script, cfg, kill_at):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           json.dumps(cfg), str(kill_at), str(Path(script).parent)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _losses(run_dir):
    return [json.loads(line)["total"] for line in open(Path(run_dir) / "metrics.jsonl") if '"total"' in line]


def test_torchrun_kill_and_resume(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "runs"
    cfg = dict(CFG, batch_size=4, output_dir=str(out))
    killed = _torchrun(script, cfg, kill_at=2)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert len(list(out.iterdir())) == 1  # one run folder, named by rank 0 for both ranks
    resumed = _torchrun(script, dict(cfg, resume="auto"), kill_at=0)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    assert len(results) == 2 and results[0]["run_dir"] == results[1]["run_dir"]  # both ranks: the same folder
    assert Path(results[0]["run_dir"]).is_dir() and len(list(out.iterdir())) == 1
    assert resumed.stdout.count("resume=auto: resuming") == 1  # said once: only rank 0 prints
    assert len(_losses(results[0]["run_dir"])) == 4  # one record per step: only rank 0 writes
    single = train(dict(CFG, batch_size=8, progress=False, output_dir=str(tmp_path / "one")),
                   datasets={"train": tiny_items(16)})
    np.testing.assert_allclose(_losses(results[0]["run_dir"]), _losses(single.run_dir), rtol=1e-5)
