"""The live pipeline: segmenter events -> decode scheduling -> result events."""
