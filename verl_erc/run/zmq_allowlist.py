"""Who may talk to the job's ZMQ sockets: the hosts of its Ray cluster, refused to anyone else.

verl's TransferQueue (its controller and storage units, Ray actors) binds ZMQ sockets on the node's address and
unpickles what it receives, before anything checks the sender (docs/security.md). ZMQ's own authentication
(ZAP, RFC 27) can refuse a connection by the peer's IP address before a message is read: this module turns it on
for every TCP socket a process binds, with an allowlist of

- the addresses of the Ray cluster's nodes, as Ray lists them when the process starts (``ray.nodes()``),
- loopback (``127.0.0.1``, ``::1``),
- the addresses in ``VERL_ERC_ZMQ_ALLOW`` (comma-separated: a node whose traffic leaves from another address).

``VERL_ERC_ZMQ_ALLOW=off`` turns the allowlist off (the launch says so). A refused connection never reaches the
socket's owner (the peer sees its requests time out); each refusal is logged as a warning in the owner's log, so a
host missing from the list is named. The allowlist is per host: another user's process on a node of the job is
let in, as for torch.distributed.

:func:`install` runs in each Ray worker process of the job, before it runs anything (Ray's
``worker_process_setup_hook``, which :func:`setup_hook_runtime_env` sets for the launch). pyzmq binds the ZAP
handler to one context: a handler thread starts per context at its first TCP bind, and stops when the context is
closed (``term``, ``destroy``), which would otherwise wait for the handler's sockets forever.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

#: comma-separated extra addresses, or ``off``
ALLOW_ENV = "VERL_ERC_ZMQ_ALLOW"
#: the ZAP domain of the sockets this module guards (ZAP runs only for sockets with a domain set before bind)
ZAP_DOMAIN = b"verl-erc-job"
LOOPBACK = ("127.0.0.1", "::1")
#: what the launch sets as Ray's worker_process_setup_hook
SETUP_HOOK = f"{__name__}.install"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_handlers: dict[tuple[int, int], ThreadAuthenticator] = {}  # (pid, libzmq context address) -> its ZAP handler
_allowed: tuple[str, ...] = ()
_original = {}


class _RefusalsAsWarnings(logging.LoggerAdapter):
    """pyzmq's authenticator logs its decisions at debug level: a peer's first refusal becomes a warning that names
    it (a refused peer reconnects every 100 ms: its later refusals are not logged)."""

    refused: set[str] = set()

    def debug(self, msg, *args, **kwargs):
        if not str(msg).startswith("DENIED"):
            super().debug(msg, *args, **kwargs)
        elif args and args[-1] not in self.refused:
            self.refused.add(args[-1])
            self.warning("verl_erc: refused a ZMQ connection from %s (not a host of this job's Ray cluster; "
                         f"{ALLOW_ENV} adds addresses; later refusals of it are not logged)", args[-1])


def allowlist(node_addresses: list[str], extra: str = "") -> tuple[str, ...]:
    """The peer addresses a guarded socket accepts: the nodes', loopback and ``extra`` (comma-separated), each IPv4
    address also in the IPv4-mapped form that ZAP reports for an IPv4 peer of an IPv6 socket."""
    addresses = set()
    for text in [*node_addresses, *LOOPBACK, *extra.replace(" ", ",").split(",")]:
        if text:
            ip = ipaddress.ip_address(text.strip("[]"))  # a malformed entry raises, naming it
            addresses.add(str(ip))
            if ip.version == 4:
                addresses.add(f"::ffff:{ip}")
    return tuple(sorted(addresses))


def _handler(context: zmq.Context) -> None:
    key = (os.getpid(), context.underlying)
    with _lock:
        handler = _handlers.get(key)
        if handler is None or not handler.is_alive():
            handler = ThreadAuthenticator(context, log=_RefusalsAsWarnings(_log, {}))
            handler.start()
            handler.allow(*_allowed)
            _handlers[key] = handler


def _stop_handler(context: zmq.Context) -> None:
    with _lock:
        handler = _handlers.pop((os.getpid(), context.underlying), None)
    if handler is not None:
        handler.stop()


def _bind(self, addr):
    if (addr.decode() if isinstance(addr, bytes) else str(addr)).startswith("tcp://"):
        self.set(zmq.ZAP_DOMAIN, ZAP_DOMAIN)  # before bind: ZAP applies to the connections a bind accepts
        self.set(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: refused, never let through
        _handler(self.context)
    return _original["bind"](self, addr)


def _term(self):
    _stop_handler(self)
    return _original["term"](self)


def _destroy(self, linger=None):
    _stop_handler(self)
    return _original["destroy"](self, linger=linger)


def guard(addresses: tuple[str, ...]) -> None:
    """Guard every TCP socket this process binds from now on with ZAP, accepting ``addresses`` only."""
    global _allowed
    _allowed = addresses
    if not _original:
        _original.update(bind=zmq.Socket.bind, term=zmq.Context.term, destroy=zmq.Context.destroy)
        zmq.Socket.bind, zmq.Context.term, zmq.Context.destroy = _bind, _term, _destroy


def extra_addresses() -> str | None:
    """``VERL_ERC_ZMQ_ALLOW`` as set (comma-separated addresses, maybe empty), or None when it turns the allowlist
    off."""
    extra = os.environ.get(ALLOW_ENV, "")
    return None if extra.strip().lower() == "off" else extra


def install() -> None:
    """Ray's worker_process_setup_hook: the allowlist of the cluster's nodes (:func:`allowlist`) on this process's
    ZMQ sockets; nothing under ``VERL_ERC_ZMQ_ALLOW=off``."""
    extra = extra_addresses()
    if extra is None:
        return
    import ray

    nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    guard(allowlist(nodes, extra))


def setup_hook_runtime_env(ray_init) -> str | None:
    """Set :func:`install` as the job's ``runtime_env.worker_process_setup_hook`` in ``ray_init`` (verl's
    ``ray_kwargs.ray_init``, a DictConfig); a line for the launch to print when the allowlist is off. Refuses a
    setup hook of the user's own (Ray runs one per job)."""
    extra = extra_addresses()
    if extra is None:
        return (f"verl_erc: {ALLOW_ENV}=off: the job's ZMQ sockets (TransferQueue, which unpickles what it receives) "
                "accept connections from any host")
    allowlist([], extra)  # a malformed address fails here, before anything starts
    runtime_env = ray_init.setdefault("runtime_env", {})
    hook = runtime_env.get("worker_process_setup_hook")
    if hook not in (None, SETUP_HOOK):
        raise ValueError(f"ray_kwargs.ray_init.runtime_env.worker_process_setup_hook={hook}: verl-erc sets it to "
                         f"{SETUP_HOOK} (the job's ZMQ allowlist); set {ALLOW_ENV}=off to use your own")
    runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    env_vars = runtime_env.setdefault("env_vars", {})
    if extra:  # the workers' allowlist gets the extra addresses
        env_vars[ALLOW_ENV] = extra
    return None
