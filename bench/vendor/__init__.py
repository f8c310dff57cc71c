"""Third-party files kept verbatim (each keeps its licence header); docs/placement.md says which and why."""
