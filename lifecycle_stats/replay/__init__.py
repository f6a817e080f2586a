"""Record a hypervisor's event streams and replay them through the agent's pipeline."""
