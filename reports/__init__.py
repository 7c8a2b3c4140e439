"""Report builder and the committed reports (smoke, and real where run)."""
