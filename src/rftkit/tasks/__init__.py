"""Task generators: the bundled arithmetic task writes the demo's and the examples' data."""
