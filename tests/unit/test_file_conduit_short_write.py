"""The file conduit on a write the filesystem takes only in part: a real short os.write under
RLIMIT_FSIZE (in a child process, so the limit binds nothing else). The send fails, no cut
line stays in the file, and the same record written once space is back lands whole."""
import json
import subprocess
import sys
import textwrap

from lifecycle_stats.publishing import signing
from tests.support.conduits import SECRET

CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    from lifecycle_stats.emitters import file
    from lifecycle_stats.exceptions import EmitError
    from tests.support.conduits import SECRET, conf_with, notification

    path = sys.argv[1]
    emitter = file.FileConduit(conf_with(file_emitter={"path": path, "max_bytes": 0}))
    record = notification()
    size = len(file.lines(record, SECRET))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, not a kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))
    outcomes = []
    for _ in range(2):
        try:
            emitter.emit(record)
            outcomes.append("sent")
        except EmitError as exc:
            outcomes.append("failed: " + str(exc))
    after_failure = os.path.getsize(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    emitter.emit(record)  # space is back: the spool's retry
    print(json.dumps({"outcomes": outcomes, "size": size, "after_failure": after_failure}))
""")


def test_a_short_write_is_a_failed_send_and_leaves_no_cut_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    child = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.splitlines()[-1])
    first, second = result["outcomes"]
    assert first == "sent"
    assert second.startswith("failed: ") and "File too large" in second, second
    assert result["after_failure"] == result["size"]  # cut back to the first record's end
    text = path.read_text()
    assert text.endswith("\n")
    messages = [json.loads(line) for line in text.splitlines()]  # every line whole JSON
    assert len(text.encode()) == 2 * result["size"]  # two whole records, nothing else
    assert all(signing.verify(message, SECRET) for message in messages)
    per_record = len(messages) // 2
    assert [m["message_id"] for m in messages[:per_record]] == [
        m["message_id"] for m in messages[per_record:]]  # the retried record, complete
