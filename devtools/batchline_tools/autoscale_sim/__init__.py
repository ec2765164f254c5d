"""Offline, trace-driven simulation of the autoscaler against baseline policies."""
