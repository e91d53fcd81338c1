"""`python -m benchmarks.shampoo`: see the package docstring."""

from benchmarks.shampoo import main

main()
