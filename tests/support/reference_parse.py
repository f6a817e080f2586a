"""The reference definitions of a bulk stats record's disks and vNICs: plain, one key at a
time, as first written. The product parses records with reading/bulk_parse.py (written for
CPU); tests/unit/test_bulk_parse.py holds it to these on every record shape."""
from lifecycle_stats import records
from lifecycle_stats.reading.block_sizes import disk_sizes


def disks_from_stats(stats):
    """Top-level disks of a stats record; backing-chain entries (same name) are dropped, and
    so are entries without I/O counters (an empty cdrom)."""
    disks: dict[str, records.DiskStats] = {}
    for i in range(stats.get("block.count", 0)):
        name = stats.get(f"block.{i}.name")
        if name is None or name in disks or f"block.{i}.rd.reqs" not in stats:
            continue
        disks[name] = records.DiskStats(
            device=name,
            read_requests=stats[f"block.{i}.rd.reqs"], read_bytes=stats[f"block.{i}.rd.bytes"],
            write_requests=stats[f"block.{i}.wr.reqs"], write_bytes=stats[f"block.{i}.wr.bytes"],
            read_time_ns=stats.get(f"block.{i}.rd.times"),
            write_time_ns=stats.get(f"block.{i}.wr.times"),
            **disk_sizes(stats.get(f"block.{i}.capacity"), stats.get(f"block.{i}.allocation"),
                         stats.get(f"block.{i}.physical")))
    return tuple(disks.values())


def vnics_from_stats(stats):
    vnics: dict[str, records.VnicStats] = {}
    for i in range(stats.get("net.count", 0)):
        name = stats.get(f"net.{i}.name")
        if name is None or name in vnics or f"net.{i}.rx.bytes" not in stats:
            continue
        vnics[name] = records.VnicStats(name, *(
            stats[f"net.{i}.{key}"] for key in (
                "rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
                "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")))
    return tuple(vnics.values())
