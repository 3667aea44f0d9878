"""Linux scheduling policies for the predictor's threads.

gRPC's threads run under ``SCHED_BATCH`` (see :class:`~openlearner.predictor.grpc.GrpcServer`),
and a Linux thread starts with the policy of the thread that started it. So a thread the
predictor keeps for itself (a model's batch worker, the alias refresher) calls
:func:`normal_policy` first: it runs as it would whichever transport happened to load the
model or ask for the refresh.
"""

from __future__ import annotations

import logging
import os

__all__ = ["batch_policy", "normal_policy"]

log = logging.getLogger("openlearner.predictor")


def _set(policy: int | None) -> None:
    if policy is None:
        return
    try:
        if os.sched_getscheduler(0) != policy:  # 0: the calling thread
            os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # (a sandbox that forbids it: the thread runs as it would anyway)
        log.debug("a predictor thread keeps its scheduling policy (not allowed)")


def batch_policy() -> None:
    """Give the calling thread ``SCHED_BATCH``: woken, it waits for the running thread to block
    or use up its time slice instead of preempting it. Nothing where Linux's policies are not."""
    _set(getattr(os, "SCHED_BATCH", None))


def normal_policy() -> None:
    """Give the calling thread the default policy (``SCHED_OTHER``) if it inherited another."""
    _set(getattr(os, "SCHED_OTHER", None))
