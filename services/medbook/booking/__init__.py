"""The booking service: HTTP API, PostgreSQL, outbox relay, result consumer, timeout sweep."""
