"""bench.py's sections, one module each (bench.py runs them and prints the tables)."""
