"""A worker process for the tests: `python -m tests.worker.process --database-url ... [options]`.

Runs portraitkit's real worker (service.run_worker) against the given database, with a
generator chosen by the test (noop, slow:SECONDS, local), and prints its stats as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from portraitkit.generators import GeneratedImage, GenerationRequest, Generator, get_generator
from portraitkit.service import run_worker
from portraitkit.settings import Settings
from portraitkit.worker import WorkerOptions


class SlowGenerator:
    """The noop image after a pause: long enough to kill a worker mid-item."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = get_generator("noop")

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        await asyncio.sleep(self.seconds)
        return await self.inner.generate(request)


def generators(spec: str) -> Generator:
    if spec.startswith("slow:"):
        return SlowGenerator(float(spec.split(":", 1)[1]))
    return get_generator(spec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--generator", default="noop")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=int, default=30)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--recover-every", type=float, default=0.5)
    parser.add_argument("--worker-id", default="test-worker")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings(
        database_url=args.database_url, jwt_secret=args.secret, state_dir=args.state_dir
    )
    options = WorkerOptions(
        concurrency=args.concurrency,
        lease_seconds=args.lease,
        heartbeat_seconds=max(args.lease / 3, 0.5),
        poll_seconds=args.poll,
        recover_every_seconds=args.recover_every,
        shutdown_grace_seconds=5,
        worker_id=args.worker_id,
    )
    spec = args.generator
    stats = asyncio.run(
        run_worker(settings, options, once=args.once, generators=lambda _name: generators(spec))
    )
    print(json.dumps(vars(stats)), flush=True)


if __name__ == "__main__":
    main()
