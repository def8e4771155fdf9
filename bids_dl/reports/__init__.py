"""HTML quality-control reports and their figures."""
