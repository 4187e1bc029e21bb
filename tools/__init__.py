"""golf's tooling: what no training-and-evaluation run imports (corpus building, downloads, benchmarks, ablations)."""
