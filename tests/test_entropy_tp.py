"""Tensor parallelism: the current entropy from vocabulary-sharded logits (2 gloo ranks), no all-gather."""

import pytest
import torch

from cpu_subprocess import run_cpu_script
from verl_erc.erc.entropy import combine_shard_entropy


def test_shard_statistics_combine_to_the_entropy():
    torch.manual_seed(0)
    z = torch.randn(5, 12, dtype=torch.float64) * 3
    m = z.max(dim=-1).values
    parts = [((zp - m[:, None]).exp().sum(-1), ((zp - m[:, None]).exp() * zp).sum(-1)) for zp in z.split([5, 7], dim=-1)]
    h = combine_shard_entropy(m, parts[0][0] + parts[1][0], parts[0][1] + parts[1][1])
    p = torch.softmax(z, dim=-1)
    torch.testing.assert_close(h, -(p * p.log()).sum(-1), rtol=0, atol=1e-12)


SCRIPT = r"""
import json, os
import torch, torch.distributed as dist, torch.multiprocessing as mp

def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from verl_erc.hooks.entropy_hook import vocab_shard_group
    from verl_erc.erc.entropy import entropy_no_grad, vocab_parallel_entropy_no_grad
    torch.manual_seed(0)
    full = torch.randn(1, 37, 1001) * 4  # [1, total_nnz, vocab]: odd vocab, uneven shards
    temperature = torch.rand(37) + 0.5
    mesh = init_device_mesh("cpu", (2,))
    logits = distribute_tensor(full, mesh, [Shard(2)])
    group = vocab_shard_group(logits)
    tp = vocab_parallel_entropy_no_grad(logits.to_local().squeeze(0), group, temperature, chunk_size=8)
    ref = entropy_no_grad(full.squeeze(0), temperature, chunk_size=8)
    replicated = distribute_tensor(full, mesh, [Replicate()])

    # the engine hook on TP logits: never gathers them (full_tensor would raise)
    from types import SimpleNamespace
    from torch.distributed.tensor import DTensor
    from verl.utils import tensordict_utils as tu
    from verl_erc.hooks.engine import ErcFSDPEngineWithLMHead
    def no_gather(self, **kwargs):
        raise AssertionError("the ERC hook all-gathered the TP logits")
    DTensor.full_tensor = no_gather
    engine = object.__new__(ErcFSDPEngineWithLMHead)
    engine.use_ulysses_sp = False
    ids = torch.nested.as_nested_tensor([torch.zeros(n, dtype=torch.long) for n in (10, 27)], layout=torch.jagged)
    micro = tu.get_tensordict({"input_ids": ids}, {"use_remove_padding": True})
    hooked = engine._erc_current_entropy(SimpleNamespace(logits=logits), {"temperature_rmpad": temperature, "pad_size": 0}, micro, 8)
    if rank == 0:
        json.dump({"max_abs_diff": (tp - ref).abs().max().item(), "local_vocab": logits.to_local().shape[-1],
                   "hook_max_abs_diff": (hooked.values() - ref).abs().max().item(),
                   "replicated_group": vocab_shard_group(replicated) is None}, open(out, "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    import sys
    from cpu_subprocess import free_port
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/_tp.json"
    mp.spawn(worker, args=(free_port(), out), nprocs=2)
    print(open(out).read())
"""


@pytest.mark.process
def test_vocab_parallel_entropy_matches_the_full_logits(tmp_path):
    script = tmp_path / "tp.py"
    script.write_text(SCRIPT)
    res = run_cpu_script(
        f"import runpy, sys; sys.argv = ['tp.py', {str(tmp_path / 'out.json')!r}]; "
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r}); runpy.run_path({str(script)!r}, run_name='__main__')",
        timeout=300,
    )
    assert res["local_vocab"] == 501  # each rank held half the vocabulary, never the full logits
    assert res["max_abs_diff"] < 1e-5 and res["hook_max_abs_diff"] < 1e-5
    assert res["replicated_group"]
