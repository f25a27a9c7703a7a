"""openmatch: dense retrieval training, indexing, search and evaluation on MS MARCO-style data."""

__version__ = "0.1.0"
