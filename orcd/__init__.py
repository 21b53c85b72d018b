"""A GGUF language-model inference worker: quantized weights, our own kernels, tokens streamed over HTTP."""

__version__ = "0.1.0"
