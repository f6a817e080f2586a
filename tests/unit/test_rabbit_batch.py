"""Which leading messages of a pipelined batch the broker confirmed (emitters/rabbit_batch.py):
only an unbroken run from the first counts as delivered."""
from lifecycle_stats.emitters import rabbit_batch


def test_single_acks_count_only_an_unbroken_run_from_the_first():
    acks = rabbit_batch._Acks()
    for tag in (1, 2, 4, 5):
        acks.ack(tag, multiple=False)
    assert acks.upto(5) == 2  # 3 is not confirmed: 4 and 5 do not count yet
    acks.ack(3, multiple=False)
    assert acks.upto(5) == 5


def test_a_multiple_ack_confirms_every_tag_up_to_it_and_never_beyond_the_batch():
    acks = rabbit_batch._Acks()
    acks.ack(3, multiple=True)
    assert acks.upto(5) == 3
    acks.ack(5, multiple=False)
    assert acks.upto(5) == 3
    acks.ack(4, multiple=True)
    assert acks.upto(5) == 5 and acks.upto(2) == 2


def test_a_nack_ends_the_wait_and_what_was_acked_before_still_counts():
    acks = rabbit_batch._Acks()
    acks.ack(1, multiple=False)
    acks.nack(2, multiple=False)
    assert acks.nacked and acks.upto(3) == 1


def test_only_the_rabbit_driver_is_pipelined():
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    transport = oslo_messaging.get_notification_transport(conf, url="fake://")
    try:
        assert not rabbit_batch.available(transport)
    finally:
        transport.cleanup()
