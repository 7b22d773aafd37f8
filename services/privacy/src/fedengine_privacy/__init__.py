"""Privacy service: the DP budget ledgers, audit log and spend decisions (math: fedprivacy)."""
