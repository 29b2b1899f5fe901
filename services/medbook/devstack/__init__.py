"""Private PostgreSQL, Redis and RabbitMQ servers for the local dev stack and the tests."""
