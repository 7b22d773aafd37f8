"""FedEngine shared library: what two or more services need, and nothing that knows a service."""
