"""Tests of the pipeline package: jobs, executors, output parsers."""
