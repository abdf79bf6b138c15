from uuid import uuid4

from dispatcher.ratelimit import RateLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, clock=clock)
    assert bucket.available() == 2
    bucket.take()
    bucket.take()
    assert bucket.available() == 0
    clock.now = 0.5
    assert bucket.available() == 1
    clock.now = 100
    assert bucket.available() == 2


def test_debt_delays_the_next_token() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, clock=clock)
    bucket.take()
    bucket.take()  # in debt by one
    clock.now = 1.0
    assert bucket.available() == 0
    clock.now = 2.0
    assert bucket.available() == 1


def test_replicas_share_a_limit() -> None:
    clock = Clock()
    hook = uuid4()
    limits = RateLimits(clock=clock)
    limits.update({str(hook): 10.0}, replicas=2)
    assert limits.room(hook) == 5
    limits.update({str(hook): 10.0}, replicas=1)
    clock.now = 10
    assert limits.room(hook) == 10
    limits.update({}, replicas=1)
    assert limits.room(hook) is None
