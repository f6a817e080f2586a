"""The recorder's stop() after a start that never came (a recording case that failed before
it started recording, tools/make_recordings.py's retries)."""
import io
import threading

import oslo_messaging
from oslo_config import cfg

from lifecycle_stats.replay import format as fmt, recorder


def test_stop_without_start_returns():
    """An oslo.messaging listener that was never started waits for ever in wait(): stop()
    hung, and make_recordings.py never got to its next attempt (found by review)."""
    transport = oslo_messaging.get_notification_transport(cfg.ConfigOpts(), url="fake://")
    writer = fmt.RecordingWriter(io.BytesIO(), {"host": "h1"})
    tap = recorder.Recorder(writer, host="h1", libvirt_uri="test:///default",
                            transport=transport)
    stopping = threading.Thread(target=tap.stop, daemon=True)
    stopping.start()
    stopping.join(10)
    try:
        assert not stopping.is_alive(), "stop() without start() hung"
    finally:
        transport.cleanup()
