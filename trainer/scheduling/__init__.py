"""Everything between a validated spec and a running job: preflight checks and submission."""
