"""Usage accounting: the ledger of counter growth per QEMU process and audit period, and
the compute.instance.exists reports made from it."""
