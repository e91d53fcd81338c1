"""`python -m benchmarks.looped_icl`: see the package docstring."""

from benchmarks.looped_icl import main

main()
