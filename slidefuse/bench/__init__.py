"""Benchmarks behind `slidefuse bench`: engine latency/throughput, slide throughput, parity between backends."""
