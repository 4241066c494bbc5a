"""An MQTT 3.1.1-only broker (amqtt) for the protocol fallback test: `python -m
tests.amqtt_broker_main PORT` prints READY once it listens, and runs until killed."""

from __future__ import annotations

import asyncio
import sys

from agent.devkit.brokers import amqtt_broker


async def main(port: int) -> None:
    """Serve anonymous clients on 127.0.0.1:port until killed."""
    async with amqtt_broker(port):
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
