"""What every command shares: argument parsing with one-line errors, and the provenance
that every results file records."""
