"""Reusable building blocks (channels-last). This package imports nothing else of ours."""
