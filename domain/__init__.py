"""threadlog's domain: aggregates, events and application services.

Pure: it imports neither HTTP, SQL nor NATS code.
"""
