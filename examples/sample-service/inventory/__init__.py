"""A tiny inventory service used by the opsledger examples (deliberately insecure)."""
