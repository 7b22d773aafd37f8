"""Device registry: enrolment, signed heartbeats, status, capabilities and keys."""
