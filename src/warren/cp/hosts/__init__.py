"""The hosts subsystem of the control plane: the mTLS client pool, the scheduler and the monitor.

The app's lifespan (``warren.cp.app``) builds them into the app state and runs the monitor.
This package knows hosts and the database, never the services above it.
"""

from __future__ import annotations

from warren.cp.hosts.client_pool import HostClientPool
from warren.cp.hosts.monitor import HostMonitor
from warren.cp.hosts.scheduler import RoundRobinScheduler

__all__ = ["HostClientPool", "HostMonitor", "RoundRobinScheduler"]
