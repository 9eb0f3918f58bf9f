"""verl_erc.erc.entropy.entropy_no_grad: verl's entropy values, no graph, any chunking."""

import pytest
import torch
from verl.utils.torch_functional import entropy_from_logits

from verl_erc.erc.entropy import CPU_CHUNK_ELEMENTS, _chunk_bounds, effective_chunk_rows, entropy_no_grad

VOCAB = 4099  # odd, so chunk boundaries and vector tails are exercised


def _logits(rows: int, dtype: torch.dtype, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 4
    if rows > 2:
        x[1] = -30.0
        x[1, 7] = 30.0  # a near-deterministic row: tiny entropy, where cancellation bites
        x[2] = 0.0  # uniform row: entropy log(vocab)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 256, 10_000])
def test_equals_verl_entropy_from_logits(dtype, chunk_size):
    """Same values as verl's old-log-prob pass (entropy_from_logits on the whole tensor), including
    chunk sizes that do not divide the row count (101 rows)."""
    logits = _logits(101, dtype)
    expected = entropy_from_logits(logits)
    got = entropy_no_grad(logits, chunk_size=chunk_size)
    assert got.dtype == expected.dtype and got.shape == (101,)
    # On-policy the ERC ratio must be exactly 1: on CPU the values are bit-identical.
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_vocab_size_cpu_chunking(dtype):
    """Qwen2's 151,936-token vocabulary: CPU chunks of a few rows, still verl's values."""
    logits = _logits(37, dtype, vocab=151_936, seed=1)
    assert effective_chunk_rows(151_936, 256, "cpu") == CPU_CHUNK_ELEMENTS // 151_936
    torch.testing.assert_close(entropy_no_grad(logits), entropy_from_logits(logits), rtol=0, atol=0)


def test_leading_dims_and_row_count_edge_cases():
    logits = _logits(24, torch.float32).reshape(2, 3, 4, VOCAB)
    got = entropy_no_grad(logits, chunk_size=5)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got, entropy_from_logits(logits), rtol=0, atol=0)
    one = _logits(1, torch.float32)
    torch.testing.assert_close(entropy_no_grad(one), entropy_from_logits(one), rtol=0, atol=0)
    assert entropy_no_grad(torch.empty(0, VOCAB)).shape == (0,)
    # uniform row: log(vocab)
    uniform = entropy_no_grad(torch.zeros(3, VOCAB))
    torch.testing.assert_close(uniform, torch.full((3,), float(torch.log(torch.tensor(float(VOCAB))))))


def test_chunk_bounds_never_leave_a_single_row():
    assert _chunk_bounds(7, 3) == [(0, 3), (3, 7)]
    assert _chunk_bounds(6, 3) == [(0, 3), (3, 6)]
    assert _chunk_bounds(1, 4) == [(0, 1)]
    assert _chunk_bounds(0, 4) == []
    for n in range(2, 40):
        for step in range(2, 9):
            bounds = _chunk_bounds(n, step)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[0] == a[1] for a, b in zip(bounds, bounds[1:]))
            assert all(e - s >= 2 for s, e in bounds)
    with pytest.raises(ValueError):
        entropy_no_grad(torch.zeros(2, 3), chunk_size=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temperature_scalar_and_per_row(dtype):
    """Logits are scaled as verl's engine does: logits / temperature.clamp(min=1e-8).to(dtype)."""
    logits = _logits(53, dtype)
    # scalar
    expected = entropy_from_logits(logits / torch.tensor(0.7).clamp(min=1e-8).to(dtype))
    torch.testing.assert_close(entropy_no_grad(logits, 0.7, chunk_size=8), expected, rtol=0, atol=0)
    torch.testing.assert_close(entropy_no_grad(logits, 1.0), entropy_from_logits(logits), rtol=0, atol=0)
    # per row, as verl's temperature_rmpad (total_nnz,) and as temperature.unsqueeze(-1)
    temps = torch.linspace(0.3, 1.7, 53)
    expected = entropy_from_logits(logits / temps.unsqueeze(-1).clamp(min=1e-8).to(dtype))
    torch.testing.assert_close(entropy_no_grad(logits, temps, chunk_size=8), expected, rtol=0, atol=0)
    torch.testing.assert_close(entropy_no_grad(logits, temps.unsqueeze(-1), chunk_size=8), expected, rtol=0, atol=0)
    # higher temperature -> flatter distribution -> higher entropy (rows 1, 2: ~0 and uniform)
    assert (entropy_no_grad(logits, 2.0)[3:] > entropy_no_grad(logits, 0.5)[3:]).all()


def test_temperature_per_sequence_padded_layout():
    """Padded input (bsz, seq, vocab) with one temperature per sequence, shape (bsz, 1)."""
    logits = _logits(12, torch.float32).reshape(3, 4, VOCAB)
    temps = torch.tensor([0.5, 1.0, 1.5])
    expected = entropy_from_logits(logits / temps.view(3, 1, 1))
    torch.testing.assert_close(entropy_no_grad(logits, temps.unsqueeze(-1), chunk_size=5), expected, rtol=0, atol=0)


def test_no_graph_even_when_input_requires_grad():
    logits = _logits(20, torch.float32).requires_grad_(True)
    hidden = logits * 1.0  # non-leaf, part of a graph
    for x in (logits, hidden):
        out = entropy_no_grad(x, torch.full((20,), 0.9), chunk_size=3)
        assert not out.requires_grad and out.grad_fn is None
    # the caller's graph is untouched
    hidden.sum().backward()
    assert logits.grad is not None


def test_follows_autocast_like_verl():
    """Inside verl's engine the call runs under torch.autocast: same dtype and values as verl's."""
    logits = _logits(30, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = entropy_from_logits(logits)
        got = entropy_no_grad(logits, chunk_size=4)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_custom_entropy_fn():
    """entropy_fn swaps the per-chunk formula (e.g. the engine's compiled entropy_from_logits)."""
    logits = _logits(10, torch.float32)
    calls = []

    def fn(block):
        calls.append(block.shape[0])
        return entropy_from_logits(block)

    torch.testing.assert_close(entropy_no_grad(logits, chunk_size=4, entropy_fn=fn), entropy_from_logits(logits))
    assert sum(calls) == 10 and all(c >= 2 for c in calls)
