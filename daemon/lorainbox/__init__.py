"""LoRA Inbox: drop a folder, get a fine-tuned model in Ollama."""

__version__ = "0.1.0"
