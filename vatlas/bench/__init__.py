"""`vatlas bench ...`: the benchmarks (fit, hash encoding, render, serve), apart from the runtime packages they
measure; each prints a table and JSON (results with date and device in docs/BENCHMARKS.md)."""
