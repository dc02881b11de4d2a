"""The Docker Swarm runtime: services across the nodes of a swarm (`runtime.services`)."""
