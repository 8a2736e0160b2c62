"""Enqueueing is idempotent per attempt; a new attempt is a new job."""

from __future__ import annotations

from app.jobs import queue


async def test_an_attempt_is_queued_once_and_the_next_attempt_again(settings):
    prefix = settings.redis_prefix + "-queue"
    arq = await queue.connect(settings.redis_url)
    try:
        first = await queue.enqueue_evaluation(arq, prefix, 41, 1)
        repeated = await queue.enqueue_evaluation(arq, prefix, 41, 1)
        next_attempt = await queue.enqueue_evaluation(arq, prefix, 41, 2)
        queued = await arq.zrange(queue.queue_name(prefix), 0, -1)
    finally:
        await arq.aclose()

    assert (first, repeated, next_attempt) == (True, False, True)
    assert sorted(job.decode() for job in queued) == [
        queue.job_id(prefix, 41, 1), queue.job_id(prefix, 41, 2)]
