"""Delivery: the engine that works through an issue's ledger rows over pooled SMTP connections."""
