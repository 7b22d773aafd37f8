"""Pure aggregation logic: no I/O, no clock, no Kafka."""
