"""libvirt bulk stats records of the shapes the inspector meets, for the parsing tests."""

COMPLETE = {
    "state.state": 1, "cpu.time": 5, "block.count": 2,
    "block.0.name": "vda", "block.0.path": "/img/a.qcow2", "block.0.rd.reqs": 1,
    "block.0.rd.bytes": 2, "block.0.wr.reqs": 3, "block.0.wr.bytes": 4,
    "block.1.name": "vda", "block.1.path": "/img/base.qcow2", "block.1.backingIndex": 1,
    "block.1.rd.reqs": 9, "block.1.rd.bytes": 9, "block.1.wr.reqs": 9, "block.1.wr.bytes": 9,
    "net.count": 1, "net.0.name": "tap1", "net.0.rx.bytes": 10, "net.0.rx.pkts": 1,
    "net.0.rx.errs": 0, "net.0.rx.drop": 0, "net.0.tx.bytes": 20, "net.0.tx.pkts": 2,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0,
}

# What a read that raced virDomainDestroy returned on this machine: names, no counters.
TORN = {"state.state": 1, "cpu.time": 5, "block.count": 1, "block.0.name": "vda",
        "block.0.path": "/img/a.qcow2", "net.count": 1, "net.0.name": "tap1"}

# A domain with a vhost-user (OVS-DPDK) port: libvirt names it but has no counters for it.
WITH_VHOSTUSER = {**COMPLETE, "net.count": 2, "net.1.name": "vhu1a2b3c4d-5e"}


def without(record, *prefixes):
    return {k: v for k, v in record.items() if not k.startswith(prefixes)}


class Domain:
    """A libvirt domain handle: uuid, name, process id, one disk's blockInfo."""

    def __init__(self, uuid, process_id):
        self.uuid, self.process_id = uuid, process_id

    def UUIDString(self):
        return self.uuid

    def name(self):
        return "instance-1"

    def ID(self):
        return self.process_id

    def blockInfo(self, dev, flags=0):  # (capacity, allocation, physical), as libvirt's
        return (16 << 20, 200 << 10, 192 << 10)


class StatsConnection:
    """Hands the inspector the stats records a test sets, as libvirt's bulk and single calls
    (a Hypervisor's call() runs fn on it). uri: a local one makes the inspector read the QEMU
    process's start."""

    def __init__(self, dom, record, uri: str = ""):
        self.dom, self.record, self.uri = dom, record, uri
        self.alive = True  # False: closed or lost, as libvirt's isAlive() says

    def isAlive(self):
        return int(self.alive)

    def call(self, fn, instance_id=None):
        return fn(self)

    def getAllDomainStats(self, groups, flags):
        return [(self.dom, self.record)]

    def lookupByUUIDString(self, uuid):
        return self.dom

    def domainListGetStats(self, doms, groups):
        return [(self.dom, self.record)]
