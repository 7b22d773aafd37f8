"""FedEngine gateway: the REST surface. Reads projections, writes commands to Kafka."""
