"""Deterministic simulation of silo: simulated seams (disk, network, clock) and scenario runners."""
