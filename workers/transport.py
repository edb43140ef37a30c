"""The ``miner+socket://`` kombu transport of the embedded broker (see :mod:`miner.runtime.broker`)."""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from miner.runtime import broker


class Transport(kombu_redis.Transport):
    """kombu's Redis transport on the embedded server of a MINER_HOME, which it starts first
    when it does not run (on every connection and reconnection)."""

    def establish_connection(self):
        hostname = self.client.hostname or ""
        if hostname.startswith("socket://"):
            broker.ensure(broker.home_of_socket(hostname[len("socket://"):]))
        return super().establish_connection()


def register() -> None:
    TRANSPORT_ALIASES[broker.SCHEME] = "miner.workers.transport:Transport"


register()
