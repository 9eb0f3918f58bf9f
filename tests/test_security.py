"""What docs/security.md says of the components verl runs beside Ray, checked against the installed versions.

If a check here fails after an upgrade, the component changed: update docs/security.md (and the README's
Slurm section) with it.
"""

from __future__ import annotations

import builtins
import pickle

import pytest
from transfer_queue.utils.zmq_utils import ZMQMessage


class _Probe:
    """Unpickling this runs code: it sets ``builtins._erc_probe`` (what a peer's payload could do instead)."""

    def __reduce__(self):
        return exec, ("import builtins; builtins._erc_probe = 'ran'",)


def test_transfer_queue_runs_code_from_a_message_it_receives():
    """TransferQueue's controller and storage decode every ZMQ request with ZMQMessage.deserialize; a request whose
    first frame is its pickle-fallback marker is unpickled, before anything checks who sent it (no ZMQ CURVE or
    ZAP authentication in transfer_queue 0.1.11). Its ports listen on the node's address."""
    frames = [b"\xc1\xfe\xed", pickle.dumps(_Probe())]  # serial_utils._PICKLE_FALLBACK_SENTINEL, then the payload
    try:
        with pytest.raises(Exception):  # not a message: refused, but only after the payload ran
            ZMQMessage.deserialize(frames)
        assert getattr(builtins, "_erc_probe", None) == "ran"
    finally:
        builtins.__dict__.pop("_erc_probe", None)
