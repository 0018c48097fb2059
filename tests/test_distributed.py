"""Two CPU processes with gloo: DDP training agrees on the weights, metrics are reduced, the
CPU SyncBN matches BatchNorm over the whole batch, and resuming (every rank its own RNG, the new
schedule) gives the weights of uninterrupted training. SyncBN conversion needs a process group."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from blendmask.distributed import CPUSyncBatchNorm2d, convert_sync_batchnorm, reduce_metrics

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from tests.helpers.engine_standins import TinyDetector, TinyShapes, tiny_cfg
    from blendmask.engine import Trainer
    from blendmask.distributed import destroy_distributed, init_distributed

    assert init_distributed(torch.device("cpu"))
    try:
        # SyncBN check: each rank normalises half of a batch; compare with BN on the full batch.
        torch.manual_seed(0)
        full = torch.randn(4, 3, 5, 5)
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
        sync = convert_sync_batchnorm(nn.Sequential(bn), torch.device("cpu"))[0]
        part = full[rank * 2:(rank + 1) * 2].clone().requires_grad_()
        out = sync(part)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        torch.save({"out": out.detach(), "grad": part.grad, "running_var": sync.running_var.clone(),
                    "type": type(sync).__name__}, os.path.join(out_dir, f"bn_{rank}.pt"))

        # DDP training: ranks start from different weights; DDP must broadcast rank 0's.
        torch.manual_seed(rank)
        trainer = Trainer(model=TinyDetector(), cfg=tiny_cfg(max_iter=4, ims_per_batch=4),
                          train_dataset=TinyShapes(), output_dir=os.path.join(out_dir, "train"), show_progress=False)
        result = trainer.train()
        torch.save({"state": trainer.model.state_dict(), "losses": result.losses,
                    "bn_type": type(trainer.model.features[1]).__name__}, os.path.join(out_dir, f"rank_{rank}.pt"))
    finally:
        destroy_distributed()


class _Interrupted(Exception):
    pass


def _resume_worker(rank: int, port: int, out_dir: str) -> None:
    """Uninterrupted: 8 iterations with steps=(6,). Interrupted: the old schedule (20 iterations,
    steps=(15,)), stopped after the checkpoint at 4, then resumed with steps=(6,) to 8. The model has dropout and the ranks
    have different RNG streams, so the result depends on every rank restoring its own RNG state."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from tests.helpers.engine_standins import TinyDetector, TinyShapes, tiny_cfg
    from blendmask.engine import HookBase, Trainer
    from blendmask.distributed import destroy_distributed, init_distributed

    class StopAt(HookBase):
        def after_step(self):
            if self.trainer.iter == 4:
                raise _Interrupted

    def trainer(name, steps, max_iter=8, hooks=()):
        torch.manual_seed(100 + rank)  # a different global RNG stream on every rank
        cfg = tiny_cfg(max_iter=max_iter, checkpoint_period=4, steps=steps, warmup_iters=2)
        return Trainer(model=TinyDetector(dropout=0.5), cfg=cfg, train_dataset=TinyShapes(),
                       output_dir=os.path.join(out_dir, name), show_progress=False, hooks=hooks)

    assert init_distributed(torch.device("cpu"))
    try:
        full = trainer("full", (6,)).train()
        try:
            trainer("split", (15,), max_iter=20, hooks=[StopAt()]).train()
        except _Interrupted:
            pass
        resumed_trainer = trainer("split", (6,))
        assert resumed_trainer.resume() and resumed_trainer.start_iter == 4
        resumed = resumed_trainer.train()
        torch.save({"full": full.losses, "resumed": resumed.losses}, os.path.join(out_dir, f"losses_{rank}.pt"))
    finally:
        destroy_distributed()


def test_resume_on_two_gloo_ranks_with_a_changed_schedule_matches_uninterrupted_training(tmp_path):
    from tests.helpers.engine_standins import TinyDetector, TinyShapes, tiny_cfg
    from blendmask.engine import Trainer, load_checkpoint

    mp.spawn(_resume_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    middle = load_checkpoint(tmp_path / "split" / "model_0000004.pth")
    assert middle["rng"]["world_size"] == 2
    torch_states = [state["torch"] for state in middle["rng"]["ranks"]]
    assert not torch.equal(*torch_states)  # each rank's own RNG state is in the checkpoint
    full, resumed = (load_checkpoint(tmp_path / run / "model_final.pth") for run in ("full", "split"))
    assert resumed["iteration"] == full["iteration"] == 8
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    losses = torch.load(tmp_path / "losses_0.pt", weights_only=True)
    assert [m["iteration"] for m in losses["resumed"]] == [5, 6, 7, 8]
    assert [m["lr"] for m in losses["resumed"]] == [m["lr"] for m in losses["full"][4:]]
    assert losses["resumed"][-1]["lr"] == pytest.approx(0.03)  # the new steps=(6,) took effect
    assert [m["loss_total"] for m in losses["resumed"]] == [m["loss_total"] for m in losses["full"][4:]]

    # One process cannot take over the RNG streams of two.
    trainer = Trainer(model=TinyDetector(), cfg=tiny_cfg(max_iter=8), train_dataset=TinyShapes(),
                      output_dir=tmp_path / "split", show_progress=False)
    (tmp_path / "split" / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(ValueError, match=r"model_0000004\.pth: it holds the RNG states of 2 process\(es\), this run has 1"):
        trainer.resume()


def test_two_gloo_processes_agree_on_weights(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in range(WORLD_SIZE))
    assert r0["bn_type"] == r1["bn_type"] == "CPUSyncBatchNorm2d"
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # params and SyncBN running stats agree
    assert [m["loss_total"] for m in r0["losses"]] == [m["loss_total"] for m in r1["losses"]]  # reduced
    assert len(r0["losses"]) == 4
    assert (tmp_path / "train" / "model_final.pth").is_file()  # written once, by rank 0

    # SyncBN over 2 ranks == BatchNorm over the concatenated batch (outputs, input grads, running stats).
    torch.manual_seed(0)
    full = torch.randn(4, 3, 5, 5)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    full.requires_grad_()
    out = bn(full)
    weights = torch.cat([torch.arange(2 * 75).view(2, 3, 5, 5)] * 2).float()
    (out * weights).sum().backward()
    b0, b1 = (torch.load(tmp_path / f"bn_{r}.pt", weights_only=True) for r in range(WORLD_SIZE))
    assert b0["type"] == "CPUSyncBatchNorm2d"
    torch.testing.assert_close(torch.cat([b0["out"], b1["out"]]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([b0["grad"], b1["grad"]]), full.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b0["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)


def test_single_process_keeps_plain_batchnorm_and_metrics():
    model = nn.Sequential(nn.BatchNorm2d(3))
    assert type(convert_sync_batchnorm(model, torch.device("cpu"))[0]) is nn.BatchNorm2d
    assert reduce_metrics({"loss": 1.5}) == {"loss": 1.5}
    assert not isinstance(model[0], CPUSyncBatchNorm2d)
