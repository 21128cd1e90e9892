"""The benchmark harness: datasets (`data`), coarse inputs made from exact masks (`coarse`),
metrics (`metrics`) and the benchmark run with its report (`bench`)."""
