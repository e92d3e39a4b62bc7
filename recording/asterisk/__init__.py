"""Asterisk's manager interface (AMI): the client, and what the service asks of it.
Imports nothing from the doors or from the service."""
