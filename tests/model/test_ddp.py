"""Training under torchrun with DistributedDataParallel on CPU (gloo): 2 processes.

A tiny learnable stamp set (positives carry a ring, controls are noise) whose training split has
an odd number of row groups, so the two ranks get different numbers of batches every epoch (the
uneven-input path of ``DistributedDataParallel.join``). A driver script (written to tmp_path)
runs ``darkhaloscope.model.train.train`` under ``torchrun --standalone --nproc_per_node 2`` and records,
per rank, the sample ids each epoch trained on, the final model and optimizer states.

Checked: exit status 0; best.pt / last.pt written (by rank 0); every kept training sample seen
exactly once per epoch over both ranks, and history's ``train_samples`` is that global count;
both ranks end with identical weights (equal to last.pt) and identical optimizer states.
"""

from __future__ import annotations

import copy
import json
import textwrap

import numpy as np
import pytest
import torch

import _stamps as S
import _tinyrepo as T
from darkhaloscope.model.checkpoint import load_checkpoint
from darkhaloscope.params import load_params, validate

pytestmark = pytest.mark.slow

ROW_GROUP = 16
N_TRAIN, N_VAL = 144, 64  # 9 training row groups: dealt 5 / 4 to the two ranks
BAD_ROWS = (3, 50, 51, 140)  # cutout_ok = 0: dropped by the index, never trained on
EPOCHS = 2

DRIVER = textwrap.dedent('''
    """torchrun driver: train(), then dump what this rank saw and ended with."""
    import json, os, sys
    import numpy as np
    import torch
    import yaml
    import darkhaloscope.model.train as T

    params_path, root, out = sys.argv[1:4]
    with open(params_path) as f:
        params = yaml.safe_load(f)

    seen, models, optims = [], [], []
    orig_epoch, orig_build = T._train_epoch, T.build_model
    orig_adamw = torch.optim.AdamW

    def recording_epoch(model, batches, *args):
        ids = []
        def it():
            for b in batches:
                ids.append(b[3].numpy().copy())
                yield b
        res = orig_epoch(model, it(), *args)
        seen.append({"ids": np.concatenate(ids).tolist() if ids else [], "batches": len(ids)})
        return res

    def recording_build(*a, **k):
        m = orig_build(*a, **k)
        models.append(m)
        return m

    def recording_adamw(*a, **k):
        o = orig_adamw(*a, **k)
        optims.append(o)
        return o

    T._train_epoch, T.build_model = recording_epoch, recording_build
    torch.optim.AdamW = recording_adamw

    res = T.train(params, root, out, resume=False, progress=False)
    import torch.distributed as dist
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save({"model": models[-1].state_dict(), "optim": optims[-1].state_dict()},
               os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "local_rank": os.environ.get("LOCAL_RANK"),
                   "seen": seen, "result": res}, f, default=float)
    dist.barrier()
    dist.destroy_process_group()
''')


def _split(n: int, sid0: int, rng: np.random.Generator, bad=()) -> tuple[dict, np.ndarray]:
    is_ctrl = (np.arange(n) % 2).astype(np.int8)
    pos = is_ctrl == 0
    stamps = S.ring_stamps(is_ctrl, rng, amp=6.0, colour=S.RING_COLOUR)
    ok = np.ones(n, np.int8)
    ok[list(bad)] = 0
    cols = {
        "sample_id": np.arange(sid0, sid0 + n, dtype=np.int64),
        "is_control": is_ctrl,
        "cutout_ok": ok,
        "theta_e_over_psf": np.where(pos, rng.uniform(0.3, 2.0, n), 0.0),
        "arc_snr": np.where(pos, rng.uniform(1.0, 20.0, n), 0.0),
    }
    return cols, stamps


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root = tmp / "stamps"
    rng = np.random.default_rng(77)
    cols, stamps = _split(N_TRAIN, 1000, rng, BAD_ROWS)
    S.make_stamp_file(root / "train" / "part-00000.parquet", columns=cols, stamps=stamps, row_group_size=ROW_GROUP)
    kept = cols["sample_id"][cols["cutout_ok"] == 1]
    cols, stamps = _split(N_VAL, 9000, rng)
    S.make_stamp_file(root / "val" / "part-00000.parquet", columns=cols, stamps=stamps, row_group_size=ROW_GROUP)

    p = copy.deepcopy(load_params(T.REPO / "params.yaml"))
    p["loss"] = "bce"
    p["train"].update(arch="small_cnn", width=8, batch_size=16, num_workers=0, meta_cols=[], input_channels=3,
                      monitor="auroc", patience=10, scheduler="cosine", exclude_bricks=[],
                      curriculum=[{"name": "main", "epochs": EPOCHS, "lr": 3e-3, "min_theta_over_psf": 0.0,
                                   "min_arc_snr": 0.0}])
    validate(p, "ddp test params")
    params_path = tmp / "params.yaml"
    T.write_params(tmp, p)
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    out = tmp / "model"
    out.mkdir()
    res = T.run([T.VENV_BIN / "torchrun", "--standalone", "--nproc_per_node", "2", driver, params_path, root, out],
                tmp, timeout=170, check=False, OMP_NUM_THREADS="1")
    return res, out, np.sort(kept)


def test_torchrun_exits_0_and_rank0_writes_checkpoints(ddp_run):
    res, out, _ = ddp_run
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    for name in ("best.pt", "main/best.pt", "main/last.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(i["rank"], i["world"]) for i in infos] == [(0, 2), (1, 2)]
    assert {i["local_rank"] for i in infos} == {"0", "1"}


def test_every_sample_seen_exactly_once_per_epoch(ddp_run):
    res, out, kept = ddp_run
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["seen"]) == len(r1["seen"]) == EPOCHS
    uneven = False
    for e in range(EPOCHS):
        a, b = r0["seen"][e]["ids"], r1["seen"][e]["ids"]
        assert not set(a) & set(b), f"epoch {e}: a sample trained on by both ranks"
        both = np.sort(np.array(a + b))
        np.testing.assert_array_equal(both, kept)  # each kept sample exactly once, nothing else
        uneven |= r0["seen"][e]["batches"] != r1["seen"][e]["batches"]
    assert uneven, "the test data should give the ranks different numbers of batches"
    for info in (r0, r1):
        hist = info["result"]["stages"][0]["history"]
        assert [h["train_samples"] for h in hist] == [len(kept)] * EPOCHS
        assert info["result"]["stages"][0]["train_index"]["kept"] == len(kept)
    # both ranks recorded the same history (losses are all-reduced, validation is the full set)
    h0 = [{k: v for k, v in h.items()} for h in r0["result"]["stages"][0]["history"]]
    h1 = [{k: v for k, v in h.items()} for h in r1["result"]["stages"][0]["history"]]
    for a, b in zip(h0, h1):
        for k in ("train_loss", "train_samples", "val_loss", "auroc", "lr"):
            assert a[k] == b[k], k


def test_ranks_end_with_identical_weights_and_optimizer_state(ddp_run):
    res, out, _ = ddp_run
    assert res.returncode == 0, res.stderr[-4000:]
    s0, s1 = (torch.load(out / f"rank{r}.pt", map_location="cpu", weights_only=False) for r in (0, 1))
    assert list(s0["model"]) == list(s1["model"])
    for k in s0["model"]:
        assert torch.equal(s0["model"][k], s1["model"][k]), k
    last = load_checkpoint(str(out / "main" / "last.pt"))["model_state"]
    for k in s0["model"]:
        assert torch.equal(s0["model"][k], last[k]), k
    o0, o1 = s0["optim"]["state"], s1["optim"]["state"]
    assert o0.keys() == o1.keys() and o0
    for pid in o0:
        for name, v in o0[pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o1[pid][name])), (pid, name)
