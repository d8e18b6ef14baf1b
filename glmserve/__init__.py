"""glmserve: ChatGLM-6B serving tools (reference model, tokenizer, converter, tiny model, CLI)."""

__version__ = "0.1.0"
