"""Report builder and the committed smoke reports."""
