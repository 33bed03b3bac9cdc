"""wirespan's engine: capture sources, decoding, TCP reassembly and the pipeline."""

__version__ = "0.1.0"
