"""tunesmith: fine-tune language models with the best practices as the default path.

Run `tunesmith --help`, or `tunesmith demo` for a complete run on the embedded SmolLM2.
"""

__version__ = "0.1.0"
