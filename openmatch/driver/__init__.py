"""Command-line entry points: `python -m openmatch.driver.<name>`; each is a thin composition of library code."""
