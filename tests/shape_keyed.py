"""A test-only Linear whose reduction order depends on its input's shape, as a GPU GEMM's kernel choice does.

On GPUs, the same tokens scored in micro-batches of other sizes get other kernels and accumulation orders, and in
bf16 other log-probs and entropies (issue 32); the CPU's own kernels do not show it. :func:`shape_keyed_linear`
splits the reduction over input features in two parts at a point set by the number of rows (tokens of the
micro-batch), rounds each part's product to the working dtype and sums them in it. Used by tests/old_pass_script.py
(verl's TrainingWorker) and, through ``tests/fixtures/shape_keyed_bf16/sitecustomize.py``, in every process of a
rehearsal (tests/test_rehearsals.py).
"""

import sys

import torch


def shape_keyed_linear(self, x):
    """``nn.Linear.forward`` with the reduction split where the input's row count says."""
    split = 1 + (x.numel() // x.shape[-1]) * 40503 % (self.in_features - 1)
    out = sum((x[..., a:b].float() @ self.weight[:, a:b].float().T).to(x.dtype)
              for a, b in ((0, split), (split, self.in_features)))
    return out if self.bias is None else out + self.bias.to(x.dtype)


def install_for_bf16(linear_cls) -> None:
    """Route ``linear_cls.forward`` through :func:`shape_keyed_linear` for bf16 inputs (fp32 stays native); the
    first bf16 call says so on stderr (in a Ray actor, under the actor's name)."""
    native = linear_cls.forward
    used = []

    def forward(self, x):
        if x.dtype != torch.bfloat16:
            return native(self, x)
        if not used:
            used.append(True)
            print("shape_keyed_bf16: a bf16 Linear ran with its reduction split by shape", file=sys.stderr, flush=True)
        return shape_keyed_linear(self, x)

    linear_cls.forward = forward
