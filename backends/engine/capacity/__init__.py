"""Capacity planning: the engine's real Scheduler and BlockManager on a simulated clock, a roofline step-time model
calibrated against the real engine, and workloads to drive them. `ferryman plan` is the command line."""
