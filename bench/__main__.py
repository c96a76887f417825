"""``python -m bench [--quick] [--only P1,P2] [--out DIR]``: run the benchmarks."""

# Guarded, and imported inside the guard: the spawn start method of P6's process pool
# imports this module in every worker, which must neither run the benchmarks nor pay
# for importing them.
if __name__ == "__main__":
    from bench.runner import main

    raise SystemExit(main())
