"""Tests of the notify package: deliveries, payloads, configuration."""
